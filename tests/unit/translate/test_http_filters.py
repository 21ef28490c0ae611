"""One ordered list of HTTP filters (translate/http_filters.py): what each place gets, in what
order, and that the sidecar's and the gateway's listeners carry exactly that chain."""

from __future__ import annotations

import dataclasses

import pytest
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from test_golden import CASES, WORKLOADS

from lattice.translate import gateway, http_filters, lds, paths, proxy_auth
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
        proxy_auth.BASIC_AUTH,  # the credential before anything else (proxy mode)
        proxy_auth.HEADER_MUTATION,  # and gone before anything else reads the request
        paths.FILTER_NAME,  # the path policy before anything reads the path
        f"{paths.FILTER_NAME}.utf8",
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


def test_path_policy_default_refuses_ambiguous_paths_and_istio_modes_do_not():
    """Lattice's default: two fault filters aborting with 400, first in every chain (after the
    outbound listener's credential); Istio's modes configure Envoy as Istio does and refuse nothing more."""
    from lattice.mesh.http_policy import HttpPolicy

    base = CASES["no-rules"]()
    proxy = WORKLOADS[0]
    for place in (INBOUND, OUTBOUND, GATEWAY):
        first = [f for f in chain(base, proxy, place) if not f.name.startswith("envoy.filters.http.")][:2]
        assert chain(base, proxy, place)[2 if place == OUTBOUND else 0].name == paths.FILTER_NAME
        assert [f.name for f in first] == [paths.FILTER_NAME, f"{paths.FILTER_NAME}.utf8"]
        for f in first:
            fault = fault_pb2.HTTPFault()
            f.typed_config.Unpack(fault)
            assert fault.abort.http_status == 400 and fault.abort.percentage.numerator == 100
    manager = _manager(lds.outbound(base, proxy))
    assert manager.normalize_path.value and manager.merge_slashes
    assert manager.path_with_escaped_slashes_action == manager.REJECT_REQUEST
    for mode, (normalize, merge, escaped) in {
        "NONE": (False, False, "KEEP_UNCHANGED"),
        "BASE": (True, False, "KEEP_UNCHANGED"),
        "MERGE_SLASHES": (True, True, "KEEP_UNCHANGED"),
        "DECODE_AND_MERGE_SLASHES": (True, True, "UNESCAPE_AND_FORWARD"),
    }.items():
        snapshot = dataclasses.replace(base, http_policy=HttpPolicy(path_normalization=mode))
        assert paths.FILTER_NAME not in _names(chain(snapshot, proxy, INBOUND)), mode
        manager = _manager(lds.inbound(snapshot, proxy))
        assert (manager.normalize_path.value, manager.merge_slashes) == (normalize, merge), mode
        assert manager.path_with_escaped_slashes_action == getattr(manager, escaped), mode


@pytest.mark.parametrize(
    "path, why",
    [
        ("/admin;x=1", "path parameters (;)"),
        ("/admin%3Bx=1", "path parameters (;)"),
        ("/%2561dmin", "an encoded percent sign (%25)"),
        ("/admin%00", "an encoded control character"),
        ("/admin%0d%0a", "an encoded control character"),
        ("/admin.", "a segment ending in a dot, space or tab"),
        ("/admin%2E", "a segment ending in a dot, space or tab"),
        ("/admin%20/x", "a segment ending in a dot, space or tab"),
        ("/admin%09", "an encoded control character"),
        ("/admin..?x", "a segment ending in a dot, space or tab"),
        ("/%C0%AFadmin", "percent-encoded bytes that are not UTF-8"),  # overlong '/'
        ("/%E0%80%AFadmin", "percent-encoded bytes that are not UTF-8"),
        ("/%C1%81dmin", "percent-encoded bytes that are not UTF-8"),  # overlong 'A'
        ("/%ED%A0%80", "percent-encoded bytes that are not UTF-8"),  # a surrogate
        ("/%F4%90%80%80", "percent-encoded bytes that are not UTF-8"),  # above U+10FFFF
        ("/%80admin", "percent-encoded bytes that are not UTF-8"),
        ("/admin%C3", "percent-encoded bytes that are not UTF-8"),
        ("/public/x", None),
        ("/caf%C3%A9/%E2%82%AC/%F0%9F%98%80", None),
        ("/.well-known/a.b", None),
        ("/a%20b/c", None),
        ("/public/x?q=a;b.&c=%25", None),  # the query is not the path
        ("/", None),
    ],
)
def test_what_the_default_path_policy_refuses(path, why):
    assert paths.refused(path) == why
