"""A workload whose agent port refuses connections is gone (server/placement.py): a restart of the
same workload may take its address and port at once. Real sockets on loopback."""

from __future__ import annotations

import asyncio
import socket

from lattice.server.placement import agent_listening


async def test_a_listening_agent_port_is_alive_and_a_closed_one_gone():
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await agent_listening("127.0.0.1", port)
    finally:
        server.close()
        await server.wait_closed()
    assert not await agent_listening("127.0.0.1", port)


async def test_an_agent_port_that_does_not_answer_in_time_counts_as_alive():
    # A listening socket whose backlog is full and never accepted: connections neither succeed nor
    # fail within the timeout, as with a loaded or distant host. Nothing live may be replaced.
    with socket.socket() as blocked:
        blocked.bind(("127.0.0.1", 0))
        blocked.listen(0)
        port = blocked.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            assert await agent_listening("127.0.0.1", port, timeout=0.3)
        finally:
            for filler in fillers:
                filler.close()
