"""The agent as the hot restart parent of the Envoy that replaces a dead one.

When an Envoy dies (SIGKILL, a crash), its listening sockets would die with it and callers would
see connection refused until the replacement listens again. So the agent keeps duplicates of
them: after every listener update Envoy accepted (LDS ACK, agent/relay.py), `ListenSockets`
takes each listening TCP socket out of Envoy's fd table with pidfd_getfd (Linux ≥ 5.6; needs
ptrace access to Envoy, which a parent running as the same user or as root has). While the agent
holds them, the kernel keeps completing handshakes into their backlog after Envoy has died:
callers wait a moment instead of being refused. The replacement Envoy (the next restart epoch)
then asks its hot restart parent for its listen sockets, and `HotParent` answers in the dead
Envoy's place, handing over the held sockets; the connections queued meanwhile are served.

Envoy's hot restart protocol as this module speaks it (Envoy 1.40: source/server/hot_restart.proto,
hot_restarting_base.cc, hot_restarting_child.cc, hot_restarting_parent.cc, hot_restart_impl.cc):
- Unix datagram sockets named `<--socket-path>_<role>_<base_id*10 + epoch % 3>` (with Envoy's
  integer types: `domain_socket_name`; up to 20 digits, so a name can outgrow the 108 bytes a
  socket's path may have: Envoy is given a name relative to its working directory, the run
  directory, and the agent reaches the same directory through a descriptor of it), role `parent`
  (bound by epoch N for its child) or `child` (bound by epoch N+1); an `_udp` pair next to them
  forwards QUIC packets, which we do not use.
- Each datagram: an 8-byte big-endian length, then a serialized `envoy.HotRestartMessage`.
  A `PassListenSocket` reply carries the socket as SCM_RIGHTS in the same datagram.
- The child asks, in order: `TestConnection` (with --skip-hot-restart-on-no-parent; no reply),
  `ShutdownAdmin` (reply: the first epoch's start time and the parent's reuse_port default),
  `Stats` (reply: the parent's stats; empty here), `PassListenSocket` per listener address and
  worker (`tcp://127.0.0.1:15001`, worker_index; reply: the fd, or -1 and the child binds its own),
  then `DrainListeners` and, --parent-shutdown-time-s later, `Terminate` (no replies). A request
  the parent does not know gets `didnt_recognize_your_last_message`.
- A child (epoch > 0) attaches to the shared memory `/dev/shm/envoy_shared_memory_<base_id*10>`
  that epoch 0 created: it checks its size and version, and refuses to start while the
  INITIALIZING flag is set (an Envoy that died while starting leaves it set: `SharedMemory` clears
  it). Its mutexes are robust (PTHREAD_MUTEX_ROBUST), so a dead holder does not block the next.

The protobuf messages are few and small: encoded and decoded here by hand (wire format).
"""

from __future__ import annotations

import array
import asyncio
import ctypes
import ipaddress
import logging
import mmap
import os
import platform
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger("lattice.envoy")

# --- envoy.HotRestartMessage, by hand ---------------------------------------------------------

# HotRestartMessage: request = 1, reply = 2, didnt_recognize_your_last_message = 3.
# Request's oneof, by field number:
REQUESTS = {
    1: "pass_listen_socket",
    2: "shutdown_admin",
    3: "stats",
    4: "drain_listeners",
    5: "terminate",
    6: "forwarded_udp_packet",
    7: "test_connection",
}
_LENGTH = struct.Struct(">Q")
MAX_DATAGRAM = 4096  # Envoy's MaxSendmsgSize: longer messages come in pieces, never ours


@dataclass(frozen=True)
class Request:
    """What a child asked: `kind` is one of REQUESTS' values, "reply" (a child never sends one)
    or "unknown"."""

    kind: str
    address: str = ""
    worker_index: int = 0
    network_namespace: str = ""


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32/int64: two's complement in 10 bytes
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return value, i


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a message: varints as int, length-delimited as bytes."""
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(data, i)
            yield number, value
        elif wire == 2:
            size, i = _read_varint(data, i)
            if i + size > len(data):
                raise ValueError("truncated field")
            yield number, data[i : i + size]
            i += size
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"wire type {wire} not supported")


def _message(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _scalar(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value) if value else b""


def frame(message: bytes) -> bytes:
    return _LENGTH.pack(len(message)) + message


def unframe(datagram: bytes) -> bytes:
    if len(datagram) < _LENGTH.size:
        raise ValueError("a hot restart datagram shorter than its length prefix")
    (length,) = _LENGTH.unpack_from(datagram)
    if length != len(datagram) - _LENGTH.size:
        raise ValueError(f"a hot restart message of {len(datagram) - _LENGTH.size} bytes says {length}")
    return datagram[_LENGTH.size :]


def decode(message: bytes) -> Request:
    """A child's HotRestartMessage."""
    kind = "unknown"
    for number, value in _fields(message):
        if number == 2:
            return Request("reply")
        if number != 1 or not isinstance(value, bytes):
            continue
        for which, body in _fields(value):
            kind = REQUESTS.get(which, "unknown")
            if kind == "pass_listen_socket" and isinstance(body, bytes):
                address, worker, namespace = "", 0, ""
                for n, v in _fields(body):
                    if n == 1 and isinstance(v, bytes):
                        address = v.decode()
                    elif n == 2 and isinstance(v, int):
                        worker = v
                    elif n == 3 and isinstance(v, bytes):
                        namespace = v.decode()
                return Request(kind, address, worker, namespace)
    return Request(kind)


def encode_request(request: Request) -> bytes:
    """A child's request (the tests speak as Envoy's child does)."""
    number = {kind: n for n, kind in REQUESTS.items()}[request.kind]
    body = b""
    if request.kind == "pass_listen_socket":
        body = _message(1, request.address.encode()) + _scalar(2, request.worker_index)
        body += _message(3, request.network_namespace.encode()) if request.network_namespace else b""
    return _message(1, _message(number, body))


def _reply(number: int, body: bytes) -> bytes:
    return _message(2, _message(number, body))


def pass_listen_socket_reply(fd: int) -> bytes:
    return _reply(1, _scalar(1, fd))  # int32: -1 is ten bytes of varint, as protobuf has it


def shutdown_admin_reply(original_start_time: int, reuse_port_default: bool) -> bytes:
    return _reply(2, _scalar(1, original_start_time) + _scalar(2, int(reuse_port_default)))


def stats_reply() -> bytes:
    return _reply(3, b"")


def didnt_recognize_reply() -> bytes:
    return _scalar(3, 1)


def decode_reply(message: bytes) -> dict:
    """A parent's reply as {kind: {field number: value}} (for tests)."""
    out: dict = {}
    for number, value in _fields(message):
        if number == 3:
            out["didnt_recognize_your_last_message"] = bool(value)
        elif number == 2 and isinstance(value, bytes):
            for which, body in _fields(value):
                kind = {1: "pass_listen_socket", 2: "shutdown_admin", 3: "stats"}.get(which, "unknown")
                out[kind] = dict(_fields(body)) if isinstance(body, bytes) else {}
    return out


# --- the listening sockets, taken from Envoy ------------------------------------------------

_PIDFD_GETFD = {"alpha": 548, "ia64": 1462}.get(platform.machine(), 438)  # one number elsewhere since 5.6
_libc = ctypes.CDLL(None, use_errno=True)


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """A duplicate of another process's fd (close-on-exec), as pidfd_getfd(2)."""
    fd = _libc.syscall(_PIDFD_GETFD, pidfd, target_fd, 0)
    if fd < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return fd


def _listening_inodes(pid: int) -> set[int]:
    """Inodes of the TCP sockets in LISTEN state in the network namespace of `pid`."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except FileNotFoundError:  # no IPv6
            continue
        for line in lines:
            columns = line.split()
            if len(columns) > 9 and columns[3] == "0A":  # TCP_LISTEN
                inodes.add(int(columns[9]))
    return inodes


def _socket_inodes(pid: int) -> dict[int, int]:
    """{fd: socket inode} of `pid`'s open sockets."""
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out[int(name)] = int(target[8:-1])
    return out


def _host_port(host: str, port: int) -> tuple[str, int]:
    return str(ipaddress.ip_address(host.split("%", 1)[0])), port


def parse_address(address: str) -> tuple[str, int] | None:
    """`tcp://127.0.0.1:15001` / `tcp://[::1]:15001` (Envoy's form) as (host, port); None for
    another scheme."""
    if not address.startswith("tcp://"):
        return None
    host, _, port = address[len("tcp://") :].rpartition(":")
    try:
        return _host_port(host.strip("[]"), int(port))
    except ValueError:
        return None


@dataclass
class HeldSocket:
    inode: int
    envoy_fd: int  # its number in Envoy: the order of the workers' sockets for one address
    sock: socket.socket
    address: tuple[str, int]


@dataclass
class ListenSockets:
    """Duplicates of the listening TCP sockets of the newest Envoy."""

    held: dict[int, HeldSocket] = field(default_factory=dict)  # by inode
    unavailable: str = ""  # why they cannot be taken here (said once)

    def refresh(self, pid: int) -> bool:
        """Hold what `pid` listens on now: take new sockets, let go of those it closed. False
        (and what is held stays) if the process cannot be read, e.g. it is gone."""
        try:
            listening = _listening_inodes(pid)
            fds = {fd: inode for fd, inode in _socket_inodes(pid).items() if inode in listening}
            pidfd = os.pidfd_open(pid)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return False
        try:
            taken = {}
            for fd, inode in fds.items():
                if inode in self.held or inode in taken:
                    continue
                held = self._take(pidfd, fd, inode)
                if held is not None:
                    taken[inode] = held
        finally:
            os.close(pidfd)
        for inode in [i for i in self.held if i not in fds.values()]:
            self.held.pop(inode).sock.close()
        self.held.update(taken)
        return True

    def _take(self, pidfd: int, fd: int, inode: int) -> HeldSocket | None:
        try:
            dup = pidfd_getfd(pidfd, fd)
        except OSError as e:
            if not self.unavailable:
                self.unavailable = f"pidfd_getfd: {e.strerror}"
                log.warning("cannot keep Envoy's listening sockets (%s): a dead Envoy's are lost", self.unavailable)
            return None
        sock = socket.socket(fileno=dup)
        try:
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6) or not listening:
                sock.close()
                return None
            name = sock.getsockname()
            return HeldSocket(inode, fd, sock, _host_port(name[0], name[1]))
        except OSError:
            sock.close()
            return None

    def for_address(self, address: tuple[str, int]) -> list[socket.socket]:
        """The sockets for one address, in Envoy's order (one per worker with reuse_port)."""
        return [h.sock for h in sorted(self.held.values(), key=lambda h: h.envoy_fd) if h.address == address]

    def reuse_port(self) -> bool:
        """Whether Envoy's listeners had SO_REUSEPORT (Envoy's default on Linux)."""
        for held in self.held.values():
            return bool(held.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
        return True

    def addresses(self) -> list[str]:
        return sorted({f"{host}:{port}" for host, port in (h.address for h in self.held.values())})

    def close(self) -> None:
        for held in self.held.values():
            held.sock.close()
        self.held.clear()


# --- the shared memory a child attaches to --------------------------------------------------


def scaled_base_id(base_id: int) -> int:
    """Envoy's `base_id * 10`, computed in uint32 (hot_restart_impl.cc: scaled_base_id_)."""
    return (base_id * 10) & 0xFFFFFFFF


def shared_memory_path(base_id: int) -> Path:
    return Path(f"/dev/shm/envoy_shared_memory_{scaled_base_id(base_id)}")


class SharedMemory:
    """The hot restart region of one sidecar's Envoys, mapped by the agent as long as it runs:
    so a stale-region sweep (`reclaim_shared_memory`) sees it in use even while no Envoy is
    alive, and a child refused because a dead Envoy left INITIALIZING set can be let in."""

    # Envoy's SharedMemory: uint64 size_, uint64 version_, two pthread_mutex_t, atomic uint64 flags_.
    FLAGS_INITIALIZING = 0x1

    def __init__(self, path: Path) -> None:
        self.path = path
        self._map: mmap.mmap | None = None

    def hold(self) -> bool:
        if self._map is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError:
            return False
        try:
            size = os.fstat(fd).st_size
            if size < 24:
                return False
            self._map = mmap.mmap(fd, size)
            return True
        except (OSError, ValueError):
            return False
        finally:
            os.close(fd)

    def clear_initializing(self) -> bool:
        """Clear the flag a dead Envoy left set while starting; True if it was set. Only while
        no Envoy of this sidecar runs."""
        if not self.hold() or self._map is None:
            return False
        size = struct.unpack_from("<Q", self._map, 0)[0]
        if size != len(self._map):
            return False  # not the layout we know: leave it to Envoy's own check
        offset = size - 8
        flags = struct.unpack_from("<Q", self._map, offset)[0]
        if not flags & self.FLAGS_INITIALIZING:
            return False
        struct.pack_into("<Q", self._map, offset, flags & ~self.FLAGS_INITIALIZING)
        return True

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


def reclaim_shared_memory(min_age: float = 60.0, shm: Path = Path("/dev/shm")) -> list[str]:
    """Remove hot restart regions no process maps any more (left by an Envoy whose agent was
    killed: Envoy never removes its own). A region in use is mapped by its Envoys and by their
    agent (`SharedMemory`); one younger than `min_age` may be an Envoy's being created. Only
    this user's. Returns the names removed."""
    now, uid = time.time(), os.geteuid()
    candidates = {}
    for path in shm.glob("envoy_shared_memory_*"):
        try:
            st = path.stat()
        except OSError:
            continue
        if st.st_uid == uid and now - st.st_ctime >= min_age:
            candidates[str(path)] = path
    if not candidates:
        return []
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:
            continue
        if "envoy_shared_memory_" not in text:
            continue
        for line in text.splitlines():
            columns = line.split(maxsplit=5)  # address perms offset dev inode path
            if len(columns) == 6:
                candidates.pop(columns[5].removesuffix(" (deleted)"), None)
    removed = []
    for path in candidates.values():
        try:
            path.unlink()
            removed.append(path.name)
        except OSError:
            pass
    return removed


# --- the parent -----------------------------------------------------------------------------


def domain_socket_name(socket_path: Path | str, role: str, base_id: int, epoch: int) -> str:
    # The scaled id reaches HotRestartingBase as an int and its names format a uint64: a scaled id
    # of 2^31 or more (most dynamic base ids) is named as that negative int sign-extended.
    scaled = scaled_base_id(base_id)
    scaled = scaled - (1 << 32) if scaled >= 1 << 31 else scaled
    name = f"{socket_path}_{role}_{(scaled + epoch % 3) % (1 << 64)}"
    return "\0" + name[1:] if name.startswith("@") else name  # Envoy's "@": the abstract namespace


@dataclass
class HotParent:
    """Envoy's hot restart parent for the child `epoch`, in the place of the dead epoch - 1."""

    socket_path: Path
    base_id: int
    epoch: int  # the child's
    sockets: ListenSockets
    original_start_time: int
    passed: list[str] = field(default_factory=list)  # addresses handed over, one per socket
    terminated: asyncio.Event = field(default_factory=asyncio.Event)
    contacted: bool = False  # the child asked something: it did not start without a parent
    terminated_callback: Callable[[], None] = lambda: None  # the child took over (Terminate)
    _sock: socket.socket | None = None
    _reuse_port: bool = True
    _directory: int | None = None  # a descriptor of the sockets' directory (not in the abstract namespace)

    def open(self) -> None:
        """Bind the parent's socket (before the child starts: its first message must find it)."""
        path = str(self.socket_path)
        if not path.startswith("@"):  # its directory through /proc/self/fd: short however deep it is
            self._directory = os.open(self.socket_path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            path = f"/proc/self/fd/{self._directory}/{self.socket_path.name}"
        name = domain_socket_name(path, "parent", self.base_id, self.epoch - 1)
        if not name.startswith("\0"):
            Path(name).unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(name)
            if not name.startswith("\0"):
                os.chmod(name, 0o600)
        except OSError:
            sock.close()
            self._close_directory()
            raise
        sock.setblocking(False)
        self._sock, self._child = sock, domain_socket_name(path, "child", self.base_id, self.epoch)
        self._reuse_port = self.sockets.reuse_port()
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    @property
    def serving(self) -> bool:
        return self._sock is not None

    def close(self) -> None:
        if self._sock is None:
            return
        asyncio.get_running_loop().remove_reader(self._sock.fileno())
        name = self._sock.getsockname()
        self._sock.close()
        self._sock = None
        if isinstance(name, str) and name and not name.startswith("\0"):
            Path(name).unlink(missing_ok=True)
        self._close_directory()

    def _close_directory(self) -> None:
        if self._directory is not None:
            os.close(self._directory)
            self._directory = None

    def _readable(self) -> None:
        while self._sock is not None:
            try:
                data, ancdata, _, _ = self._sock.recvmsg(MAX_DATAGRAM, socket.CMSG_SPACE(4 * 4))
            except BlockingIOError:
                return
            except OSError as e:
                log.warning("hot restart socket: %s", e)
                return
            for level, kind, fds in ancdata:  # a child sends none: never keep what came
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    for fd in array.array("i", fds[: len(fds) - len(fds) % 4]):
                        os.close(fd)
            try:
                request = decode(unframe(data))
            except ValueError as e:
                log.warning("hot restart: a message we cannot read from Envoy epoch %d: %s", self.epoch, e)
                continue
            self.handle(request)

    def handle(self, request: Request) -> None:
        kind = request.kind
        self.contacted = True
        if kind == "test_connection":
            return  # the child only checks that a parent is there
        if kind == "shutdown_admin":  # no admin here to shut: the dead Envoy's went with it
            self._send(shutdown_admin_reply(self.original_start_time, self._reuse_port))
        elif kind == "stats":
            self._send(stats_reply())  # the dead Envoy's stats went with it
        elif kind == "pass_listen_socket":
            self._pass(request)
        elif kind == "drain_listeners":
            log.info("envoy epoch %d serves on the %d listening sockets kept for it", self.epoch, len(self.passed))
        elif kind == "terminate":
            log.info("envoy epoch %d took over; the agent stops acting as its parent", self.epoch)
            self.close()
            self.terminated.set()
            self.terminated_callback()
        else:
            self._send(didnt_recognize_reply())

    def _pass(self, request: Request) -> None:
        address = parse_address(request.address)
        sockets = self.sockets.for_address(address) if address and not request.network_namespace else []
        if request.worker_index >= len(sockets):
            self._send(pass_listen_socket_reply(-1))
            return
        fd = sockets[request.worker_index].fileno()
        self._send(pass_listen_socket_reply(fd), fd)
        self.passed.append(request.address)

    def _send(self, message: bytes, fd: int | None = None) -> None:
        if self._sock is None:
            return
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))] if fd is not None else []
        try:
            self._sock.sendmsg([frame(message)], rights, 0, self._child)
        except OSError as e:  # the child is gone: its replacement gets a parent of its own
            log.warning("hot restart: cannot answer Envoy epoch %d: %s", self.epoch, e)
