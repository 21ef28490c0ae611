"""The agent's own HTTP/1.1 (agent/web.py, agent/web_client.py), over real loopback sockets: what a
client sends that breaks the grammar or a bound gets a 400 (or 413) and a closed connection; what
is well formed is answered, kept alive, streamed, compressed when asked; the client reads every
framing, reuses its connections and bounds what it reads."""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys

import pytest

from lattice.agent import web
from lattice.agent.web import Request, Response, Server, json_response, text_response
from lattice.agent.web_client import Client, ClientError


async def _hello(request: Request) -> Response:
    return json_response({"path": request.path, "query": request.query, "body": len(request.body)})


async def _ticks(request: Request) -> None:
    stream = await request.stream("application/x-ndjson")
    for n in range(3):
        await stream.write(json.dumps({"n": n}).encode() + b"\n")


def _guard(request: Request) -> Response | None:
    if request.path.startswith("/private") and request.headers.get("Authorization") != "Bearer k":
        return json_response({"error": "key"}, 401)
    return None


@pytest.fixture
async def server():
    routes = {
        "/hello": _hello,
        "/ticks": _ticks,
        "/private/x": _hello,
        "/metrics": lambda r: _metrics(r),
    }
    s = Server(routes, guard=_guard)
    await s.listen("127.0.0.1", 0)
    try:
        yield s
    finally:
        await s.close()


async def _metrics(request: Request) -> Response:
    return text_response("metric_total 1\n" * 200).compressed_for(request)


async def _raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes, read until the server closes: everything it answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "head, reason",
    [
        (b"GET /hello\r\nHost: x\r\n\r\n", b"malformed request line"),
        (b"GET  /hello HTTP/1.1\r\nHost: x\r\n\r\n", b"malformed request line"),
        (b"GET /hello HTTP/2.0\r\nHost: x\r\n\r\n", b"malformed request line"),
        (b"GET http://x/hello HTTP/1.1\r\nHost: x\r\n\r\n", b"must be a path"),
        (b"GET /hello HTTP/1.1\r\n\r\n", b"without Host"),
        (b"GET /hello HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n", b"folded"),
        (b"GET /hello HTTP/1.1\r\nHost : x\r\n\r\n", b"malformed header line"),
        (b"GET /hello HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", b"malformed header line"),
        (b"GET /hello HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", b"bare CR or LF"),
        (b"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na", b"more than one"),
        (b"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", b"malformed Content-Length"),
        (b"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", b"both"),
        (b"GET /hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", b"unsupported Transfer-Encoding"),
        (b"GET /hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", b"malformed chunk size"),
        (b"GET /hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", b"malformed chunk size"),
        (b"GET /hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", b"not followed by CRLF"),
        (b"GET /%ff HTTP/1.1\r\nHost: x\r\n\r\n", b"not UTF-8"),
        (b"GET /hello HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n", b"over 16384 bytes"),
        (b"GET /hello HTTP/1.1\r\nHost: x\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n", b"more than 100 header"),
    ],
)
async def test_a_malformed_or_oversized_request_is_a_400_naming_the_problem_and_the_connection_closes(
    server, head, reason
):
    answer = await _raw(server.port, head)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer[:200]
    assert b"Connection: close" in answer and reason in answer, answer


async def test_a_body_over_the_bound_is_413_by_its_length_or_by_its_chunks(server):
    too_long = web.MAX_BODY + 1
    answer = await _raw(server.port, b"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % too_long)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    chunk = b"a" * 4096
    chunks = b"".join(b"1000\r\n" + chunk + b"\r\n" for _ in range(too_long // 4096 + 1))
    answer = await _raw(server.port, b"GET /hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]


async def test_well_formed_requests_are_answered_on_one_kept_connection(server):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /hello?a=1&a=2&b=%20x HTTP/1.1\r\nHost: x\r\n\r\n")
        writer.write(b"GET /hel%6co HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        answers = (await asyncio.wait_for(reader.read(), 5)).split(b"HTTP/1.1 200 OK\r\n")
    finally:
        writer.close()
    bodies = [json.loads(a.split(b"\r\n\r\n", 1)[1]) for a in answers[1:]]
    assert bodies == [
        {"path": "/hello", "query": {"a": "1", "b": " x"}, "body": 0},
        {"path": "/hello", "query": {}, "body": 3},
        {"path": "/hello", "query": {}, "body": 0},
    ]


async def test_the_guard_answers_before_any_handler_and_unknown_paths_and_methods_are_refused(server):
    async with Client() as client:
        base = f"http://127.0.0.1:{server.port}"
        assert (await client.get(f"{base}/private/x")).status == 401
        # Percent-encoding reaches the same path, so it meets the same guard.
        assert (await client.get(f"{base}/%70rivate/x")).status == 401
        assert (await client.get(f"{base}/private/x", headers={"Authorization": "Bearer k"})).status == 200
        assert (await client.get(f"{base}/nowhere")).status == 404
        assert (await client.post(f"{base}/hello", json={})).status == 405


async def test_an_idle_or_trickling_connection_is_closed_by_the_server(server, monkeypatch):
    monkeypatch.setattr(web, "IDLE_TIMEOUT", 0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: aaa")  # never finished
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
    finally:
        writer.close()


async def test_a_stream_is_chunked_and_the_client_reads_it_whole(server):
    async with Client() as client:
        response = await client.get(f"http://127.0.0.1:{server.port}/ticks")
    assert response.status == 200 and response.headers["transfer-encoding"] == "chunked"
    assert [json.loads(line) for line in response.body.splitlines()] == [{"n": 0}, {"n": 1}, {"n": 2}]


async def test_metrics_are_gzipped_only_for_a_client_that_accepts_it(server):
    async with Client() as client:
        plain = await client.get(f"http://127.0.0.1:{server.port}/metrics")
        assert plain.status == 200 and plain.body == b"metric_total 1\n" * 200
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, body = answer.split(b"\r\n\r\n", 1)
    assert b"Content-Encoding: gzip" in head and gzip.decompress(body) == plain.body
    assert len(body) < len(plain.body) / 10


async def test_the_client_reuses_its_connection_and_sends_again_when_the_server_closed_it():
    accepted: list[asyncio.StreamWriter] = []

    class Counting(Server):
        async def _connection(self, reader, writer):
            accepted.append(writer)
            await super()._connection(reader, writer)

    server = Counting({"/hello": _hello})
    await server.listen("127.0.0.1", 0)
    try:
        async with Client() as client:
            url = f"http://127.0.0.1:{server.port}/hello"
            assert [(await client.get(url)).status for _ in range(3)] == [200, 200, 200]
            assert len(accepted) == 1
            accepted[0].transport.abort()  # the server drops the kept connection while it is idle
            assert (await client.get(url)).status == 200
            assert len(accepted) == 2
    finally:
        await server.close()


async def test_the_client_bounds_what_it_reads_and_how_long_it_waits():
    async def answer(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100)
        await writer.drain()

    async def silent(reader, writer):
        await asyncio.sleep(30)

    big = await asyncio.start_server(answer, "127.0.0.1", 0)
    quiet = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        async with Client(max_body=50) as client:
            with pytest.raises(ClientError, match="over the 50-byte bound"):
                await client.get(f"http://127.0.0.1:{big.sockets[0].getsockname()[1]}/")
            with pytest.raises(TimeoutError):
                await client.get(f"http://127.0.0.1:{quiet.sockets[0].getsockname()[1]}/", timeout=0.3)
        refused = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = refused.sockets[0].getsockname()[1]
        refused.close()
        await refused.wait_closed()
        with pytest.raises(ClientError):
            await Client().get(f"http://127.0.0.1:{port}/")
    finally:
        big.close()
        quiet.close()


async def test_the_client_reads_an_answer_framed_by_the_connections_end_and_refuses_a_broken_one():
    answers = iter(
        [
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
            b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nq\r\n",
        ]
    )

    async def answer(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(next(answers))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    try:
        async with Client() as client:
            assert (await client.get(url)).body == b"until the end"
            with pytest.raises(ClientError, match="malformed status line"):
                await client.get(url)
            with pytest.raises(ClientError, match="malformed chunk size"):
                await client.get(url)
    finally:
        server.close()


async def test_the_client_speaks_over_a_unix_socket(tmp_path):
    path = tmp_path / "admin.sock"

    async def answer(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        body = head.split(b"\r\n")[0]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    unix = await asyncio.start_unix_server(answer, str(path))
    try:
        response = await Client(unix=str(path), keep_alive=False).get("http://envoy/ready", params={"a": "b c"})
        assert response.body == b"GET /ready?a=b+c HTTP/1.1"
    finally:
        unix.close()


def test_the_agent_process_never_imports_aiohttp():
    """The web framework stays with the control plane: the agent's process (`python -m
    lattice.agent`, what `lattice run` becomes) has its own small HTTP (agent/web.py)."""
    probe = (
        "import sys, lattice.agent.launch, lattice.agent.sidecar; print(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    loaded = json.loads(
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
        .stdout.strip()
        .replace("'", '"')
    )
    assert "aiohttp" not in loaded and "multidict" not in loaded and "yarl" not in loaded, loaded
