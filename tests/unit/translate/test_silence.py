"""Bounds on silent connections (translate/silence.py): what each kind of listener gets, from the
mesh's handshake and idle timeouts."""

from __future__ import annotations

import dataclasses

from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from test_golden_plugins import CAPTURED, PEER_AUTH, REVIEWS, _snapshot

from lattice.mesh.http_policy import HttpPolicy
from lattice.mesh.model import Upstream
from lattice.translate import lds
from lattice.translate.silence import HTTP_INSPECTOR

POLICY = HttpPolicy(handshake_timeout=2.5, idle_timeout=600)


def _listeners(proxy, mode: str = "PERMISSIVE"):
    """`proxy`'s listeners with reviews' PeerAuthentication in `mode`, under POLICY."""
    snapshot = dataclasses.replace(_snapshot(PEER_AUTH[mode], ""), http_policy=POLICY)
    return {listener.name: listener for listener in lds.listeners(snapshot, proxy)}


def _seconds(d) -> float:
    return d.seconds + d.nanos / 1e9


def test_an_http_client_must_speak_first_and_a_quiet_connection_manager_closes():
    outbound = _listeners(REVIEWS)["outbound_http"]
    assert [f.name for f in outbound.listener_filters] == [HTTP_INSPECTOR]
    assert _seconds(outbound.listener_filters_timeout) == 2.5 and not outbound.continue_on_listener_filters_timeout
    manager = hcm.HttpConnectionManager()
    outbound.filter_chains[0].filters[-1].typed_config.Unpack(manager)
    assert _seconds(manager.common_http_protocol_options.idle_timeout) == 600


def test_tls_handshakes_and_the_tls_inspector_are_bounded_alike():
    strict = _listeners(REVIEWS, "STRICT")[lds.names.inbound_listener(9080)]
    [chain] = strict.filter_chains
    assert _seconds(chain.transport_socket_connect_timeout) == 2.5 and not strict.listener_filters
    permissive = _listeners(REVIEWS, "PERMISSIVE")[lds.names.inbound_listener(9080)]
    assert [f.name for f in permissive.listener_filters] == [lds.TLS_INSPECTOR]
    assert _seconds(permissive.listener_filters_timeout) == 2.5


def test_tcp_ports_wait_for_server_first_protocols_and_capture_keeps_its_detection():
    with_db = dataclasses.replace(REVIEWS, upstreams=(Upstream("mongodb", "default", 27017, 27017),))
    [db] = [listener for name, listener in _listeners(with_db).items() if "27017" in name]
    assert not db.listener_filters  # its clients may wait for the server to speak first (MySQL, SMTP)
    captured = _listeners(CAPTURED)["outbound_http"]
    assert captured.continue_on_listener_filters_timeout and _seconds(captured.listener_filters_timeout) == 1.0
    assert HTTP_INSPECTOR in [f.name for f in captured.listener_filters]  # capture's own, continued as TCP
