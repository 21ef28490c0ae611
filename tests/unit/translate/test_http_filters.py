"""One ordered list of HTTP filters (translate/http_filters.py): what each place gets, in what
order, and that the sidecar's and the gateway's listeners carry exactly that chain."""

from __future__ import annotations

from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from test_golden import CASES, WORKLOADS

from lattice.translate import gateway, http_filters, lds
from lattice.translate.http_filters import GATEWAY, INBOUND, OUTBOUND, PHASES, chain


def _names(filters) -> list[str]:
    return [f.name for f in filters]


def _manager(listener) -> hcm.HttpConnectionManager:
    manager = hcm.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return manager


def test_each_place_gets_its_phases_in_list_order_router_last():
    snapshot, proxy = CASES["no-rules"](), WORKLOADS[0]
    for place in (INBOUND, OUTBOUND, GATEWAY):
        names = _names(chain(snapshot, proxy, place))
        assert names[-1] == http_filters.ROUTER and names.count(http_filters.ROUTER) == 1
    assert _names(chain(snapshot, proxy, OUTBOUND)) == [
        http_filters.CORS,
        http_filters.FAULT,
        http_filters.DYNAMIC_FORWARD_PROXY,
        http_filters.ROUTER,
    ]
    assert http_filters.DYNAMIC_FORWARD_PROXY not in _names(
        chain(snapshot, proxy, GATEWAY)
    )  # no open proxy at the edge
    assert [p.name for p in PHASES].index("authentication") < [p.name for p in PHASES].index("authorization")


def test_sidecar_listeners_carry_the_chain():
    snapshot, proxy = CASES["no-rules"](), WORKLOADS[0]
    assert _names(_manager(lds.outbound(snapshot, proxy)).http_filters) == _names(chain(snapshot, proxy, OUTBOUND))
    assert _names(_manager(lds.inbound(snapshot, proxy)).http_filters) == _names(
        chain(snapshot, proxy, INBOUND, proxy.port)
    )


def test_gateway_managers_carry_the_chain():
    snapshot, proxy = CASES["no-rules"](), WORKLOADS[0]
    manager = gateway._http_manager(snapshot, proxy, "gateway_http_80", "http.80", 80)
    assert _names(manager.http_filters) == _names(chain(snapshot, proxy, GATEWAY, 80))
