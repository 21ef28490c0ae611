"""How long a connection may say nothing on a listener Lattice builds (slowloris, idle sockets).

Envoy's own bounds leave a gap: `request_headers_timeout` (10 s here) starts at the first byte of a
request, so a connection that sends nothing at all lived until the connection manager's idle
timeout (an hour). Every listener now bounds the silence before a connection's first bytes by the
mesh's handshake timeout (`lattice server --handshake-timeout`, 10 s by default):
- a TLS filter chain (inbound mTLS, a gateway's TLS servers) must finish its handshake by then
  (`transport_socket_connect_timeout`);
- a listener with listener filters (the TLS inspector of PERMISSIVE ports and SNI routing) closes
  a connection whose first bytes have not come by then (`listener_filters_timeout`, not continued);
- a plaintext HTTP listener (outbound, HTTP `--upstream` ports, plain gateway ports) gets the
  HTTP inspector for the same purpose: an HTTP client speaks first.
Once a connection has spoken, HTTP connection managers close it after the mesh's idle timeout
with no request open (`--idle-timeout`, one hour: Envoy's and Istio's default); an open stream
(gRPC streaming, a WebSocket) is a request, so it is never idle by that count, and Envoy's
5-minute stream idle timeout applies to it as before. TCP listeners are left alone: server-first
protocols (MySQL, SMTP) wait silently for the server, and tcp_proxy closes a connection with no
bytes either way after Envoy's default hour.
A captured workload's outbound listener keeps its own 1 s protocol detection that continues as
TCP (translate/capture.py): what it captures may be server-first.
"""

from __future__ import annotations

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2

from lattice.mesh import MeshSnapshot
from lattice.translate.protos import duration, pack

HTTP_INSPECTOR = "envoy.filters.listener.http_inspector"
HCM = "envoy.filters.network.http_connection_manager"


def bound(snapshot: MeshSnapshot, listener: listener_pb2.Listener) -> listener_pb2.Listener:
    """`listener` with the silence before a connection's first bytes bounded (see above)."""
    limit = duration(snapshot.http_policy.handshake_timeout)
    for chain in listener.filter_chains:
        if chain.HasField("transport_socket"):
            chain.transport_socket_connect_timeout.CopyFrom(limit)
    if listener.listener_filters:
        if not listener.continue_on_listener_filters_timeout:
            listener.listener_filters_timeout.CopyFrom(limit)
    elif listener.filter_chains and all(_plaintext_http(c) for c in listener.filter_chains):
        listener.listener_filters.add(name=HTTP_INSPECTOR, typed_config=pack(http_inspector_pb2.HttpInspector()))
        listener.listener_filters_timeout.CopyFrom(limit)
    return listener


def _plaintext_http(chain) -> bool:
    return not chain.HasField("transport_socket") and bool(chain.filters) and chain.filters[-1].name == HCM
