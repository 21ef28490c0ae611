"""The agent's HTTP/1.1 client (agent/web.py's wire format): the control plane's agent API over
mTLS (registration, heartbeats, certificates, spans, modules) and Envoy's admin on its unix socket.

`Client` keeps what its callers need of a session: `get/post/put/delete(url, json=, data=,
headers=, params=, ssl=, server_hostname=, timeout=)` used as `async with ... as response`, a
response with `status`, `headers`, `read()`, `text()`, `json()` and `raise_for_status()`. The
whole body is read inside the call, bounded by `max_body` (a larger one is an error, not a cut),
and the request as a whole by `timeout` seconds (TimeoutError). Connections are kept alive for
`KEEP_IDLE` seconds, at most `MAX_IDLE` of them and one per (address, TLS context, name); a
request on a kept connection that the server closed meanwhile is sent once more on a new one.
Failures to connect, TLS failures and broken answers are `ClientError`.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import ssl as ssllib
import time
import urllib.parse
from dataclasses import dataclass

from lattice.agent.web import BadMessage, body_framing, encode_head, parse_headers, read_body, read_head

KEEP_IDLE = 15.0  # seconds: under the control plane's idle timeout (20 s), so it rarely closes first
MAX_IDLE = 2  # each TLS connection holds asyncio's 256 KiB read buffer; the agent's calls are few
MAX_BODY = 16 << 20
READ_LIMIT = 256 * 1024  # one head or chunk-size line


class ClientError(Exception):
    """The request did not get an answer: no connection, TLS refused, a broken or oversized answer."""


class ClientResponseError(ClientError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}, {message}")
        self.status = status


@dataclass
class ClientResponse:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes
    url: str

    async def read(self) -> bytes:
        return self.body

    async def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    async def json(self, content_type: str | None = None):
        """The body as JSON (whatever its Content-Type); ValueError if it is not."""
        return jsonlib.loads(self.body)

    def raise_for_status(self) -> None:
        if self.status >= 400:
            raise ClientResponseError(self.status, f"{self.reason}, url={self.url}")

    async def __aenter__(self) -> ClientResponse:
        return self

    async def __aexit__(self, *exc) -> None:
        pass


class _Pending:
    """What `client.get(...)` returns: awaitable, or used with `async with`."""

    def __init__(self, request) -> None:
        self._request = request

    def __await__(self):
        return self._request.__await__()

    async def __aenter__(self) -> ClientResponse:
        return await self._request

    async def __aexit__(self, *exc) -> None:
        pass


@dataclass
class _Kept:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    since: float


class Client:
    def __init__(
        self, timeout: float | None = 5.0, unix: str | None = None, max_body: int = MAX_BODY, keep_alive: bool = True
    ) -> None:
        self.timeout = timeout
        self.unix = unix  # every request goes to this unix socket (the URL's host is only its Host)
        self.max_body = max_body
        self.keep_alive = keep_alive
        self._idle: dict[tuple, list[_Kept]] = {}
        self._default_tls: ssllib.SSLContext | None = None

    def get(self, url: str, **kw) -> _Pending:
        return _Pending(self.request("GET", url, **kw))

    def post(self, url: str, **kw) -> _Pending:
        return _Pending(self.request("POST", url, **kw))

    def put(self, url: str, **kw) -> _Pending:
        return _Pending(self.request("PUT", url, **kw))

    def delete(self, url: str, **kw) -> _Pending:
        return _Pending(self.request("DELETE", url, **kw))

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        for kept in self._idle.values():
            for k in kept:
                k.writer.close()
        self._idle.clear()

    async def request(
        self,
        method: str,
        url: str,
        *,
        json=None,
        data: bytes | None = None,
        headers: dict | None = None,
        params: dict | None = None,
        ssl: ssllib.SSLContext | bool | None = None,  # a context; else the system's default verification
        server_hostname: str | None = None,
        timeout: float | None = None,
        max_body: int | None = None,
    ) -> ClientResponse:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClientError(f"not an http(s) URL: {url[:100]!r}")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if params:
            target += ("&" if parts.query else "?") + urllib.parse.urlencode(params)
        body = jsonlib.dumps(json).encode() if json is not None else (data or b"")
        sent = {"Host": parts.netloc, "Accept-Encoding": "identity", **(headers or {})}
        if not self.keep_alive:
            sent["Connection"] = "close"
        if json is not None:
            sent.setdefault("Content-Type", "application/json")
        if body or method in ("POST", "PUT"):
            sent["Content-Length"] = str(len(body))
        head = encode_head(f"{method} {target} HTTP/1.1", sent)
        tls = self._tls(ssl) if parts.scheme == "https" else None
        where = (self.unix, parts.hostname, parts.port or (443 if tls else 80), id(tls), server_hostname)
        limit = self.max_body if max_body is None else max_body
        try:
            async with asyncio.timeout(self.timeout if timeout is None else timeout):
                return await self._exchange(where, tls, head + body, method, url, limit)
        except TimeoutError:  # an OSError too, but the caller's to tell apart
            raise
        except (OSError, ssllib.SSLError, asyncio.IncompleteReadError, BadMessage, UnicodeError) as e:
            raise ClientError(f"{url}: {_describe(e)}") from None

    def _tls(self, ssl: ssllib.SSLContext | bool | None) -> ssllib.SSLContext | None:
        if isinstance(ssl, ssllib.SSLContext):
            return ssl
        if self._default_tls is None:
            self._default_tls = ssllib.create_default_context()
        return self._default_tls

    async def _exchange(self, where: tuple, tls, message: bytes, method: str, url: str, limit: int) -> ClientResponse:
        kept = self._take(where)
        if kept is not None:
            try:
                return await self._over(where, kept.reader, kept.writer, message, method, url, limit)
            except (ConnectionError, asyncio.IncompleteReadError) as e:
                if isinstance(e, asyncio.IncompleteReadError) and e.partial:
                    raise
                kept.writer.close()  # closed by the server while idle: once more, on a new connection
        reader, writer = await self._connect(where, tls)
        return await self._over(where, reader, writer, message, method, url, limit)

    async def _connect(self, where: tuple, tls) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        unix, host, port, _, server_hostname = where
        if unix is not None:
            return await asyncio.open_unix_connection(unix, limit=READ_LIMIT)
        if tls is None:
            return await asyncio.open_connection(host, port, limit=READ_LIMIT)
        return await asyncio.open_connection(
            host, port, ssl=tls, server_hostname=server_hostname or host, limit=READ_LIMIT
        )

    async def _over(self, where, reader, writer, message: bytes, method: str, url: str, limit: int) -> ClientResponse:
        try:
            writer.write(message)
            await writer.drain()
            response, keep = await _read_response(reader, method, url, limit)
        except BaseException:
            writer.close()
            raise
        if keep and self.keep_alive:
            self._keep(where, _Kept(reader, writer, time.monotonic()))
        else:
            writer.close()
        return response

    def _take(self, where: tuple) -> _Kept | None:
        kept = self._idle.get(where, [])
        now = time.monotonic()
        while kept:
            k = kept.pop()
            if now - k.since < KEEP_IDLE and not k.writer.is_closing() and not k.reader.at_eof():
                return k
            k.writer.close()
        return None

    def _keep(self, where: tuple, kept: _Kept) -> None:
        for older in self._idle.pop(where, []):  # one kept per destination: the calls rarely overlap
            older.writer.close()
        self._idle[where] = [kept]
        everything = sorted((k.since, key) for key, ks in self._idle.items() for k in ks)
        for since, key in everything[: max(0, len(everything) - MAX_IDLE)]:  # the oldest go
            for k in [k for k in self._idle[key] if k.since == since]:
                self._idle[key].remove(k)
                k.writer.close()
        self._idle = {key: ks for key, ks in self._idle.items() if ks}


async def _read_response(
    reader: asyncio.StreamReader, method: str, url: str, limit: int
) -> tuple[ClientResponse, bool]:
    lines = await read_head(reader)
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or not code.isdigit() or len(code) != 3:
        raise BadMessage(f"malformed status line {lines[0][:60]!r}")
    status, headers = int(code), parse_headers(lines[1:])
    connection = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep = "close" not in connection if version == b"HTTP/1.1" else "keep-alive" in connection
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        body = b""
    else:
        framing, length = body_framing(headers)
        if framing == "none":  # to the connection's end
            body = await reader.read(limit + 1)
            while body and len(body) <= limit and not reader.at_eof():
                more = await reader.read(limit + 1 - len(body))
                if not more:
                    break
                body += more
            if len(body) > limit:
                raise BadMessage(f"answer over the {limit}-byte bound")
            keep = False
        else:
            body = await read_body(reader, framing, length, limit)
    if headers.get("content-encoding", "identity").lower() not in ("identity", ""):
        raise BadMessage(f"answer encoded as {headers['content-encoding'][:20]!r}, though identity was asked")
    return ClientResponse(status, reason.decode("latin-1"), headers, body, url), keep


def _describe(e: BaseException) -> str:
    if isinstance(e, asyncio.IncompleteReadError):
        return "the connection closed before the answer was complete"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__
