"""A raw TCP test server run under `lattice run`: on 127.0.0.1:$PORT, answers each line it reads
with the same line prefixed by who it is, `<service>-<version> <line>`, until the client closes."""

from __future__ import annotations

import asyncio
import os
import signal

SERVED_BY = f"{os.environ.get('LATTICE_SERVICE', 'tcp-echo')}-{os.environ.get('SERVICE_VERSION', 'v1')}"


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            writer.write(SERVED_BY.encode() + b" " + line)
            await writer.drain()
    except ConnectionError:
        pass  # the client went away mid-line: nothing to answer
    finally:
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(echo, "127.0.0.1", int(os.environ["PORT"]))
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stopping.set)
    async with server:
        await stopping.wait()


if __name__ == "__main__":
    asyncio.run(main())
