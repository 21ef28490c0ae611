"""The agent's stand-in hot restart parent (agent/hot_parent.py): its protobuf by hand checked
against the protobuf library, listening sockets kept from a real process that dies, the parent
answering as Envoy's child expects, and stale shared memory swept. A real Envoy speaking the
protocol: tests/integration/test_envoy_restart.py."""

from __future__ import annotations

import array
import asyncio
import mmap
import os
import socket
import struct
import subprocess
import sys

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from lattice.agent import hot_parent
from lattice.agent.hot_parent import (
    HotParent,
    ListenSockets,
    Request,
    SharedMemory,
    decode,
    decode_reply,
    domain_socket_name,
    encode_request,
    frame,
    parse_address,
    reclaim_shared_memory,
    unframe,
)


def _hot_restart_message():
    """envoy.HotRestartMessage as Envoy 1.40 declares it (source/server/hot_restart.proto; the
    same descriptor is in the envoy binary), the part the agent speaks."""
    f = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="test_hot_restart.proto", package="t", syntax="proto3")
    top = file.message_type.add(name="HotRestartMessage")
    request, reply = top.nested_type.add(name="Request"), top.nested_type.add(name="Reply")
    pls = request.nested_type.add(name="PassListenSocket")
    pls.field.add(name="address", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    pls.field.add(name="worker_index", number=2, type=f.TYPE_UINT32, label=f.LABEL_OPTIONAL)
    pls.field.add(name="network_namespace", number=3, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    request.oneof_decl.add(name="request")
    names = ["PassListenSocket", "ShutdownAdmin", "Stats", "DrainListeners", "Terminate", "ForwardedUdpPacket"]
    names.append("TestConnection")
    for number, name in enumerate(names, 1):
        if name != "PassListenSocket":
            request.nested_type.add(name=name)
        field = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
        request.field.add(
            name=field,
            number=number,
            type=f.TYPE_MESSAGE,
            type_name=f".t.HotRestartMessage.Request.{name}",
            label=f.LABEL_OPTIONAL,
            oneof_index=0,
        )
    reply_pls = reply.nested_type.add(name="PassListenSocket")
    reply_pls.field.add(name="fd", number=1, type=f.TYPE_INT32, label=f.LABEL_OPTIONAL)
    admin = reply.nested_type.add(name="ShutdownAdmin")
    admin.field.add(name="original_start_time_unix_seconds", number=1, type=f.TYPE_UINT64, label=f.LABEL_OPTIONAL)
    admin.field.add(name="enable_reuse_port_default", number=2, type=f.TYPE_BOOL, label=f.LABEL_OPTIONAL)
    stats = reply.nested_type.add(name="Stats")
    stats.field.add(name="memory_allocated", number=1, type=f.TYPE_UINT64, label=f.LABEL_OPTIONAL)
    reply.oneof_decl.add(name="reply")
    for number, (field, name) in enumerate(
        [("pass_listen_socket", "PassListenSocket"), ("shutdown_admin", "ShutdownAdmin"), ("stats", "Stats")], 1
    ):
        reply.field.add(
            name=field,
            number=number,
            type=f.TYPE_MESSAGE,
            type_name=f".t.HotRestartMessage.Reply.{name}",
            label=f.LABEL_OPTIONAL,
            oneof_index=0,
        )
    top.oneof_decl.add(name="requestreply")
    top.field.add(name="request", number=1, type=f.TYPE_MESSAGE, type_name=".t.HotRestartMessage.Request",
                  label=f.LABEL_OPTIONAL, oneof_index=0)  # fmt: skip
    top.field.add(name="reply", number=2, type=f.TYPE_MESSAGE, type_name=".t.HotRestartMessage.Reply",
                  label=f.LABEL_OPTIONAL, oneof_index=0)  # fmt: skip
    top.field.add(name="didnt_recognize_your_last_message", number=3, type=f.TYPE_BOOL, label=f.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.HotRestartMessage"))


Message = _hot_restart_message()


def test_requests_as_envoys_child_encodes_them_are_decoded():
    m = Message()
    m.request.pass_listen_socket.address = "tcp://[::1]:15006"
    m.request.pass_listen_socket.worker_index = 3
    assert decode(m.SerializeToString()) == Request("pass_listen_socket", "tcp://[::1]:15006", 3)
    for kind in ("shutdown_admin", "stats", "drain_listeners", "terminate", "test_connection"):
        m = Message()
        getattr(m.request, kind).SetInParent()
        assert decode(m.SerializeToString()) == Request(kind)
        assert Message.FromString(encode_request(Request(kind))) == m
    m = Message()
    m.reply.stats.SetInParent()
    assert decode(m.SerializeToString()).kind == "reply"


def test_replies_parse_as_envoys_child_parses_them():
    m = Message.FromString(hot_parent.pass_listen_socket_reply(-1))
    assert m.WhichOneof("requestreply") == "reply" and m.reply.pass_listen_socket.fd == -1
    assert Message.FromString(hot_parent.pass_listen_socket_reply(7)).reply.pass_listen_socket.fd == 7
    m = Message.FromString(hot_parent.shutdown_admin_reply(1765000000, True))
    assert m.reply.shutdown_admin.original_start_time_unix_seconds == 1765000000
    assert m.reply.shutdown_admin.enable_reuse_port_default
    assert Message.FromString(hot_parent.stats_reply()).reply.WhichOneof("reply") == "stats"
    assert Message.FromString(hot_parent.didnt_recognize_reply()).didnt_recognize_your_last_message


def test_framing_is_a_big_endian_length_then_the_message():
    assert frame(b"abc") == b"\0\0\0\0\0\0\0\3abc"
    assert unframe(frame(b"abc")) == b"abc"
    with pytest.raises(ValueError, match="says 9"):
        unframe(struct.pack(">Q", 9) + b"abc")
    with pytest.raises(ValueError, match="shorter"):
        unframe(b"\0\0")


def test_addresses_in_envoys_form():
    assert parse_address("tcp://127.0.10.3:15001") == ("127.0.10.3", 15001)
    assert parse_address("tcp://[::1]:9080") == ("::1", 9080)
    assert parse_address("udp://127.0.0.1:53") is None
    assert parse_address("tcp://nonsense") is None
    assert domain_socket_name("/run/x/hot-restart", "parent", 4, 5) == "/run/x/hot-restart_parent_42"
    assert domain_socket_name("@envoy", "child", 1, 0) == "\0envoy_child_10"
    # Envoy's own names for a base id whose scaled id passes 2^31 (seen from a real Envoy 1.40):
    # the int it becomes is negative, formatted as uint64.
    assert domain_socket_name("/r/h", "parent", 249412724, 3) == "/r/h_parent_18446744071908711560"
    assert domain_socket_name("/r/h", "child", 249412724, 1) == "/r/h_child_18446744071908711561"
    assert hot_parent.shared_memory_path(249412724).name == "envoy_shared_memory_2494127240"
    assert hot_parent.shared_memory_path(429496730).name == "envoy_shared_memory_4"  # uint32


LISTENER = """
import socket, sys
a, b = socket.socket(), socket.socket()
for s in (a, b):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen(64)
c = socket.socket(); c.bind(("127.0.0.1", 0))  # bound, not listening: not taken
print("up", flush=True)
sys.stdin.readline()  # told to: close one, as Envoy does a removed listener's
b.close()
print("closed", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def listener():
    """A process listening with two SO_REUSEPORT sockets on one port (as Envoy's two workers do)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-c", LISTENER, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline() == "up\n"
    try:
        yield process, port
    finally:
        process.kill()
        process.wait()


def test_sockets_kept_from_a_process_that_died_still_take_connections(listener):
    process, port = listener
    with socket.create_connection(("127.0.0.1", port)):
        pass  # listening now
    kept = ListenSockets()
    assert kept.refresh(process.pid)
    assert kept.addresses() == [f"127.0.0.1:{port}"]
    sockets = kept.for_address(("127.0.0.1", port))
    assert len(sockets) == 2 and kept.reuse_port()
    process.kill()
    process.wait()
    assert not kept.refresh(process.pid)  # gone: what is held stays
    try:
        for _ in range(8):  # the kernel completes handshakes into the kept sockets' backlog
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        kept.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_a_socket_the_process_closed_is_let_go(listener):
    process, port = listener
    kept = ListenSockets()
    assert kept.refresh(process.pid) and len(kept.held) == 2
    process.stdin.write("close\n")
    process.stdin.flush()
    assert process.stdout.readline() == "closed\n"
    assert kept.refresh(process.pid)
    try:
        assert len(kept.held) == 1
    finally:
        kept.close()


class _Child:
    """Envoy's child side of the protocol: binds its socket, asks the parent."""

    def __init__(self, path, base_id: int, epoch: int) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(domain_socket_name(path, "child", base_id, epoch))
        self.sock.settimeout(5)
        self.parent = domain_socket_name(path, "parent", base_id, epoch - 1)

    def send(self, request: Request) -> None:
        self.sock.sendto(frame(encode_request(request)), self.parent)

    async def ask(self, request: Request) -> tuple[dict, list[int]]:
        self.send(request)
        data, ancdata, _, _ = await asyncio.to_thread(self.sock.recvmsg, 4096, socket.CMSG_SPACE(4))
        fds = [fd for _, _, raw in ancdata for fd in array.array("i", raw)]
        return decode_reply(unframe(data)), fds


async def test_the_parent_answers_as_envoys_child_expects(tmp_path, listener):
    process, port = listener
    kept = ListenSockets()
    assert kept.refresh(process.pid)
    parent = HotParent(tmp_path / "hot-restart", 7, 4, kept, 1765000000)
    parent.open()
    child = _Child(tmp_path / "hot-restart", 7, 4)
    try:
        child.send(Request("test_connection"))  # no answer: the next is the answer to ShutdownAdmin
        reply, fds = await child.ask(Request("shutdown_admin"))
        assert reply == {"shutdown_admin": {1: 1765000000, 2: 1}} and fds == []
        assert await child.ask(Request("stats")) == ({"stats": {}}, [])
        taken = []
        for worker in (0, 1):
            reply, fds = await child.ask(Request("pass_listen_socket", f"tcp://127.0.0.1:{port}", worker))
            assert len(fds) == 1 and reply["pass_listen_socket"][1] > 0
            taken.append(socket.socket(fileno=fds[0]))
        assert [s.getsockname() for s in taken] == [("127.0.0.1", port)] * 2
        assert len({os.fstat(s.fileno()).st_ino for s in taken}) == 2  # each worker its own socket
        reply, fds = await child.ask(Request("pass_listen_socket", f"tcp://127.0.0.1:{port}", 2))
        assert reply == {"pass_listen_socket": {1: 2**64 - 1}} and fds == []  # -1: bind your own
        reply, fds = await child.ask(Request("pass_listen_socket", "udp://127.0.0.1:53", 0))
        assert reply == {"pass_listen_socket": {1: 2**64 - 1}} and fds == []
        reply, _ = await child.ask(Request("forwarded_udp_packet"))
        assert reply == {"didnt_recognize_your_last_message": True}
        child.send(Request("drain_listeners"))
        child.send(Request("terminate"))
        await asyncio.wait_for(parent.terminated.wait(), 5)
        assert not parent.serving and parent.passed == [f"tcp://127.0.0.1:{port}"] * 2
        for s in taken:
            s.close()
    finally:
        parent.close()
        child.sock.close()
        kept.close()


def _region(path, flags: int) -> None:
    path.write_bytes(struct.pack("<QQ", 104, 11) + bytes(80) + struct.pack("<Q", flags))


def test_initializing_left_by_a_dead_envoy_is_cleared(tmp_path):
    region = tmp_path / "envoy_shared_memory_10"
    _region(region, 1)
    memory = SharedMemory(region)
    assert memory.clear_initializing()
    assert struct.unpack_from("<Q", region.read_bytes(), 96)[0] == 0
    assert not memory.clear_initializing()
    memory.close()


def test_regions_no_process_maps_are_reclaimed(tmp_path):
    used, stale, young = (tmp_path / f"envoy_shared_memory_{n}" for n in (10, 20, 30))
    for region in (used, stale, young):
        _region(region, 0)
    with open(used, "r+b") as f:
        mapping = mmap.mmap(f.fileno(), 104)  # as a live Envoy (or its agent) maps it
    try:
        # The young one: created just now (a new Envoy may be about to map it).
        assert reclaim_shared_memory(min_age=60, shm=tmp_path) == []
        removed = reclaim_shared_memory(min_age=0, shm=tmp_path)
    finally:
        mapping.close()
    assert sorted(removed) == [stale.name, young.name] and used.exists()


def test_pidfd_getfd_says_why_it_fails():
    with pytest.raises(OSError, match="Bad file descriptor"):
        hot_parent.pidfd_getfd(-1, 0)
