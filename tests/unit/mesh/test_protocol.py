"""Protocol selection as Istio does it: explicit name, appProtocol, port-name prefix, default."""

from __future__ import annotations

import pytest

from lattice.mesh import protocol
from lattice.mesh.protocol import ProtocolError


@pytest.mark.parametrize(
    "name, expected",
    [
        ("HTTP", "http"),
        ("http2", "http2"),
        ("GRPC", "grpc"),
        ("GRPC-Web", "grpc-web"),
        ("TCP", "tcp"),
        ("TLS", "tls"),
        ("HTTPS", "https"),
        ("Mongo", "mongo"),
        ("MYSQL", "mysql"),
        ("redis", "redis"),
    ],
)
def test_explicit_names_any_case(name, expected):
    assert protocol.parse(name) == expected


def test_udp_is_refused_with_the_reason():
    with pytest.raises(ProtocolError, match=r"ports\[0\].protocol: UDP is not proxied"):
        protocol.parse("UDP", "ports[0].protocol")


def test_unknown_name_lists_the_choices():
    with pytest.raises(
        ProtocolError, match="--protocol: unknown protocol 'thrift'; use one of HTTP, HTTPS, HTTP2, GRPC"
    ):
        protocol.parse("thrift", "--protocol")


@pytest.mark.parametrize(
    "port_name, expected",
    [
        ("http-web", "http"),
        ("HTTP2-api", "http2"),
        ("grpc", "grpc"),
        ("grpc-web", "grpc-web"),
        ("grpc-web-ui", "grpc-web"),
        ("GRPC-WEB", "grpc-web"),
        ("tcp-db", "tcp"),
        ("tls-x", "tls"),
        ("https", "https"),
        ("mysql", "mysql"),
        ("redis-cache", "redis"),
        ("mongo-1", "mongo"),
    ],
)
def test_port_name_prefix(port_name, expected):
    assert protocol.from_port_name(port_name) == expected


@pytest.mark.parametrize("port_name", ["web", "httpx", "database", "", "grpcweb"])
def test_port_name_without_a_protocol_prefix_names_none(port_name):
    assert protocol.from_port_name(port_name) is None


def test_udp_port_name_is_refused():
    with pytest.raises(ProtocolError, match="--port-name: UDP is not proxied"):
        protocol.from_port_name("udp-dns", "--port-name")


@pytest.mark.parametrize(
    "app_protocol, expected",
    [
        ("kubernetes.io/h2c", "http2"),
        ("kubernetes.io/ws", "http"),
        ("kubernetes.io/wss", "https"),
        ("grpc", "grpc"),
        ("MySQL", "mysql"),
    ],
)
def test_app_protocol(app_protocol, expected):
    assert protocol.from_app_protocol(app_protocol) == expected


def test_app_protocol_unknown_is_an_error():
    with pytest.raises(ProtocolError, match="appProtocol: unknown protocol 'example.com/custom'"):
        protocol.from_app_protocol("example.com/custom")


def test_precedence_protocol_then_app_protocol_then_name():
    assert protocol.select(protocol="TCP", app_protocol="grpc", port_name="http-x") == "tcp"
    assert protocol.select(app_protocol="grpc", port_name="http-x") == "grpc"
    assert protocol.select(port_name="http2-x") == "http2"


def test_unnamed_ports_default_to_http_except_dns():
    assert protocol.select() == "http"
    assert protocol.select(port_name="web", port=8080) == "http"
    assert protocol.select(port_name="dns", port=53) == "tcp"
    assert protocol.select(port_name="web", default="tcp") == "tcp"


def test_families():
    assert protocol.is_http("grpc-web") and protocol.is_http("http") and not protocol.is_http("https")
    assert protocol.is_http2("grpc") and not protocol.is_http2("http")
