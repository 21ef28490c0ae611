"""The outbound listener's credential (translate/proxy_auth.py): asked on the shared outbound
listener of a sidecar in proxy mode, named by an environment variable (never the secret), its
refusal turned into the proxy's 407; nowhere else."""

from __future__ import annotations

import dataclasses

from envoy.extensions.filters.http.basic_auth.v3 import basic_auth_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from test_golden import CASES, WORKLOADS

from lattice.translate import http_filters, lds, proxy_auth
from lattice.translate.agent_names import PROXY_USERS_ENV
from lattice.translate.http_filters import GATEWAY, INBOUND, OUTBOUND, chain


def _manager(listener) -> hcm.HttpConnectionManager:
    manager = hcm.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return manager


def test_proxy_mode_outbound_asks_for_the_credential_from_the_agents_environment():
    snapshot, proxy = CASES["no-rules"](), WORKLOADS[0]
    manager = _manager(lds.outbound(snapshot, proxy))
    first = manager.http_filters[0]
    assert first.name == proxy_auth.BASIC_AUTH
    check = basic_auth_pb2.BasicAuth()
    first.typed_config.Unpack(check)
    assert check.authentication_header == "proxy-authorization"
    assert check.users.WhichOneof("specifier") == "environment_variable"
    assert check.users.environment_variable == PROXY_USERS_ENV  # the secret itself is the agent's alone
    [mapper] = manager.local_reply_config.mappers
    assert mapper.status_code.value == 407
    assert [(h.header.key, h.header.value) for h in mapper.headers_to_add] == [
        ("proxy-authenticate", 'Basic realm="lattice"')
    ]
    assert "_for_basic_auth" in mapper.filter.extension_filter.typed_config.value.decode()


def test_no_credential_where_the_client_cannot_send_one_or_comes_from_elsewhere():
    snapshot, proxy = CASES["no-rules"](), WORKLOADS[0]
    captured = dataclasses.replace(proxy, capture=True)
    gateway = dataclasses.replace(proxy, kind="gateway")
    for who in (captured, gateway):
        assert proxy_auth.BASIC_AUTH not in [f.name for f in chain(snapshot, who, OUTBOUND)]
        assert not _manager(lds.outbound(snapshot, who)).local_reply_config.mappers
    for place in (INBOUND, GATEWAY):
        assert proxy_auth.BASIC_AUTH not in [f.name for f in chain(snapshot, proxy, place)]
    # An --upstream port is dialed as the service itself: no proxy URL, no credential to send.
    assert proxy_auth.BASIC_AUTH not in [f.name for f in chain(snapshot, proxy, OUTBOUND, 9080)]
    assert http_filters.PHASES[0].name == "proxy-credential"
