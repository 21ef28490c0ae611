"""A gRPC test server run under `lattice run`: service `lattice.test.Echo` on 127.0.0.1:$PORT.

No .proto: messages are raw bytes (generic handlers, no serializers), so any gRPC client can call
it with `channel.unary_unary("/lattice.test.Echo/Unary")` and friends and read JSON back.

Methods (request messages are any bytes, echoed back as UTF-8 text):
- `Unary`         one request, one reply
- `ServerStream`  one request, `x-echo-count` replies (metadata, default 3), each with its `index`
- `ClientStream`  many requests, one reply whose `messages` lists them all
- `Bidi`          one reply per request, as each arrives

Every reply is a JSON object: `method`, `message` (or `messages`), `served_by`
("<service>-<version>", from LATTICE_SERVICE/BACKEND_SERVICE and SERVICE_VERSION), `version`,
`instance` (pid) and `metadata` (the request metadata the server saw, lower-cased keys, binary
`-bin` values skipped). Initial metadata carries `x-served-by` and `x-instance` too.

It also serves the Gateway API conformance echo's `gateway_api_conformance.echo_basic.grpcecho.GrpcEcho`
methods `Echo`, `EchoTwo`, `EchoThree` (unary, the same JSON replies).

On demand, per call (request metadata):
- `x-echo-status: N`  end the call with gRPC status code N (e.g. 14 UNAVAILABLE) and no reply
- `x-echo-delay: S`   sleep S seconds before each reply
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import grpc

SERVICE = os.environ.get("BACKEND_SERVICE") or os.environ.get("LATTICE_SERVICE", "echo")
VERSION = os.environ.get("SERVICE_VERSION", "v1")
SERVED_BY = f"{SERVICE}-{VERSION}"
# Set by SIGTERM/SIGINT: streams end (status OK) after the reply in hand, as a well-behaved server
# stops, so the client learns where the stream ended and starts a new one elsewhere.
STOPPING = asyncio.Event()


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """Request metadata, a key sent more than once as its values joined by ','."""
    out: dict[str, str] = {}
    for k, v in context.invocation_metadata() or ():
        if not k.endswith("-bin"):
            out[k.lower()] = f"{out[k.lower()]},{v}" if k.lower() in out else v
    return out


def _reply(method: str, metadata: dict[str, str], **fields) -> bytes:
    body = {
        "method": method,
        **fields,
        "served_by": SERVED_BY,
        "version": VERSION,
        "instance": os.getpid(),
        "metadata": metadata,
    }
    return json.dumps(body).encode()


async def _prologue(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """Identify ourselves first, then misbehave if the caller asked for it."""
    metadata = _metadata(context)
    await context.send_initial_metadata((("x-served-by", SERVED_BY), ("x-instance", str(os.getpid()))))
    if "x-echo-status" in metadata:
        code = next(c for c in grpc.StatusCode if c.value[0] == int(metadata["x-echo-status"]))
        await context.abort(code, f"x-echo-status asked for {code.name}")
    return metadata


async def _pause(metadata: dict[str, str]) -> None:
    delay = float(metadata.get("x-echo-delay") or 0)
    if delay:
        await asyncio.sleep(delay)


async def unary(request: bytes, context) -> bytes:
    metadata = await _prologue(context)
    await _pause(metadata)
    return _reply("Unary", metadata, message=request.decode(errors="replace"))


async def server_stream(request: bytes, context):
    metadata = await _prologue(context)
    for index in range(int(metadata.get("x-echo-count") or 3)):
        await _pause(metadata)
        yield _reply("ServerStream", metadata, message=request.decode(errors="replace"), index=index)
        if STOPPING.is_set():
            return


async def client_stream(requests, context) -> bytes:
    metadata = await _prologue(context)
    messages = [r.decode(errors="replace") async for r in requests]
    await _pause(metadata)
    return _reply("ClientStream", metadata, messages=messages)


async def bidi(requests, context):
    metadata = await _prologue(context)
    index = 0
    async for request in requests:
        await _pause(metadata)
        yield _reply("Bidi", metadata, message=request.decode(errors="replace"), index=index)
        index += 1
        if STOPPING.is_set():
            return


def handler() -> grpc.GenericRpcHandler:
    # No (de)serializers: gRPC hands us, and sends, the raw message bytes.
    return grpc.method_handlers_generic_handler(
        "lattice.test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        },
    )


# The Gateway API conformance echo server's service and methods (its replies are this app's JSON,
# not its EchoResponse: routing looks at the path, never the messages).
CONFORMANCE_SERVICE = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho"


def conformance_handler() -> grpc.GenericRpcHandler:
    methods = ("Echo", "EchoTwo", "EchoThree")
    return grpc.method_handlers_generic_handler(
        CONFORMANCE_SERVICE, {m: grpc.unary_unary_rpc_method_handler(_conformance(m)) for m in methods}
    )


def _conformance(method: str):
    async def answer(request: bytes, context) -> bytes:
        return _reply(method, await _prologue(context), message=request.decode(errors="replace"))

    return answer


async def serve(port: int) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler(), conformance_handler()))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, STOPPING.set)
    await STOPPING.wait()
    await server.stop(grace=2.0)


if __name__ == "__main__":
    asyncio.run(serve(int(os.environ["PORT"])))
    sys.exit(0)
