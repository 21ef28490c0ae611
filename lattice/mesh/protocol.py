"""Which protocol a port speaks, chosen the way Istio chooses it ("protocol selection").

Istio reads, in order: an explicit protocol (ServiceEntry `ports[].protocol`, `lattice run
--protocol`), a Kubernetes `appProtocol`, then the port name, `<protocol>[-<suffix>]`, all
case-insensitive. The result is one of the lower-case names in `PROTOCOLS`.

Where Istio finds nothing it sniffs the first bytes. Lattice does not: a workload's clients reach
it through the sidecar's HTTP proxy (`HTTP_PROXY`), which is HTTP by construction, so an
unnamed or unrecognised port is HTTP (`DEFAULT`) — except DNS's port 53, which Istio also treats
as TCP. Opaque TCP must be asked for (`tcp`, a `tcp-` port name, or `--upstream` for the client).
UDP is refused rather than ignored: Envoy's sidecar listeners here carry TCP only.
"""

from __future__ import annotations

from lattice.api.constants import PROTOCOLS

DEFAULT = "http"
HTTP = ("http", "http2", "grpc", "grpc-web")  # terminated by an HTTP connection manager
HTTP2 = ("http2", "grpc", "grpc-web")  # HTTP/2 to the app, always
OPAQUE = ("tcp", "tls", "https", "mongo", "mysql", "redis")  # forwarded byte for byte
# Kubernetes' own appProtocol names (Service spec), as Istio maps them.
_KUBERNETES_APP_PROTOCOLS = {"kubernetes.io/h2c": "http2", "kubernetes.io/ws": "http", "kubernetes.io/wss": "https"}
_WELL_KNOWN_PORTS = {53: "tcp"}


class ProtocolError(ValueError):
    """A protocol name Lattice cannot serve; the message says which and what would work."""


def parse(name: str, where: str = "protocol") -> str:
    """An explicit protocol name (any case) as Lattice's canonical name; `where` names the field."""
    value = name.strip().lower()
    if value == "udp":
        raise ProtocolError(
            f"{where}: UDP is not proxied by Lattice (sidecars carry TCP only); leave the port out of the mesh"
        )
    if value not in PROTOCOLS:
        raise ProtocolError(f"{where}: unknown protocol {name!r}; use one of {', '.join(p.upper() for p in PROTOCOLS)}")
    return value


def from_app_protocol(app_protocol: str, where: str = "appProtocol") -> str:
    """Kubernetes' `appProtocol`: its `kubernetes.io/...` names, or a protocol name as in `parse`."""
    known = _KUBERNETES_APP_PROTOCOLS.get(app_protocol.strip().lower())
    return known or parse(app_protocol, where)


def from_port_name(name: str, where: str = "port name") -> str | None:
    """The protocol a port name announces (`grpc-web-api`, `http2-x`, `TCP`), or None when its
    prefix names no protocol. Only UDP is an error: it names a protocol Lattice refuses."""
    lowered = name.strip().lower()
    if lowered.startswith("grpc-web"):  # the one protocol name that has a '-' in it
        return "grpc-web"
    prefix = lowered.split("-", 1)[0]
    if prefix == "udp":
        parse(prefix, where)
    return prefix if prefix in PROTOCOLS else None


def select(
    protocol: str | None = None,
    app_protocol: str | None = None,
    port_name: str | None = None,
    port: int | None = None,
    default: str = DEFAULT,
) -> str:
    """Istio's precedence: explicit protocol, then appProtocol, then the port name's prefix, then
    well-known ports, then `default`."""
    if protocol:
        return parse(protocol)
    if app_protocol:
        return from_app_protocol(app_protocol)
    named = from_port_name(port_name) if port_name else None
    if named:
        return named
    return _WELL_KNOWN_PORTS.get(port, default) if port is not None else default


def is_http(protocol: str) -> bool:
    return protocol in HTTP


def is_http2(protocol: str) -> bool:
    return protocol in HTTP2
