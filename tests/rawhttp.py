"""Raw HTTP clients for tests that must send what a well-behaved client library refuses to:
bytes exactly as written over HTTP/1.1, and header blocks left unvalidated over HTTP/2 (h2c with
prior knowledge, the pure-Python `h2` state machine driving a plain socket).

A sidecar's outbound listener asks for its credential (`Proxy-Authorization`) in proxy mode; a
test that sends raw requests there registers it once with `credential(address, port, value)`, and
both clients add it to what they send to that address, as the app's own clients do. Every other
target gets the bytes exactly as written.

Both answer what a client observes: the status, the headers and the body, or `status=None` when
the proxy closed the connection or reset the stream without an HTTP answer.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events


@dataclass
class Answer:
    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    reset: str = ""  # why there was no HTTP answer: "closed", "RST_STREAM <code>", "GOAWAY <code>"


# (address, port) of an outbound listener -> its Proxy-Authorization value (see the docstring).
_credentials: dict[tuple[str, int], str] = {}


def credential(address: str, port: int, value: str) -> None:
    _credentials[(address, port)] = value


def h1(address: str, port: int, request: bytes, timeout: float = 5.0) -> Answer:
    """Send `request` byte for byte on a fresh connection (with the listener's credential after
    the request line, if it asks for one); parse the one response that comes back."""
    if (address, port) in _credentials:
        line, sep, rest = request.partition(b"\r\n")
        request = line + sep + f"Proxy-Authorization: {_credentials[address, port]}\r\n".encode() + rest
    with socket.create_connection((address, port), timeout=timeout) as sock:
        sock.sendall(request)
        data = _read_response(sock)
    return _parse_h1(data) if data else Answer(None, reset="closed")


def _read_response(sock: socket.socket) -> bytes:
    """Read until the head and its Content-Length of body have arrived, or the peer closes."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return data
        if not chunk:
            return data
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep and len(body) >= _content_length(head):
            return data


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def _parse_h1(data: bytes) -> Answer:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(lines[0].split()[1]), headers, body[: _content_length(head)])


def h2c(address: str, port: int, headers: list[tuple[str, str]], timeout: float = 5.0) -> Answer:
    """One request over HTTP/2 cleartext with prior knowledge. `headers` (pseudo-headers first) go
    out exactly as given: h2's own validation and normalization are off."""
    config = h2.config.H2Configuration(
        client_side=True,
        header_encoding="utf-8",
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
    )
    conn = h2.connection.H2Connection(config=config)
    if (address, port) in _credentials:
        headers = [*headers, ("proxy-authorization", _credentials[address, port])]
    with socket.create_connection((address, port), timeout=timeout) as sock:
        conn.initiate_connection()
        conn.send_headers(1, headers, end_stream=True)
        sock.sendall(conn.data_to_send())
        return _h2_answer(sock, conn)


def _h2_answer(sock: socket.socket, conn: h2.connection.H2Connection) -> Answer:
    answer = Answer(None, reset="closed")
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return answer
        if not data:
            return answer
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                answer.headers = dict(event.headers)
                answer.status, answer.reset = int(answer.headers[":status"]), ""
            elif isinstance(event, h2.events.DataReceived):
                answer.body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                return answer
            elif isinstance(event, h2.events.StreamReset):
                return Answer(answer.status, answer.headers, answer.body, f"RST_STREAM {event.error_code!r}")
            elif isinstance(event, h2.events.ConnectionTerminated):
                return Answer(answer.status, answer.headers, answer.body, f"GOAWAY {event.error_code!r}")
        sock.sendall(conn.data_to_send())
