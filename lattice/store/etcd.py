"""EtcdStore: the Store's interface on an etcd v3 cluster, for several control-plane replicas.

Keys under one prefix (`/lattice/`, or the path of `etcd://host:port/<prefix>`):
    config/<kind>/<namespace>/<name>  a resource: {apiVersion, metadata, spec, created_at, updated_at};
                                      its etcd mod revision is its revision (resourceVersion)
    meta/revision                     written by every config change: its mod revision is the store's
    workloads/<id>                    a workload's record, on a lease of its own (TTL = heartbeat
                                      timeout) that whichever replica hears the agent keeps alive
    tokens/<id>                       a join token's record; uses taken by compare-and-swap
    grants/<proxy id>                 what a redeemed token gave a proxy; revoked with its token or
                                      identity in one transaction guarded by mod revisions
    replicas/<id>                     a replica's addresses and load, on that replica's lease
    elections/<duty>                  who runs a once-only duty, on the holder's lease
    ca/roots                          the mesh's trusted roots [{fingerprint, pem}] (public certificates):
                                      a replica signs only under one of them; `lattice ca trust` adds
                                      and removes them (ca/root, a lone fingerprint, is read as before)
    jwks/<sha256 of the URL>          the last fetch of a RequestAuthentication jwksUri: {uri, keys, error,
                                      fetched_at}, written by the replica running the refresh duty
    counts/<name>                     totals every replica adds to ({key: n}), by compare-and-swap

Reads of config, workloads, replicas, grants and JWKS come from a mirror of those keys kept by one watch stream (as a
Kubernetes informer does), so they never wait on the network and keep answering with the last
state seen while etcd is unreachable. Writes go to etcd in one transaction guarded by the mod
revisions they were computed from (retried while others race, refused with StoreConflict when
the caller named a stale resourceVersion), then wait until the mirror has seen them, so a
replica reads its own writes. Every config write also puts meta/revision, so an apply of many
resources moves the revision once (SQLite moves it once per resource: only "it grows" is shared).
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import logging
import math
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from dataclasses import dataclass

import grpc

from lattice.store.documents import Encoded, Item, Key, canonical, encode_item, expires_at, grant_expiry
from lattice.store.etcd_client import DEFAULT_TIMEOUT, EtcdClient, EtcdTls, parse_store_url, prefix_end
from lattice.store.etcdpb import etcd_pb2 as pb
from lattice.store.model import (
    ApplyResult,
    StoreConflict,
    StoredResource,
    StoredWorkload,
    StoreError,
    StoreUnavailable,
)
from lattice.store.watch import ChangeSignal, wait_until

log = logging.getLogger("lattice.store.etcd")
MAX_ATTEMPTS = 20  # optimistic retries of one write while other replicas race for the same keys
MIRROR_WAIT = 5.0  # how long a write waits for the watch to show it before returning anyway
MIN_LEASE_TTL = 2  # etcd refuses shorter leases (its minimum follows the election timeout)


@dataclass(frozen=True)
class _Workload:
    stored: StoredWorkload
    lease: int


class EtcdStore:
    shared = True  # other replicas write here too: watch workloads, campaign for duties

    def __init__(
        self,
        url: str,
        tls: EtcdTls | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        workload_ttl: float = 15.0,
    ) -> None:
        endpoints, prefix = parse_store_url(url)
        self.client = EtcdClient(endpoints, tls, timeout)
        self.prefix = prefix.encode()
        self.workload_ttl = max(MIN_LEASE_TTL, math.ceil(workload_ttl))
        self._cond = threading.Condition()
        self._signal = ChangeSignal()
        self._workload_signal = ChangeSignal()
        self._resources: dict[Key, StoredResource] = {}
        self._workloads: dict[str, _Workload] = {}
        self._replicas: dict[str, dict] = {}
        self._grants: dict[str, dict] = {}  # proxy id -> grant record (mirrored: read on every heartbeat)
        self._jwks: dict[str, dict] = {}  # jwksUri -> its last fetch (mirrored: read on every push)
        self._jwks_signal = ChangeSignal()
        self._ca: dict[str, bytes] = {}  # "roots" (and an older version's "root") -> value
        self.jwks_generation = 0
        self._revision = 0  # config revision: meta/revision's mod revision
        self._seen = 0  # etcd revision the mirror is complete up to
        self.workload_generation = 0
        self._error: str | None = None  # the last failure talking to etcd, None while healthy
        self._closed = threading.Event()
        self._keepalive_queue: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._load()  # fails loudly at start: a replica never starts on an empty view of the world
        self._threads = [
            threading.Thread(target=self._watch_forever, name="etcd-watch", daemon=True),
            threading.Thread(target=self._keepalive_forever, name="etcd-keepalive", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def name(self) -> str:
        return self.client.name + self.prefix.decode().rstrip("/")

    def close(self) -> None:
        self._closed.set()
        self._keepalive_queue.put(0)
        self.client.close()

    def __enter__(self) -> EtcdStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- health ------------------------------------------------------------------------------

    def health(self) -> dict:
        """This replica's view: can it write (a quorum answers), and each member's own answer."""
        members = self.client.member_status()
        try:
            self.client.call("Range", pb.RangeRequest(key=self._key("meta/revision")), timeout=1.0, what="health check")
            error = None
        except StoreUnavailable as e:
            error = str(e)
        return {
            "store": self.name,
            "backend": "etcd",
            "healthy": error is None,
            "error": error,
            "members": members,
            "mirror_revision": self._seen,
        }

    # -- resources ---------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        with self._cond:
            return self._revision

    def get(self, kind: str, namespace: str, name: str) -> StoredResource | None:
        with self._cond:
            return self._resources.get((kind, namespace, name))

    def list(self, kind: str | None = None, namespace: str | None = None) -> builtins.list[StoredResource]:
        with self._cond:
            found = [
                r
                for key, r in self._resources.items()
                if (kind is None or key[0] == kind) and (namespace is None or key[1] == namespace)
            ]
        return sorted(found, key=lambda r: (r.kind, r.namespace, r.name))

    def apply(self, items: builtins.list[Item], expected: dict[Key, int] | None = None) -> builtins.list[ApplyResult]:
        encoded = [encode_item(item) for item in items]
        with _nothing_written():
            return self._apply(encoded, expected)

    def _apply(self, encoded: builtins.list[Encoded], expected: dict[Key, int] | None) -> builtins.list[ApplyResult]:
        keys = list(dict.fromkeys((row.kind, row.namespace, row.name) for row in encoded))
        expected = expected or {}
        for _ in range(MAX_ATTEMPTS):
            current = self._read_config(keys)
            now = time.time()
            state = dict(current)
            planned: list[tuple[str, StoredResource]] = []
            for row in encoded:
                key = (row.kind, row.namespace, row.name)
                if key in expected and _revision_of(current.get(key)) != expected[key]:
                    raise _conflict(key, expected[key], current.get(key))
                old = state.get(key)
                if old is not None and (old.api_version, _text(old.metadata), _text(old.spec)) == row[3:6]:
                    planned.append(("unchanged", old))
                    continue
                new = StoredResource(
                    *key,
                    row.api_version,
                    json.loads(row.metadata),
                    json.loads(row.spec),
                    0,
                    old.created_at if old else now,
                    now,
                )
                state[key] = new
                planned.append(("configured" if old else "created", new))
            # Only what this apply replaced: never None (a key nothing was planned for keeps its old value).
            changed = {key: r for key in keys if (r := state[key]) is not None and r is not current.get(key)}
            if not changed:
                return [ApplyResult(r, action) for action, r in planned]
            ops = [
                pb.RequestOp(request_put=pb.PutRequest(key=self._config_key(k), value=_value(r)))
                for k, r in changed.items()
            ]
            revision = self._commit(current, changed, ops, "apply")
            if revision is None:
                continue  # another replica wrote one of these keys meanwhile: compute again
            done = {key: _at(r, revision) for key, r in changed.items()}
            return [
                ApplyResult(done.get((r.kind, r.namespace, r.name), r) if action != "unchanged" else r, action)
                for action, r in planned
            ]
        raise StoreUnavailable(f"{self.name}: apply gave up after {MAX_ATTEMPTS} attempts: the keys kept changing")

    def delete(self, keys: builtins.list[Key]) -> builtins.list[StoredResource]:
        with _nothing_written():
            return self._delete(list(dict.fromkeys((kind, namespace, name) for kind, namespace, name in keys)))

    def _delete(self, keys: builtins.list[Key]) -> builtins.list[StoredResource]:
        for _ in range(MAX_ATTEMPTS):
            current = self._read_config(keys)
            present = {k: r for k, r in current.items() if r is not None}
            if not present:
                return []
            ops = [pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=self._config_key(k))) for k in present]
            if self._commit(current, present, ops, "delete") is not None:
                return [present[k] for k in keys if k in present]
        raise StoreUnavailable(f"{self.name}: delete gave up after {MAX_ATTEMPTS} attempts: the keys kept changing")

    def _read_config(self, keys: builtins.list[Key]) -> dict[Key, StoredResource | None]:
        """The keys as etcd holds them now (a linearizable read, not the mirror)."""
        if not keys:
            return {}
        ops = [pb.RequestOp(request_range=pb.RangeRequest(key=self._config_key(k))) for k in keys]
        response = self.client.call("Txn", pb.TxnRequest(success=ops), what="read before write")
        out = {}
        for key, op in zip(keys, response.responses, strict=False):
            kvs = op.response_range.kvs
            out[key] = _resource(key, kvs[0]) if kvs else None
        return out

    def _commit(self, current: dict, changed: dict, ops: builtins.list, what: str) -> int | None:
        """Write `ops` if none of `changed`'s keys moved since `current` was read; the new revision or None."""
        compares = [
            pb.Compare(
                result=pb.Compare.EQUAL,
                target=pb.Compare.MOD,
                key=self._config_key(k),
                mod_revision=_revision_of(current.get(k)),
            )
            for k in changed
        ]
        ops = [*ops, pb.RequestOp(request_put=pb.PutRequest(key=self._key("meta/revision"), value=b""))]
        response = self._write(pb.TxnRequest(compare=compares, success=ops), what)
        if not response.succeeded:
            return None
        self._await_mirror(response.header.revision)
        return response.header.revision

    def _write(self, request: pb.TxnRequest, what: str) -> pb.TxnResponse:
        """One transaction; once it succeeded, this replica's mirror shows it (read your writes)."""
        with _nothing_written():
            response = self.client.call("Txn", request, what=what)
        if response.succeeded:
            self._await_mirror(response.header.revision)
        return response

    # -- workloads: each on its own lease, kept alive by the replica its agent talks to -------

    def put_workload(self, workload_id: str, record: dict) -> None:
        encoded = canonical(record, f"workload {workload_id!r} record")
        with self._cond:
            held = self._workloads.get(workload_id)
        lease = held.lease if held is not None and self._lease_alive(held.lease) else self._grant(self.workload_ttl)
        value = json.dumps({"record": json.loads(encoded), "updated_at": time.time()}).encode()
        response = self.client.call(
            "Put", pb.PutRequest(key=self._key(f"workloads/{workload_id}"), value=value, lease=lease), what="register"
        )
        self._await_mirror(response.header.revision)

    def touch_workload(self, workload_id: str) -> bool:
        """A heartbeat: keep the workload's lease alive (queued, never blocking); False if it is gone."""
        with self._cond:
            held = self._workloads.get(workload_id)
        if held is None:
            return False
        self._keepalive_queue.put(held.lease)
        return True

    def delete_workload(self, workload_id: str) -> bool:
        with self._cond:
            held = self._workloads.get(workload_id)
        response = self.client.call(
            "DeleteRange", pb.DeleteRangeRequest(key=self._key(f"workloads/{workload_id}")), what="deregister"
        )
        if held is not None:
            self._revoke(held.lease)
        self._await_mirror(response.header.revision)
        return response.deleted > 0

    def list_workloads(self) -> builtins.list[StoredWorkload]:
        with self._cond:
            return [self._workloads[k].stored for k in sorted(self._workloads)]

    async def wait_for_workload_change(self, after_generation: int, timeout: float | None = None) -> int:
        """Wait until workloads change (any replica, or a lease expiring); returns the new generation."""
        await wait_until(self._workload_signal, lambda: self.workload_generation > after_generation, timeout)
        return self.workload_generation

    # -- join tokens ---------------------------------------------------------------------------

    def add_token(self, token_id: str, record: dict) -> None:
        encoded = canonical(record, f"token {token_id!r} record")
        expires_at(token_id, record)
        key = self._key(f"tokens/{token_id}")
        absent = pb.Compare(result=pb.Compare.EQUAL, target=pb.Compare.VERSION, key=key, version=0)
        put = pb.RequestOp(request_put=pb.PutRequest(key=key, value=encoded.encode()))
        if not self._write(pb.TxnRequest(compare=[absent], success=[put]), "add token").succeeded:
            raise StoreError(f"{self.name}: token {token_id!r} already exists")

    def consume_token(self, token_id: str, check: Callable[[dict | None], None]) -> dict:
        """Use a token once, atomically across replicas: the decrement is a compare-and-swap on
        the token's mod revision, so of two replicas taking its last use, one sees it at zero."""
        key = self._key(f"tokens/{token_id}")
        for _ in range(MAX_ATTEMPTS):
            found = self.client.call("Range", pb.RangeRequest(key=key), what="read token").kvs
            record = json.loads(found[0].value) if found else None
            check(record)
            if record is None:
                raise StoreError(f"{self.name}: token {token_id!r} does not exist")
            if record.get("uses_left") is None:
                return record
            used = canonical({**record, "uses_left": record["uses_left"] - 1}, f"token {token_id!r} record")
            same = pb.Compare(
                result=pb.Compare.EQUAL, target=pb.Compare.MOD, key=key, mod_revision=found[0].mod_revision
            )
            put = pb.RequestOp(request_put=pb.PutRequest(key=key, value=used.encode()))
            if self._write(pb.TxnRequest(compare=[same], success=[put]), "use token").succeeded:
                return record
        raise StoreUnavailable(f"{self.name}: token {token_id!r} kept changing; try again")

    def list_tokens(self) -> builtins.list[dict]:
        return [json.loads(kv.value) for kv in self._range("tokens/", "list tokens")]

    def delete_token(self, token_id: str) -> bool:
        request = pb.DeleteRangeRequest(key=self._key(f"tokens/{token_id}"))
        return self.client.call("DeleteRange", request, what="delete token").deleted > 0

    def purge_tokens(self, before: float) -> int:
        purged = 0
        for kv in self._range("tokens/", "list tokens"):
            if json.loads(kv.value).get("expires_at", math.inf) < before:
                same = pb.Compare(
                    result=pb.Compare.EQUAL, target=pb.Compare.MOD, key=kv.key, mod_revision=kv.mod_revision
                )
                drop = pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=kv.key))
                purged += self._write(pb.TxnRequest(compare=[same], success=[drop]), "purge tokens").succeeded
        return purged

    # -- grants: what a redeemed token gave one proxy (see the sqlite backend) -----------------

    def put_grant(self, proxy_id: str, record: dict) -> None:
        encoded = canonical(record, f"grant {proxy_id!r}")
        request = pb.PutRequest(key=self._key(f"grants/{proxy_id}"), value=encoded.encode())
        self._write(pb.TxnRequest(success=[pb.RequestOp(request_put=request)]), "put grant")

    def get_grant(self, proxy_id: str) -> dict | None:
        """From the mirror: asked on every heartbeat, it must neither wait on etcd nor fail without quorum."""
        with self._cond:
            return self._grants.get(proxy_id)

    def record_serial(self, proxy_id: str, serial: str, not_after: float, keep: int = 8) -> None:
        key = self._key(f"grants/{proxy_id}")
        for _ in range(MAX_ATTEMPTS):
            found = self.client.call("Range", pb.RangeRequest(key=key), what="read grant").kvs
            if not found:
                return
            record = json.loads(found[0].value)
            serials = [*record.get("serials", []), {"serial": serial, "not_after": not_after}][-keep:]
            if self._swap([(found[0], {**record, "serials": serials})], [], "record serial"):
                return
        raise StoreUnavailable(f"{self.name}: grant {proxy_id!r} kept changing; try again")

    def revoke_token(self, token_id: str, now: float) -> tuple[bool, builtins.list[str]]:
        token_key = self._key(f"tokens/{token_id}")
        for _ in range(MAX_ATTEMPTS):
            token = self.client.call("Range", pb.RangeRequest(key=token_key), what="read token").kvs
            hits = self._live_grants(lambda g: g.get("token_id") == token_id, now)
            if self._swap(hits, list(token), "revoke token"):
                return bool(token) or bool(hits), [json.loads(kv.value)["proxy_id"] for kv, _ in hits]
        raise StoreUnavailable(f"{self.name}: token {token_id!r} kept changing; try again")

    def revoke_identity(self, namespace: str, service_account: str, now: float) -> tuple[int, builtins.list[str]]:
        def ours(record: dict) -> bool:
            return (record.get("namespace"), record.get("service_account")) == (namespace, service_account)

        for _ in range(MAX_ATTEMPTS):
            tokens = [kv for kv in self._range("tokens/", "list tokens") if ours(json.loads(kv.value))]
            hits = self._live_grants(ours, now)
            if self._swap(hits, tokens, "revoke identity"):
                return len(tokens), [json.loads(kv.value)["proxy_id"] for kv, _ in hits]
        raise StoreUnavailable(f"{self.name}: {namespace}/{service_account} kept changing; try again")

    def revoked_serials(self, now: float) -> builtins.list[dict]:
        out = []
        with self._cond:
            records = list(self._grants.values())
        for record in records:
            if record.get("revoked_at") is not None:
                out += [
                    s | {"revoked_at": record["revoked_at"]} for s in record.get("serials", []) if s["not_after"] >= now
                ]
        return sorted(out, key=lambda s: (s["revoked_at"], s["serial"]))

    def purge_grants(self, before: float) -> int:
        stale = [kv for kv in self._range("grants/", "list grants") if grant_expiry(json.loads(kv.value)) < before]
        return sum(self._swap([], [kv], "purge grants") for kv in stale)

    def _live_grants(self, match: Callable[[dict], bool], now: float) -> builtins.list[tuple]:
        hits = []
        for kv in self._range("grants/", "list grants"):
            record = json.loads(kv.value)
            if match(record) and record.get("revoked_at") is None:
                hits.append((kv, {**record, "revoked_at": now}))
        return hits

    def _swap(self, updates: builtins.list[tuple], deletes: builtins.list, what: str) -> bool:
        """Write `updates` ((kv, new record)) and delete `deletes` (kvs) in one transaction, if
        none of them changed since read."""
        compares, ops = [], []
        for kv, record in updates:
            compares.append(
                pb.Compare(result=pb.Compare.EQUAL, target=pb.Compare.MOD, key=kv.key, mod_revision=kv.mod_revision)
            )
            value = canonical(record, f"grant {kv.key.decode()!r}").encode()
            ops.append(pb.RequestOp(request_put=pb.PutRequest(key=kv.key, value=value)))
        for kv in deletes:
            compares.append(
                pb.Compare(result=pb.Compare.EQUAL, target=pb.Compare.MOD, key=kv.key, mod_revision=kv.mod_revision)
            )
            ops.append(pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=kv.key)))
        if not ops:
            return True
        return self._write(pb.TxnRequest(compare=compares, success=ops), what).succeeded

    # -- replicas, elections, the CA root ----------------------------------------------------

    def grant(self, ttl: float) -> int:
        """A lease of `ttl` seconds (at least etcd's minimum), for replica records and elections."""
        return self._grant(max(MIN_LEASE_TTL, math.ceil(ttl)))

    def keep_alive(self, lease: int) -> bool:
        """Renew a lease now (blocking); False if it already expired."""
        return self._lease_alive(lease)

    def revoke(self, lease: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._revoke(lease, timeout)

    def put_replica(self, replica_id: str, record: dict, lease: int) -> None:
        value = canonical(record, f"replica {replica_id!r} record").encode()
        self.client.call("Put", pb.PutRequest(key=self._key(f"replicas/{replica_id}"), value=value, lease=lease))

    def replicas(self) -> dict[str, dict]:
        with self._cond:
            return dict(self._replicas)

    def campaign(self, duty: str, holder: str, lease: int) -> str:
        """Try to become the holder of `duty` on `lease`; returns who holds it now."""
        key = self._key(f"elections/{duty}")
        free = pb.Compare(result=pb.Compare.EQUAL, target=pb.Compare.VERSION, key=key, version=0)
        take = pb.RequestOp(request_put=pb.PutRequest(key=key, value=holder.encode(), lease=lease))
        look = pb.RequestOp(request_range=pb.RangeRequest(key=key))
        response = self._write(pb.TxnRequest(compare=[free], success=[take], failure=[look]), f"campaign for {duty}")
        if response.succeeded:
            return holder
        kvs = response.responses[0].response_range.kvs
        return kvs[0].value.decode() if kvs else ""

    def resign(self, duty: str, holder: str) -> None:
        key = self._key(f"elections/{duty}")
        mine = pb.Compare(result=pb.Compare.EQUAL, target=pb.Compare.VALUE, key=key, value=holder.encode())
        drop = pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key))
        self._write(pb.TxnRequest(compare=[mine], success=[drop]), f"resign {duty}")

    def claim_ca_root(self, fingerprint: str, pem: str) -> builtins.list[dict]:
        """Record this root as the mesh's if none is; returns the mesh's trusted roots (compare)."""
        return self._change_ca_roots(lambda roots: roots or [{"fingerprint": fingerprint, "pem": pem}], "record")

    def add_ca_root(self, fingerprint: str, pem: str) -> builtins.list[dict]:
        """Trust one more root mesh-wide (a replica may then sign under it); the roots after."""

        def add(roots: builtins.list[dict]) -> builtins.list[dict]:
            return (
                roots
                if any(r["fingerprint"] == fingerprint for r in roots)
                else [*roots, {"fingerprint": fingerprint, "pem": pem}]
            )

        return self._change_ca_roots(add, "add a trusted root to")

    def remove_ca_root(self, fingerprint: str) -> builtins.list[dict]:
        """Stop trusting a root mesh-wide; the roots after. The last one is never removed."""

        def remove(roots: builtins.list[dict]) -> builtins.list[dict]:
            kept = [r for r in roots if r["fingerprint"] != fingerprint]
            if not kept:
                raise StoreError(f"{self.name}: {fingerprint[:16]} is the mesh's only trusted root; it stays")
            return kept

        return self._change_ca_roots(remove, "remove a trusted root from")

    def ca_roots(self) -> builtins.list[dict]:
        """The mesh's trusted roots as the watch last showed them."""
        with self._cond:
            return _ca_roots(self._ca)

    def _change_ca_roots(
        self, change: Callable[[builtins.list[dict]], builtins.list[dict]], what: str
    ) -> builtins.list[dict]:
        def read() -> tuple[builtins.list[dict], int]:
            ca = self._key("ca/")
            kvs = self.client.call("Range", pb.RangeRequest(key=ca, range_end=prefix_end(ca)), what="read CA roots").kvs
            found = {kv.key.decode().rsplit("/", 1)[1]: kv for kv in kvs}
            # Only ca/roots carries a revision: roots read from an older version's ca/root are written anew.
            return _ca_roots({n: kv.value for n, kv in found.items()}), found[
                "roots"
            ].mod_revision if "roots" in found else 0

        return self._swap_json(self._key("ca/roots"), read, change, f"{what} the mesh's CA roots", "CA roots")

    def _swap_json(
        self, key: bytes, read: Callable[[], tuple[Any, int]], change: Callable[[Any], Any], what: str, named: str
    ) -> Any:
        """Replace the JSON value at `key` by `change(value)`, by compare-and-swap on its revision.

        `read` gives the current value and the key's mod revision (0: not there); an unchanged value
        already stored is not written again. Retried while other replicas race for the same key.
        """
        for _ in range(MAX_ATTEMPTS):
            value, revision = read()
            wanted = change(value)
            if wanted == value and revision:
                return value
            same = pb.Compare(result=pb.Compare.EQUAL, target=pb.Compare.MOD, key=key, mod_revision=revision)
            put = pb.RequestOp(request_put=pb.PutRequest(key=key, value=canonical(wanted, named).encode()))
            if self._write(pb.TxnRequest(compare=[same], success=[put]), what).succeeded:
                return wanted
        raise StoreUnavailable(f"{self.name}: {what} gave up after {MAX_ATTEMPTS} attempts: the key kept changing")

    # -- fetched JWKS and counts -------------------------------------------------------------

    def put_jwks(self, uri: str, record: dict) -> None:
        value = canonical({**record, "uri": uri}, f"JWKS record for {uri!r}").encode()
        with _nothing_written():
            response = self.client.call("Put", pb.PutRequest(key=self._jwks_key(uri), value=value), what="put JWKS")
        self._await_mirror(response.header.revision)

    def drop_jwks(self, keep: builtins.list[str]) -> int:
        wanted = set(keep)
        with self._cond:
            gone = [uri for uri in self._jwks if uri not in wanted]
        for uri in gone:
            with _nothing_written():
                self.client.call("DeleteRange", pb.DeleteRangeRequest(key=self._jwks_key(uri)), what="drop JWKS")
        return len(gone)

    def jwks(self) -> dict[str, dict]:
        with self._cond:
            return dict(self._jwks)

    async def wait_for_jwks_change(self, after_generation: int, timeout: float | None = None) -> int:
        """Wait until another replica's fetch changes what the store holds; the new generation."""
        await wait_until(self._jwks_signal, lambda: self.jwks_generation > after_generation, timeout)
        return self.jwks_generation

    def add_counts(self, name: str, deltas: dict[str, int]) -> dict[str, int]:
        """Add `deltas` to the totals `counts/<name>` by compare-and-swap; the totals after."""
        key = self._key(f"counts/{name}")

        def read() -> tuple[dict[str, int], int]:
            kvs = self.client.call("Range", pb.RangeRequest(key=key), what=f"read {name} counts").kvs
            return (json.loads(kvs[0].value), kvs[0].mod_revision) if kvs else ({}, 0)

        def add(totals: dict[str, int]) -> dict[str, int]:
            return {**totals, **{k: int(totals.get(k, 0)) + int(v) for k, v in deltas.items() if v}}

        if not any(deltas.values()):
            return read()[0]
        return self._swap_json(key, read, add, f"add {name} counts", f"{name} counts")

    # -- watch ---------------------------------------------------------------------------------

    async def wait_for_change(self, after_revision: int, timeout: float | None = None) -> int:
        await wait_until(self._signal, lambda: self.revision > after_revision, timeout)
        return self.revision

    def _await_mirror(self, revision: int) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._seen >= revision, MIRROR_WAIT):
                log.warning("the watch on %s has not shown revision %d after %gs", self.name, revision, MIRROR_WAIT)

    def _load(self) -> None:
        """The mirrored keys at one revision; from there the watch continues."""
        ops = [
            pb.RequestOp(request_range=pb.RangeRequest(key=self._key(p), range_end=prefix_end(self._key(p))))
            for p in ("config/", "workloads/", "replicas/", "grants/", "jwks/", "ca/")
        ]
        ops.append(pb.RequestOp(request_range=pb.RangeRequest(key=self._key("meta/revision"))))
        response = self.client.call("Txn", pb.TxnRequest(success=ops), what="load")
        config, workloads, replicas, grants, jwks, ca, meta = (op.response_range.kvs for op in response.responses)
        resources = {}
        for kv in config:
            key = self._parse_config_key(kv.key)
            if key is not None:
                resources[key] = _resource(key, kv)
        with self._cond:
            workloads_before = self._workloads
            self._resources = resources
            self._workloads = {w.stored.id: w for w in (self._workload(kv) for kv in workloads) if w is not None}
            self._replicas = {kv.key.decode().rsplit("/", 1)[1]: json.loads(kv.value) for kv in replicas}
            self._grants = {kv.key.decode().rsplit("/", 1)[1]: json.loads(kv.value) for kv in grants}
            jwks_before, self._jwks = self._jwks, dict(filter(None, (_jwks_record(kv) for kv in jwks)))
            self._ca = {kv.key.decode().rsplit("/", 1)[1]: kv.value for kv in ca}
            jwks_changed = jwks_before != self._jwks
            if jwks_changed:
                self.jwks_generation += 1
            self._revision = meta[0].mod_revision if meta else 0
            self._seen = response.header.revision
            workloads_changed = workloads_before != self._workloads
            if workloads_changed:
                self.workload_generation += 1
            self._cond.notify_all()
        self._signal.notify()
        if workloads_changed:
            self._workload_signal.notify()
        if jwks_changed:
            self._jwks_signal.notify()

    def _watch_forever(self) -> None:
        backoff = 0.2
        member = 0
        while not self._closed.is_set():
            try:
                self._watch(member)
            except (grpc.RpcError, StoreError) as e:
                if self._closed.is_set():
                    return
                self._failed(f"watch: {_why(e)}")
            member += 1  # try the next member: this one may be the one that went away
            self._closed.wait(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 5.0)
            try:
                self._load()  # events may have been missed, or compacted away: start from a full read
                backoff = 0.2
            except StoreError as e:
                self._failed(f"reload: {e}")

    def _watch(self, member: int) -> None:
        requests: queue.SimpleQueue = queue.SimpleQueue()
        create = pb.WatchCreateRequest(
            key=self.prefix, range_end=prefix_end(self.prefix), start_revision=self._seen + 1, progress_notify=True
        )
        requests.put(pb.WatchRequest(create_request=create))
        stream = self.client.stream("Watch", iter(requests.get, None), member)
        closer = threading.Thread(target=self._cancel_on_close, args=(stream, requests), daemon=True)
        closer.start()
        for response in stream:
            if response.canceled:
                raise StoreError(f"watch canceled: {response.cancel_reason or 'compacted'}")
            self._apply_events(response)
            if self._error is not None:
                log.info("%s reachable again", self.name)
                self._error = None

    def _cancel_on_close(self, stream, requests: queue.SimpleQueue) -> None:
        while not self._closed.wait(0.5):
            if not stream.is_active():
                requests.put(None)
                return
        stream.cancel()
        requests.put(None)

    def _apply_events(self, response: pb.WatchResponse) -> None:
        config_changed = workloads_changed = jwks_changed = False
        with self._cond:
            for event in response.events:
                kind, changed = self._apply_event(event)
                config_changed |= kind == "config" and changed
                workloads_changed |= kind == "workloads" and changed
                jwks_changed |= kind == "jwks" and changed
            if workloads_changed:
                self.workload_generation += 1
            if jwks_changed:
                self.jwks_generation += 1
            self._seen = max(self._seen, _complete_up_to(response))
            self._cond.notify_all()
        if config_changed:
            self._signal.notify()
        if workloads_changed:
            self._workload_signal.notify()
        if jwks_changed:
            self._jwks_signal.notify()

    def _apply_event(self, event: pb.Event) -> tuple[str, bool]:
        """Mirror one event (holding the lock); which part it touched and whether anything changed."""
        name = event.kv.key[len(self.prefix) :].decode()
        part, _, rest = name.partition("/")
        deleted = event.type == pb.Event.DELETE
        if name == "meta/revision":
            self._revision = max(self._revision, event.kv.mod_revision)
            return "config", True
        if part == "config":
            key = self._parse_config_key(event.kv.key)
            if key is not None:
                if deleted:
                    self._resources.pop(key, None)
                else:
                    self._resources[key] = _resource(key, event.kv)
            return "config", False  # meta/revision in the same transaction wakes the waiters
        if part == "workloads":
            if deleted:
                return "workloads", self._workloads.pop(rest, None) is not None
            workload = self._workload(event.kv)
            if workload is not None:
                self._workloads[rest] = workload
            return "workloads", workload is not None
        if part == "replicas":
            if deleted:
                self._replicas.pop(rest, None)
            else:
                self._replicas[rest] = json.loads(event.kv.value)
        if part == "grants":
            if deleted:
                self._grants.pop(rest, None)
            else:
                self._grants[rest] = json.loads(event.kv.value)
        if part == "jwks":
            return part, self._mirror_jwks(event.kv, deleted)
        if part == "ca":
            if deleted:
                self._ca.pop(rest, None)
            else:
                self._ca[rest] = event.kv.value
        return part, False

    def _mirror_jwks(self, kv: pb.KeyValue, deleted: bool) -> bool:
        if deleted:
            gone = [uri for uri in self._jwks if self._jwks_key(uri) == kv.key]
            return any(self._jwks.pop(uri, None) is not None for uri in gone)
        parsed = _jwks_record(kv)
        if parsed is None or self._jwks.get(parsed[0]) == parsed[1]:
            return False
        self._jwks[parsed[0]] = parsed[1]
        return True

    # -- leases --------------------------------------------------------------------------------

    def _grant(self, ttl: int) -> int:
        response = self.client.call("LeaseGrant", pb.LeaseGrantRequest(TTL=ttl), what="grant a lease")
        if response.error:
            raise StoreUnavailable(f"{self.name}: grant a lease failed: {response.error}")
        return response.ID

    def _revoke(self, lease: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        try:
            self.client.call("LeaseRevoke", pb.LeaseRevokeRequest(ID=lease), timeout=timeout, what="revoke a lease")
        except StoreUnavailable as e:
            log.info("%s; the lease expires on its own", e)

    def _lease_alive(self, lease: int) -> bool:
        """One keep-alive round trip; False if the lease expired (its keys are gone)."""
        for member in range(len(self.client.endpoints)):
            try:
                stream = self.client.stream("LeaseKeepAlive", iter([pb.LeaseKeepAliveRequest(ID=lease)]), member)
                for response in stream:
                    return response.TTL > 0
                return False
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise self.client.unavailable("keep a lease alive", e) from None
        raise self.client.unavailable("keep a lease alive", None)

    def _keepalive_forever(self) -> None:
        """Heartbeats' lease renewals, batched: every lease asked for since the last round, once."""
        while not self._closed.is_set():
            leases = {self._keepalive_queue.get()}
            time.sleep(0.05)  # gather the heartbeats that arrive together
            while not self._keepalive_queue.empty():
                leases.add(self._keepalive_queue.get())
            leases.discard(0)
            if not leases or self._closed.is_set():
                continue
            try:
                self._keep_all(sorted(leases))
            except (grpc.RpcError, StoreError) as e:
                # The workloads stay listed: etcd does not expire leases while it has no leader.
                self._failed(f"lease keep-alive: {_why(e)}")

    def _keep_all(self, leases: builtins.list[int]) -> None:
        requests = iter([pb.LeaseKeepAliveRequest(ID=lease) for lease in leases])
        stream = self.client.stream("LeaseKeepAlive", requests, random.randrange(len(self.client.endpoints)))
        for _ in zip(leases, stream, strict=False):
            pass

    # -- plumbing ------------------------------------------------------------------------------

    def _failed(self, what: str) -> None:
        if self._error != what:
            log.warning("%s: %s; serving the last state seen", self.name, what)
        self._error = what

    def _key(self, name: str) -> bytes:
        return self.prefix + name.encode()

    def _config_key(self, key: Key) -> bytes:
        return self._key("config/" + "/".join(key))

    def _parse_config_key(self, raw: bytes) -> Key | None:
        parts = raw[len(self.prefix) :].decode().split("/")
        return (parts[1], parts[2], parts[3]) if len(parts) == 4 else None

    def _jwks_key(self, uri: str) -> bytes:
        return self._key("jwks/" + hashlib.sha256(uri.encode()).hexdigest())

    def _range(self, name: str, what: str) -> builtins.list[pb.KeyValue]:
        key = self._key(name)
        return list(self.client.call("Range", pb.RangeRequest(key=key, range_end=prefix_end(key)), what=what).kvs)

    def _workload(self, kv: pb.KeyValue) -> _Workload | None:
        try:
            value = json.loads(kv.value)
            stored = StoredWorkload(kv.key.decode().rsplit("/", 1)[1], value["record"], value["updated_at"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring an unreadable workload record at %s", kv.key.decode(errors="replace"))
            return None
        return _Workload(stored, kv.lease)


def _ca_roots(ca: dict[str, bytes]) -> builtins.list[dict]:
    """ca/roots, or what an older version recorded: ca/root, one fingerprint without its certificate."""
    if "roots" in ca:
        return json.loads(ca["roots"])
    if "root" in ca:
        return [{"fingerprint": ca["root"].decode(), "pem": ""}]
    return []


def _jwks_record(kv: pb.KeyValue) -> tuple[str, dict] | None:
    try:
        record = json.loads(kv.value)
        return str(record.pop("uri")), record
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("ignoring an unreadable JWKS record at %s", kv.key.decode(errors="replace"))
        return None


def _complete_up_to(response: pb.WatchResponse) -> int:
    """The revision up to which the mirror holds every event once this response is applied. A
    progress notification vouches for its header's revision; a response with events only for its
    last event (etcd stamps them with its current revision, which may run ahead of events still to
    come on a catching-up watch); the "created" answer for nothing (same reason)."""
    if response.events:
        return response.events[-1].kv.mod_revision
    if response.created or response.canceled:
        return 0
    return response.header.revision


@contextlib.contextmanager
def _nothing_written() -> Iterator[None]:
    """A transaction that failed to reach a quorum is not applied: say so, once."""
    try:
        yield
    except StoreUnavailable as e:
        if "nothing was written" in str(e):
            raise
        raise StoreUnavailable(f"{e}; nothing was written") from None


def _why(e: Exception) -> str:
    if isinstance(e, grpc.RpcError):
        return e.details() or e.code().name
    return str(e)


def _text(document: dict) -> str:
    return canonical(document, "stored document")


def _value(r: StoredResource) -> bytes:
    return json.dumps(
        {
            "apiVersion": r.api_version,
            "metadata": r.metadata,
            "spec": r.spec,
            "created_at": r.created_at,
            "updated_at": r.updated_at,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def _resource(key: Key, kv: pb.KeyValue) -> StoredResource:
    value = json.loads(kv.value)
    return StoredResource(
        *key,
        value["apiVersion"],
        value["metadata"],
        value["spec"],
        kv.mod_revision,
        value["created_at"],
        value["updated_at"],
    )


def _revision_of(r: StoredResource | None) -> int:
    return 0 if r is None else r.revision


def _at(r: StoredResource, revision: int) -> StoredResource:
    return StoredResource(
        r.kind, r.namespace, r.name, r.api_version, r.metadata, r.spec, revision, r.created_at, r.updated_at
    )


def _conflict(key: Key, expected: int, current: StoredResource | None) -> StoreConflict:
    kind, namespace, name = key
    now = "it no longer exists" if current is None else f"it is now at {current.revision}"
    return StoreConflict(
        f"{kind} {namespace}/{name}: resourceVersion {expected} is stale ({now}); get it again and reapply"
    )
