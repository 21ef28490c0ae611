"""The DNS proxy of a captured workload: mesh names answered here, the rest forwarded.

It listens on 127.0.0.1:53 inside the workload's network namespace (the namespace's resolv.conf
points there). A query for a name in the table (`reviews`, `reviews.default`, ...,
`reviews.default.svc.cluster.local`, ServiceEntry hosts), whatever the case, is answered with the
service's address: A with it (TTL 30 s), AAAA and others with no records (NOERROR), so a client
falls back to IPv4 at once. Any other query goes to the host's resolvers, as it came, and their
answer comes back as it is. The table comes with the sidecar's config (translate/capture.py), so
a service added later resolves at the next push, without restarting anything.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from pathlib import Path

log = logging.getLogger("lattice.dns")
TTL = 30
_A, _AAAA = 1, 28
FORWARD_TIMEOUT = 3.0


class DnsProxy(asyncio.DatagramProtocol):
    def __init__(self, upstreams: list[str] | None = None) -> None:
        self.names: dict[str, str] = {}
        self.upstreams = upstreams if upstreams is not None else host_resolvers()
        self.upstream_port = 53
        self.mark = 0  # SO_MARK of forwarded queries (VM mode sets it)
        self.transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task] = set()

    async def serve(self, sock: socket.socket) -> None:
        """Answer on `sock` (already bound, in the workload's namespace) until cancelled."""
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        try:
            await asyncio.Event().wait()
        finally:
            self.transport.close()
            for task in self._tasks:
                task.cancel()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def _send(self, data: bytes, addr) -> None:
        if self.transport is not None:  # set by serve() before any datagram can arrive
            self.transport.sendto(data, addr)

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            answer = self.answer(data)
        except (ValueError, IndexError, struct.error):
            return  # not a DNS query we can read: no answer, as a resolver drops garbage
        if answer is not None:
            self._send(answer, addr)
            return
        task = asyncio.get_running_loop().create_task(self._forward(data, addr), name="dns-forward")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def answer(self, query: bytes) -> bytes | None:
        """The reply to a query for a mesh name, or None to forward it."""
        qid, flags, qdcount = struct.unpack("!HHH", query[:6])
        if flags & 0x8000 or qdcount != 1:
            return None
        name, end = _read_name(query, 12)
        qtype, qclass = struct.unpack("!HH", query[end : end + 4])
        address = self.names.get(name.lower().rstrip("."))
        if address is None:
            return None
        question = query[12 : end + 4]
        records = b""
        if qtype == _A and qclass == 1:
            records = b"\xc0\x0c" + struct.pack("!HHIH", _A, 1, TTL, 4) + ipaddress.IPv4Address(address).packed
        rd = flags & 0x0100
        header = struct.pack("!HHHHHH", qid, 0x8000 | 0x0400 | rd | 0x0080, 1, 1 if records else 0, 0, 0)
        return header + question + records

    async def _forward(self, query: bytes, addr) -> None:
        loop = asyncio.get_running_loop()
        for upstream in self.upstreams:
            family = socket.AF_INET6 if ":" in upstream else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                if self.mark:  # VM mode: not captured back to this proxy (agent/capture.py)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
                try:
                    await loop.sock_connect(s, (upstream, self.upstream_port))
                    await loop.sock_sendall(s, query)
                    reply = await asyncio.wait_for(loop.sock_recv(s, 4096), FORWARD_TIMEOUT)
                except (OSError, TimeoutError) as e:
                    log.debug("resolver %s did not answer: %s", upstream, e)
                    continue
            self._send(reply, addr)
            return
        log.debug("no resolver answered a query (resolvers: %s)", ", ".join(self.upstreams) or "none")


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    labels: list[str] = []
    while True:
        length = data[offset]
        if length == 0:
            return ".".join(labels), offset + 1
        if length & 0xC0:
            raise ValueError("compressed name in a question")
        labels.append(data[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length


def host_resolvers(path: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The host's nameservers, as its resolv.conf lists them."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    return [line.split()[1] for line in lines if line.startswith("nameserver") and len(line.split()) > 1]


def udp_socket(address: str = "127.0.0.1", port: int = 53) -> socket.socket:
    """The proxy's socket; call it inside the workload's namespace (netns.Inside.run)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, port))
    sock.setblocking(False)
    return sock
