"""A small synchronous etcd v3 client: unary calls with failover between members, and streams.

Why our own: the maintained async client on PyPI (aetcd) is asyncio-only, while the Store is a
synchronous interface (reads come from an in-memory mirror, writes from worker threads), and the
sync ones (etcd3) stopped in 2020 with protobuf pins that no longer install. etcd's API is four
gRPC services; `etcdpb/etcd.proto` declares the part we use, wire-compatible with etcd's own
protos, and calls go by method path on plain grpc channels.

One channel per member. A call goes to the member that answered last; if that member is
unreachable it moves on to the next, within one overall deadline. A member that is up but
without quorum answers with an error (or not before the deadline), and the call fails: nothing
here retries a write whose outcome is unknown on another member.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import grpc

from lattice.store.etcdpb import etcd_pb2 as pb
from lattice.store.model import StoreError, StoreUnavailable

DEFAULT_TIMEOUT = 3.0
_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE}
_READS = {"Range", "Status"}  # asked again while the members elect a leader
_ELECTION = ("leader changed", "no leader")  # etcd's ErrLeaderChanged and ErrNoLeader
_ELECTION_PAUSE = 0.1
_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 5000),
    ("grpc.keepalive_timeout_ms", 3000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_receive_message_length", 64 << 20),
]
_METHODS = {
    "Range": ("KV", pb.RangeRequest, pb.RangeResponse),
    "Put": ("KV", pb.PutRequest, pb.PutResponse),
    "DeleteRange": ("KV", pb.DeleteRangeRequest, pb.DeleteRangeResponse),
    "Txn": ("KV", pb.TxnRequest, pb.TxnResponse),
    "LeaseGrant": ("Lease", pb.LeaseGrantRequest, pb.LeaseGrantResponse),
    "LeaseRevoke": ("Lease", pb.LeaseRevokeRequest, pb.LeaseRevokeResponse),
    "Status": ("Maintenance", pb.StatusRequest, pb.StatusResponse),
}


@dataclass(frozen=True)
class EtcdTls:
    """Files for TLS to etcd: the CA that signed the members' certificates, and an optional client pair."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.ca is not None or self.cert is not None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            if path is None:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as e:
                raise StoreError(f"cannot read the etcd TLS file {path}: {e.strerror}") from None

        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))


class _Electing(Exception):
    """A member answered that the cluster is between leaders."""

    def __init__(self, error: grpc.RpcError) -> None:
        self.error = error


def parse_store_url(url: str) -> tuple[list[str], str]:
    """`etcd://h1:2379,h2:2379[/name]` -> (["h1:2379", "h2:2379"], "/name/"): the members, and the key
    prefix (default /lattice/; one etcd cluster can hold several meshes). A bad URL is a StoreError."""
    parts = urlsplit(url)
    if parts.scheme != "etcd" or not parts.netloc:
        raise StoreError(f"--store {url!r}: expected etcd://host:port[,host:port...]")
    name = parts.path.strip("/")
    if parts.query or parts.fragment or not all(c.isalnum() or c in "-_./" for c in name):
        raise StoreError(f"--store {url!r}: expected etcd://host:port,host:port[/prefix] (letters, digits, - _ . /)")
    endpoints = []
    for member in parts.netloc.split(","):
        host, _, port = member.rpartition(":")
        if not host or not port.isdigit():
            raise StoreError(f"--store {url!r}: member {member!r} needs host:port (etcd's client port is 2379)")
        endpoints.append(member)
    return endpoints, f"/{name or 'lattice'}/"


class EtcdClient:
    def __init__(self, endpoints: list[str], tls: EtcdTls | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        if not endpoints:
            raise StoreError("no etcd members given")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self.tls = tls or EtcdTls()
        credentials = self.tls.credentials() if self.tls.enabled else None
        self._channels = [
            grpc.secure_channel(e, credentials, options=_CHANNEL_OPTIONS)
            if credentials
            else grpc.insecure_channel(e, options=_CHANNEL_OPTIONS)
            for e in self.endpoints
        ]
        self._current = 0
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return "etcd://" + ",".join(self.endpoints)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def call(self, method: str, request, timeout: float | None = None, what: str = ""):
        """One unary call, moving to the next member while members are unreachable.

        A read refused because the members are electing a leader (a leader went away a moment
        ago) is asked again until the deadline: it changes nothing, and the election takes about a
        second. A write is not: whether it was applied is unknown, and the caller decides.
        """
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                return self._call_once(method, request, deadline, what)
            except _Electing as e:
                if method not in _READS or time.monotonic() + _ELECTION_PAUSE >= deadline:
                    raise self.unavailable(what or method, e.error) from None
                time.sleep(_ELECTION_PAUSE)

    def _call_once(self, method: str, request, deadline: float, what: str):
        service, request_type, response_type = _METHODS[method]
        with self._lock:
            start = self._current
        last: grpc.RpcError | None = None
        for step in range(len(self._channels)):
            index = (start + step) % len(self._channels)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            stub = self._channels[index].unary_unary(
                f"/etcdserverpb.{service}/{method}",
                request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString,
            )
            try:
                response = stub(request, timeout=remaining, wait_for_ready=False)
            except grpc.RpcError as e:
                last = e
                if e.code() in _UNREACHABLE:
                    continue  # this member is down: the next one may be up
                if any(m in (e.details() or "") for m in _ELECTION):
                    raise _Electing(e) from None
                break  # up but refusing (deadline, no quorum): another member will not do better
            with self._lock:
                self._current = index
            return response
        raise self.unavailable(what or method, last)

    def unavailable(self, what: str, error: grpc.RpcError | None) -> StoreUnavailable:
        detail = (error.details() or error.code().name) if error is not None else "no member answered in time"
        if error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            detail = f"no answer within {self.timeout:g}s"
        if "deadline" in detail or "leader" in detail:
            detail += " (is a quorum of etcd members up?)"
        return StoreUnavailable(f"{self.name}: {what} failed: {detail}")

    def stream(self, method: str, requests: Iterator, member: int) -> Iterator:
        """A bidirectional stream (Watch or LeaseKeepAlive) to one member."""
        service, request_type, response_type = {
            "Watch": ("Watch", pb.WatchRequest, pb.WatchResponse),
            "LeaseKeepAlive": ("Lease", pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse),
        }[method]
        call = self._channels[member % len(self._channels)].stream_stream(
            f"/etcdserverpb.{service}/{method}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        return call(requests)

    def member_status(self, timeout: float = 1.0) -> list[dict]:
        """Each member's own view: reachable, version, leader, errors (asked of each, not of the cluster)."""
        out = []
        for endpoint, channel in zip(self.endpoints, self._channels, strict=True):
            stub = channel.unary_unary(
                "/etcdserverpb.Maintenance/Status",
                request_serializer=pb.StatusRequest.SerializeToString,
                response_deserializer=pb.StatusResponse.FromString,
            )
            try:
                s = stub(pb.StatusRequest(), timeout=timeout)
            except grpc.RpcError as e:
                out.append({"endpoint": endpoint, "reachable": False, "error": e.details() or e.code().name})
                continue
            out.append(
                {
                    "endpoint": endpoint,
                    "reachable": True,
                    "version": s.version,
                    "leader": s.leader != 0,
                    "is_leader": s.leader == s.header.member_id,
                    "errors": list(s.errors),
                }
            )
        return out


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range end for "every key starting with prefix"."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"
