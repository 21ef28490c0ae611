"""A small, strict HTTP/1.1 for the agent's process, on asyncio streams: the agent port's server
here, the client for the control plane and Envoy's admin in agent/web_client.py.

The agent runs beside every workload for its whole life; a general-purpose web framework cost it
some 12 MB of resident memory for a handful of GETs. What it speaks is HTTP/1.1 as RFC 9112 has it,
strictly: CRLF line ends, no folded headers, no space before a header's colon, one Content-Length
(digits only) or `Transfer-Encoding: chunked` (never both, nothing else), origin-form targets.
Anything else is a 400 with a short reason, and the connection is closed.

Bounds (what a peer can make the agent hold or wait for): a request head of at most `MAX_HEAD`
bytes and `MAX_HEADERS` fields, a body of at most `MAX_BODY`, a head that must be complete within
`IDLE_TIMEOUT` of the connection opening or of the last answer (slowloris), a body within
`BODY_TIMEOUT`, writes to a reader that stopped reading within `WRITE_TIMEOUT`, at most
`MAX_CONNECTIONS` connections at once. No threads: one task per connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import urllib.parse
import zlib
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping

log = logging.getLogger("lattice.agent.web")

MAX_HEAD = 16 * 1024  # request line and headers, CRLFs included
MAX_LINE = 8190  # one request line (as aiohttp's and Envoy's default bound)
MAX_HEADERS = 100
MAX_BODY = 64 * 1024  # the agent port serves GETs: a body is read (and bounded) only to stay in step
IDLE_TIMEOUT = 20.0  # seconds, as the control plane's ports (server/limits.py)
BODY_TIMEOUT = 20.0
WRITE_TIMEOUT = 20.0
MAX_CONNECTIONS = 128

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_FIELD_VALUE = re.compile(rb"^[\t\x20-\x7e\x80-\xff]*$")  # no control characters (CR, LF, NUL...)
_CHUNK_SIZE = re.compile(rb"^([0-9A-Fa-f]{1,8})(;[^\r\n]*)?$")
REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class BadMessage(ValueError):
    """A message that breaks the grammar or a bound: `status` is what a server answers."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


# --- the wire, both directions ------------------------------------------------------------------


class Headers(dict):
    """Header fields by name, whatever the case it is asked in (kept lower-cased)."""

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def get(self, name: str, default=None):
        return super().get(name.lower(), default)


def parse_headers(lines: list[bytes]) -> Headers:
    """Header fields; repeated fields joined with ", " (RFC 9110 5.3), except Content-Length,
    which may appear once."""
    if len(lines) > MAX_HEADERS:
        raise BadMessage(f"more than {MAX_HEADERS} header fields")
    headers = Headers()
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise BadMessage("folded header line (obsolete line folding is not accepted)")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            raise BadMessage(f"malformed header line {line[:40]!r}")
        value = value.strip(b" \t")
        if not _FIELD_VALUE.match(value):
            raise BadMessage(f"control character in header {name.decode()!r}")
        key = name.decode().lower()
        text = value.decode("latin-1")
        if key in headers:
            if key == "content-length":
                raise BadMessage("more than one Content-Length")
            text = f"{headers[key]}, {text}"
        headers[key] = text
    return headers


def body_framing(headers: dict[str, str]) -> tuple[str, int]:
    """("chunked", 0), ("length", n) or ("none", 0) for a request; a response with neither reads
    to the connection's end (the client decides that)."""
    te, cl = headers.get("transfer-encoding"), headers.get("content-length")
    if te is not None:
        if cl is not None:
            raise BadMessage("both Transfer-Encoding and Content-Length")
        if te.strip().lower() != "chunked":
            raise BadMessage(f"unsupported Transfer-Encoding {te[:40]!r} (only chunked)")
        return "chunked", 0
    if cl is not None:
        if not cl.isdigit() or len(cl) > 15:
            raise BadMessage(f"malformed Content-Length {cl[:20]!r}")
        return "length", int(cl)
    return "none", 0


async def read_head(reader: asyncio.StreamReader) -> list[bytes]:
    """The lines of one message head (start line first), without their CRLFs. EOF before any
    byte: IncompleteReadError with no partial data."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise BadMessage(f"message head over {MAX_HEAD} bytes") from None
    if len(head) > MAX_HEAD:
        raise BadMessage(f"message head over {MAX_HEAD} bytes")
    lines = head[:-4].split(b"\r\n")
    if any(b"\n" in line or b"\r" in line for line in lines):
        raise BadMessage("bare CR or LF in the message head")
    return lines


async def read_body(reader: asyncio.StreamReader, framing: str, length: int, limit: int) -> bytes:
    """A body framed by Content-Length or chunks, at most `limit` bytes (413 beyond)."""
    if framing == "length":
        if length > limit:
            raise BadMessage(f"body of {length} bytes is over the {limit}-byte bound", 413)
        return await reader.readexactly(length)
    if framing != "chunked":
        return b""
    parts, size = [], 0
    while True:
        line = await _line(reader)
        match = _CHUNK_SIZE.match(line)
        if match is None:
            raise BadMessage(f"malformed chunk size {line[:20]!r}")
        n = int(match.group(1), 16)
        if n == 0:
            break
        size += n
        if size > limit:
            raise BadMessage(f"body over the {limit}-byte bound", 413)
        parts.append(await reader.readexactly(n))
        if await reader.readexactly(2) != b"\r\n":
            raise BadMessage("chunk not followed by CRLF")
    while await _line(reader):  # trailer fields: bounded like the head, then dropped
        pass
    return b"".join(parts)


async def _line(reader: asyncio.StreamReader) -> bytes:
    try:
        line = await reader.readuntil(b"\r\n")
    except asyncio.LimitOverrunError:
        raise BadMessage("line over the reader's bound") from None
    if len(line) > MAX_LINE:
        raise BadMessage(f"line over {MAX_LINE} bytes")
    return line[:-2]


def encode_head(start: str, headers: dict[str, str]) -> bytes:
    lines = [start, *(f"{k}: {v}" for k, v in headers.items())]
    for line in lines:
        if "\r" in line or "\n" in line:
            raise ValueError(f"CR or LF in a header: {line[:60]!r}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# --- the server ---------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str  # percent-decoded, as routed and as checked for credentials
    query: dict[str, str]  # first value of each parameter
    headers: Headers
    body: bytes = b""
    _writer: asyncio.StreamWriter | None = field(default=None, repr=False)
    _streaming: StreamResponse | None = field(default=None, repr=False)

    async def stream(self, content_type: str, status: int = 200) -> StreamResponse:
        """Answer with a chunked body written piece by piece (the connection closes after it)."""
        assert self._writer is not None
        self._streaming = StreamResponse(self._writer)
        await self._streaming.start(status, {"Content-Type": content_type})
        return self._streaming


@dataclass
class Response:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)

    def compressed_for(self, request: Request) -> Response:
        """gzip when the client accepts it (as Prometheus always does), else as it is."""
        accepted = {e.split(";")[0].strip().lower() for e in request.headers.get("accept-encoding", "").split(",")}
        if "gzip" not in accepted or self.status != 200:
            return self
        packer = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: the gzip container
        return Response(
            packer.compress(self.body) + packer.flush(),
            self.status,
            self.headers | {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"},
        )


def json_response(value, status: int = 200) -> Response:
    return Response(json.dumps(value).encode(), status, {"Content-Type": "application/json; charset=utf-8"})


def text_response(text: str, status: int = 200, content_type: str = "text/plain; charset=utf-8") -> Response:
    return Response(text.encode(), status, {"Content-Type": content_type})


class StreamResponse:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def start(self, status: int, headers: dict[str, str]) -> None:
        start = f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"
        self._writer.write(encode_head(start, headers | {"Transfer-Encoding": "chunked", "Connection": "close"}))
        await self._drain()

    async def write(self, data: bytes) -> None:
        """One chunk; ConnectionResetError once the client has gone (or stopped reading)."""
        if self._writer.is_closing():
            raise ConnectionResetError("the client went away")
        if data:
            self._writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await self._drain()

    async def finish(self) -> None:
        if not self._writer.is_closing():
            self._writer.write(b"0\r\n\r\n")
            await self._drain()

    async def _drain(self) -> None:
        try:
            await asyncio.wait_for(self._writer.drain(), WRITE_TIMEOUT)
        except TimeoutError:
            raise ConnectionResetError("the client stopped reading") from None


Handler = Callable[[Request], Awaitable[Response | None]]


class Server:
    """Routes GET (and HEAD) by exact path; `guard` may answer a request before its handler
    (the agent port's credential check)."""

    def __init__(
        self, routes: Mapping[str, Handler], guard: Callable[[Request], Response | None] | None = None
    ) -> None:
        self.routes = routes
        self.guard = guard
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task] = set()

    async def listen(self, host: str | None = None, port: int = 0, sock: socket.socket | None = None) -> None:
        if sock is not None:
            self._server = await asyncio.start_server(self._connection, sock=sock, limit=MAX_HEAD)
        else:
            self._server = await asyncio.start_server(self._connection, host, port, limit=MAX_HEAD)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._connections.add(task)
        try:
            while await self._exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """One request and its answer; True to keep the connection for another."""
        try:
            async with asyncio.timeout(IDLE_TIMEOUT):
                lines = await read_head(reader)
            request, keep = parse_request(lines)
            async with asyncio.timeout(BODY_TIMEOUT):
                request.body = await read_body(reader, *body_framing(request.headers), MAX_BODY)
        except BadMessage as e:
            await _answer(writer, "GET", json_response({"error": str(e)}, e.status), keep=False)
            return False
        except TimeoutError:  # a head or body that never completes: closed, as an idle connection
            return False
        request._writer = writer
        response = await self._respond(request)
        if request._streaming is not None:
            await request._streaming.finish()
            return False
        await _answer(writer, request.method, response or json_response({"error": "no answer"}, 500), keep)
        return keep

    async def _respond(self, request: Request) -> Response | None:
        if request.method not in ("GET", "HEAD"):
            return json_response({"error": f"{request.method} is not allowed here"}, 405)
        if self.guard is not None and (refused := self.guard(request)) is not None:
            return refused
        handler = self.routes.get(request.path)
        if handler is None:
            return json_response({"error": f"no such path {request.path[:100]!r}"}, 404)
        try:
            return await handler(request)
        except ConnectionError:
            raise
        except Exception:
            log.exception("agent port: %s %s failed", request.method, request.path)
            return json_response({"error": "internal error"}, 500)


def parse_request(lines: list[bytes]) -> tuple[Request, bool]:
    """The request in a head's lines, and whether the connection may serve another after it."""
    parts = lines[0].split(b" ")
    if len(lines[0]) > MAX_LINE or len(parts) != 3:
        raise BadMessage(f"malformed request line {lines[0][:60]!r}")
    method, target, version = parts
    if not _TOKEN.match(method) or version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise BadMessage(f"malformed request line {lines[0][:60]!r}")
    if not target.startswith(b"/") or not _FIELD_VALUE.match(target):
        raise BadMessage(f"request target must be a path: {target[:60]!r}")
    headers = parse_headers(lines[1:])
    if version == b"HTTP/1.1" and "host" not in headers:
        raise BadMessage("HTTP/1.1 request without Host")
    raw_path, _, raw_query = target.decode("latin-1").partition("?")
    query: dict[str, str] = {}
    for name, value in urllib.parse.parse_qsl(raw_query, keep_blank_values=True):
        query.setdefault(name, value)
    connection = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep = "close" not in connection if version == b"HTTP/1.1" else "keep-alive" in connection
    try:
        path = urllib.parse.unquote(raw_path, errors="strict")
    except UnicodeDecodeError:
        raise BadMessage("request path is not UTF-8 once decoded") from None
    return Request(method.decode(), path, query, headers), keep


async def _answer(writer: asyncio.StreamWriter, method: str, response: Response, keep: bool) -> None:
    headers = {
        "Content-Length": str(len(response.body)),
        **response.headers,
        **({} if keep else {"Connection": "close"}),
    }
    head = encode_head(f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Unknown')}", headers)
    writer.write(head if method == "HEAD" else head + response.body)
    await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
