"""The captured workload's DNS proxy (agent/dns.py): mesh names answered, the rest forwarded, over a real UDP socket."""

from __future__ import annotations

import asyncio
import socket
import struct

from lattice.agent.dns import DnsProxy, udp_socket


def _query(name: str, qtype: int = 1, qid: int = 0x1234) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", qtype, 1)


def test_mesh_names_get_their_address_in_any_case_and_aaaa_gets_no_records() -> None:
    proxy = DnsProxy(upstreams=[])
    proxy.names = {"reviews.default.svc.cluster.local": "240.240.1.2"}
    reply = proxy.answer(_query("Reviews.Default.svc.cluster.local"))
    qid, flags, _, ancount = struct.unpack("!HHHH", reply[:8])
    assert (qid, flags & 0x8000, flags & 0xF, ancount) == (0x1234, 0x8000, 0, 1)
    assert socket.inet_ntoa(reply[-4:]) == "240.240.1.2"
    assert struct.unpack("!HHHH", proxy.answer(_query("reviews.default.svc.cluster.local", qtype=28))[:8])[3] == 0
    assert proxy.answer(_query("example.com")) is None  # not ours: forwarded


def test_other_names_are_forwarded_to_the_hosts_resolver_and_its_answer_returned() -> None:
    async def scenario() -> bytes:
        loop = asyncio.get_running_loop()
        resolver = udp_socket("127.0.0.1", 0)  # a stand-in resolver answering every query with one fixed reply

        class Resolver(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                self.transport.sendto(data[:2] + b"forwarded", addr)

        await loop.create_datagram_endpoint(Resolver, sock=resolver)
        proxy = DnsProxy(upstreams=["127.0.0.1"])
        sock = udp_socket("127.0.0.1", 0)
        server = loop.create_task(proxy.serve(sock))
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.setblocking(False)
        try:
            proxy.upstream_port = resolver.getsockname()[1]
            await loop.sock_connect(client, sock.getsockname())
            await loop.sock_sendall(client, _query("example.com"))
            return await asyncio.wait_for(loop.sock_recv(client, 512), 5)
        finally:
            server.cancel()
            client.close()

    reply = asyncio.run(scenario())
    assert reply[2:] == b"forwarded"
