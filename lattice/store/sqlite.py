"""The Store: Lattice config and workload registry in one SQLite file (WAL)."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import os
import pathlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator

from lattice.store.documents import Encoded as _Encoded
from lattice.store.documents import Item, Key
from lattice.store.documents import canonical as _canonical
from lattice.store.documents import encode_item as _encode_item
from lattice.store.documents import expires_at as _expires_at
from lattice.store.documents import grant_expiry as _grant_expiry
from lattice.store.model import (
    ApplyResult,
    StoreConflict,
    StoredResource,
    StoredWorkload,
    StoreError,
    StoreUnavailable,
)
from lattice.store.watch import ChangeSignal, wait_set

SCHEMA_VERSION = 1
# How often a waiter checks for commits by other processes; they cannot signal us directly.
POLL_INTERVAL = 0.2
# How long a statement waits for a lock another process holds (an sqlite3 shell, a backup tool).
# The server runs the store on its event loop, beside xDS: a longer wait would stall every stream;
# past it the write is refused (StoreUnavailable: 503, agents retry) and nothing is written.
BUSY_TIMEOUT_MS = 250
OPEN_BUSY_TIMEOUT_MS = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    api_version TEXT NOT NULL, metadata TEXT NOT NULL, spec TEXT NOT NULL,
    revision INTEGER NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (kind, namespace, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS workloads (
    id TEXT PRIMARY KEY, record TEXT NOT NULL, updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, record TEXT NOT NULL, expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS grants (
    proxy_id TEXT PRIMARY KEY, record TEXT NOT NULL, expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jwks (uri TEXT PRIMARY KEY, record TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counts (
    name TEXT NOT NULL, key TEXT NOT NULL, value INTEGER NOT NULL, PRIMARY KEY (name, key)
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', {version}), ('revision', 0);
"""
_COLUMNS = "kind, namespace, name, api_version, metadata, spec, revision, created_at, updated_at"
_BY_KEY = "kind = ? AND namespace = ? AND name = ?"


class Store:
    """Durable resources with a global revision, plus the workload registry.

    Every write runs in one BEGIN IMMEDIATE transaction, so the read-modify-write of the
    revision is safe against other processes sharing the file.
    """

    # One process owns the file: no other replica writes workloads, and elections are won at once.
    shared = False

    def __init__(self, path: pathlib.Path) -> None:
        self.path = pathlib.Path(path)
        self._lock = threading.Lock()
        self._signal = ChangeSignal()
        self._conn = _open(self.path)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- resources ---------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        with self._reading("read revision") as conn:
            return _read_revision(conn)

    @property
    def name(self) -> str:
        return str(self.path)

    def health(self) -> dict:
        return {"store": self.name, "backend": "sqlite", "healthy": True}

    def apply(self, items: list[Item], expected: dict[Key, int] | None = None) -> list[ApplyResult]:
        """Store every item or none. `expected` maps keys to the revision the writer last saw
        (metadata.resourceVersion); if one is no longer current, StoreConflict and nothing is written."""
        # Encode everything first: a bad item fails before the transaction even starts.
        encoded = [_encode_item(item) for item in items]
        now = time.time()
        with self._transaction("apply") as conn:
            revision = _read_revision(conn)
            results = []
            for row in encoded:
                if expected:
                    _check_expected(conn, row[:3], expected.get(row[:3]))
                result, revision = _apply_one(conn, row, revision, now)
                results.append(result)
            _write_revision(conn, revision)
        if any(result.action != "unchanged" for result in results):
            self._signal.notify()
        return results

    def get(self, kind: str, namespace: str, name: str) -> StoredResource | None:
        with self._reading("get") as conn:
            row = _select_one(conn, (kind, namespace, name))
        return None if row is None else _resource(row)

    def list(self, kind: str | None = None, namespace: str | None = None) -> list[StoredResource]:
        filters = {"kind": kind, "namespace": namespace}
        clauses = [f"{column} = ?" for column, value in filters.items() if value is not None]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        params = [value for value in filters.values() if value is not None]
        sql = f"SELECT {_COLUMNS} FROM resources {where} ORDER BY kind, namespace, name"
        with self._reading("list") as conn:
            rows = conn.execute(sql, params).fetchall()
        return [_resource(row) for row in rows]

    # `list` above is now the method, so later annotations spell out builtins.list.
    def delete(self, keys: builtins.list[Key]) -> builtins.list[StoredResource]:
        """Delete by key; returns what was deleted, as it was stored (its last-change revision)."""
        with self._transaction("delete") as conn:
            revision = _read_revision(conn)
            deleted = []
            for key in keys:
                row = _select_one(conn, tuple(key))
                if row is None:
                    continue
                conn.execute(f"DELETE FROM resources WHERE {_BY_KEY}", tuple(key))
                revision += 1
                deleted.append(_resource(row))
            _write_revision(conn, revision)
        if deleted:
            self._signal.notify()
        return deleted

    # -- workloads: registry, not config, so they never move the revision --------------------

    def put_workload(self, workload_id: str, record: dict) -> None:
        encoded = _canonical(record, f"workload {workload_id!r} record")
        with self._transaction("put workload") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO workloads (id, record, updated_at) VALUES (?, ?, ?)",
                (workload_id, encoded, time.time()),
            )

    def delete_workload(self, workload_id: str) -> bool:
        with self._transaction("delete workload") as conn:
            cursor = conn.execute("DELETE FROM workloads WHERE id = ?", (workload_id,))
        return cursor.rowcount > 0

    def touch_workload(self, workload_id: str) -> bool:
        """A heartbeat: the registry's own clock expires workloads on one machine, so nothing to write."""
        return True

    def list_workloads(self) -> builtins.list[StoredWorkload]:
        with self._reading("list workloads") as conn:
            rows = conn.execute("SELECT id, record, updated_at FROM workloads ORDER BY id")
            return [StoredWorkload(key, json.loads(record), at) for key, record, at in rows]

    # -- join tokens: credentials, not config, so they never move the revision either ---------

    def add_token(self, token_id: str, record: dict) -> None:
        """Store a new token's record (which must hold `expires_at`); an existing id is an error."""
        encoded = _canonical(record, f"token {token_id!r} record")
        expires_at = _expires_at(token_id, record)
        with self._transaction("add token") as conn:
            if conn.execute("SELECT 1 FROM tokens WHERE id = ?", (token_id,)).fetchone():
                raise StoreError(f"{self.path}: token {token_id!r} already exists")
            conn.execute(
                "INSERT INTO tokens (id, record, expires_at) VALUES (?, ?, ?)",
                (token_id, encoded, expires_at),
            )

    def consume_token(self, token_id: str, check: Callable[[dict | None], None]) -> dict:
        """Use a token once: `check(record)` (None if absent) raises to refuse, and then nothing
        is written; otherwise `uses_left` drops by one unless it is None (unlimited). A token at
        zero stays stored so a later refusal can say it is used up. Returns the record as it was.
        Check and write share one BEGIN IMMEDIATE transaction, so two processes cannot both take
        a token's last use."""
        with self._transaction("consume token") as conn:
            row = conn.execute("SELECT record FROM tokens WHERE id = ?", (token_id,)).fetchone()
            record = None if row is None else json.loads(row[0])
            check(record)
            if record is None:
                raise StoreError(f"{self.path}: token {token_id!r} does not exist")
            if record.get("uses_left") is not None:
                used = {**record, "uses_left": record["uses_left"] - 1}
                conn.execute(
                    "UPDATE tokens SET record = ? WHERE id = ?",
                    (_canonical(used, f"token {token_id!r} record"), token_id),
                )
        return record

    def list_tokens(self) -> builtins.list[dict]:
        with self._reading("list tokens") as conn:
            rows = conn.execute("SELECT record FROM tokens ORDER BY id").fetchall()
        return [json.loads(record) for (record,) in rows]

    def delete_token(self, token_id: str) -> bool:
        with self._transaction("delete token") as conn:
            cursor = conn.execute("DELETE FROM tokens WHERE id = ?", (token_id,))
        return cursor.rowcount > 0

    def purge_tokens(self, before: float) -> int:
        """Delete tokens that expired before `before`; returns how many."""
        with self._transaction("purge tokens") as conn:
            cursor = conn.execute("DELETE FROM tokens WHERE expires_at < ?", (before,))
        return cursor.rowcount

    # -- grants: what a redeemed token gave one proxy, until revoked ----------------------------
    #
    # A grant is written when a proxy redeems a join token for its first certificate: the token
    # id, the identity, the services it may serve, and the serials signed for it since. Renewals
    # and registrations are allowed while the proxy's grant stands; revoking the token or the
    # identity marks its grants revoked (`revoked_at`) in the same transaction as the token's
    # deletion, so nothing can renew in between. Revoked serials feed the CA's revocation list.

    def put_grant(self, proxy_id: str, record: dict) -> None:
        """A proxy's grant, replacing any earlier one (a proxy that redeemed a new token)."""
        encoded = _canonical(record, f"grant {proxy_id!r}")
        with self._transaction("put grant") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO grants (proxy_id, record, expires_at) VALUES (?, ?, ?)",
                (proxy_id, encoded, _grant_expiry(record)),
            )

    def get_grant(self, proxy_id: str) -> dict | None:
        with self._reading("get grant") as conn:
            row = conn.execute("SELECT record FROM grants WHERE proxy_id = ?", (proxy_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def record_serial(self, proxy_id: str, serial: str, not_after: float, keep: int = 8) -> None:
        """A certificate signed under the proxy's grant (the newest `keep` are remembered)."""
        with self._transaction("record serial") as conn:
            row = conn.execute("SELECT record FROM grants WHERE proxy_id = ?", (proxy_id,)).fetchone()
            if row is None:
                return
            record = json.loads(row[0])
            serials = [*record.get("serials", []), {"serial": serial, "not_after": not_after}][-keep:]
            record = {**record, "serials": serials}
            conn.execute(
                "UPDATE grants SET record = ?, expires_at = ? WHERE proxy_id = ?",
                (_canonical(record, f"grant {proxy_id!r}"), _grant_expiry(record), proxy_id),
            )

    def revoke_token(self, token_id: str, now: float) -> tuple[bool, builtins.list[str]]:
        """Delete a token and revoke every grant made from it: (token existed, proxies revoked)."""
        with self._transaction("revoke token") as conn:
            existed = conn.execute("DELETE FROM tokens WHERE id = ?", (token_id,)).rowcount > 0
            revoked = _revoke_grants(conn, lambda g: g.get("token_id") == token_id, now)
        return existed or bool(revoked), revoked

    def revoke_identity(self, namespace: str, service_account: str, now: float) -> tuple[int, builtins.list[str]]:
        """Delete every token of an identity and revoke every grant it holds: (tokens, proxies)."""

        def ours(record: dict) -> bool:
            return (record.get("namespace"), record.get("service_account")) == (namespace, service_account)

        with self._transaction("revoke identity") as conn:
            tokens = [tid for tid, raw in conn.execute("SELECT id, record FROM tokens") if ours(json.loads(raw))]
            conn.executemany("DELETE FROM tokens WHERE id = ?", [(t,) for t in tokens])
            revoked = _revoke_grants(conn, ours, now)
        return len(tokens), revoked

    def revoked_serials(self, now: float) -> builtins.list[dict]:
        """Serials of revoked grants whose certificates have not expired yet, oldest first."""
        with self._reading("revoked serials") as conn:
            rows = conn.execute("SELECT record FROM grants WHERE expires_at >= ?", (now,)).fetchall()
        out = []
        for (raw,) in rows:
            record = json.loads(raw)
            if record.get("revoked_at") is not None:
                out += [
                    s | {"revoked_at": record["revoked_at"]} for s in record.get("serials", []) if s["not_after"] >= now
                ]
        return sorted(out, key=lambda s: (s["revoked_at"], s["serial"]))

    def purge_grants(self, before: float) -> int:
        """Forget grants whose last certificate expired before `before`."""
        with self._transaction("purge grants") as conn:
            return conn.execute("DELETE FROM grants WHERE expires_at < ?", (before,)).rowcount

    # -- fetched JWKS: what one replica fetched, every replica serves ---------------------------

    def put_jwks(self, uri: str, record: dict) -> None:
        """The last fetch of `uri`: {"keys": text or None, "error": why not or None, "fetched_at"}."""
        encoded = _canonical(record, f"JWKS record for {uri!r}")
        with self._transaction("put JWKS") as conn:
            conn.execute("INSERT OR REPLACE INTO jwks (uri, record) VALUES (?, ?)", (uri, encoded))

    def drop_jwks(self, keep: builtins.list[str]) -> int:
        """Forget fetched JWKS of every URL not in `keep` (no RequestAuthentication names it); how many."""
        wanted = set(keep)
        with self._transaction("drop JWKS") as conn:
            gone = [uri for (uri,) in conn.execute("SELECT uri FROM jwks") if uri not in wanted]
            conn.executemany("DELETE FROM jwks WHERE uri = ?", [(uri,) for uri in gone])
        return len(gone)

    def jwks(self) -> dict[str, dict]:
        with self._reading("read JWKS") as conn:
            return {uri: json.loads(record) for uri, record in conn.execute("SELECT uri, record FROM jwks")}

    # -- counts: totals every replica adds to (certificates issued, refusals by reason) --------

    def add_counts(self, name: str, deltas: dict[str, int]) -> dict[str, int]:
        """Add `deltas` to the totals called `name`; returns the totals after (all of them)."""
        with self._transaction("add counts") as conn:
            conn.executemany(
                "INSERT INTO counts (name, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (name, key) DO UPDATE SET value = value + excluded.value",
                [(name, key, int(value)) for key, value in deltas.items() if value],
            )
            rows = conn.execute("SELECT key, value FROM counts WHERE name = ?", (name,)).fetchall()
        return dict(rows)

    # -- watch -------------------------------------------------------------------------------

    async def wait_for_change(self, after_revision: int, timeout: float | None = None) -> int:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        with self._signal.listen() as woken:
            seen_version, current = None, after_revision
            while True:
                # Our own commits set `woken`; other processes' commits move data_version.
                version = self._data_version()
                if woken.is_set() or version != seen_version:
                    woken.clear()
                    seen_version, current = version, self.revision
                remaining = None if deadline is None else deadline - loop.time()
                if current > after_revision or (remaining is not None and remaining <= 0):
                    return current
                tick = POLL_INTERVAL if remaining is None else min(POLL_INTERVAL, remaining)
                await wait_set(woken, tick)

    def _data_version(self) -> int:
        with self._reading("read data_version") as conn:
            return conn.execute("PRAGMA data_version").fetchone()[0]

    # -- plumbing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreUnavailable(
                    f"{self.path}: {what}: the database is locked by another process (waited {BUSY_TIMEOUT_MS} ms); "
                    "nothing was written, try again"
                ) from exc
            raise StoreError(f"{self.path}: {what} failed: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {what} failed: {exc}") from exc

    @contextlib.contextmanager
    def _reading(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors(what):
            yield self._conn

    @contextlib.contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors(what):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise


# -- opening ---------------------------------------------------------------------------------


def _open(path: pathlib.Path) -> sqlite3.Connection:
    try:
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True)
        if not path.exists():
            _private_files(path)  # created 0600 before SQLite opens it
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"{path}: cannot open the Lattice database: {exc}") from exc
    try:
        _prepare(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _private_files(path: pathlib.Path) -> None:
    """The database holds token hashes and the registry: readable by its owner only. SQLite makes
    the -wal and -shm files with the database file's mode, so creating that one 0600 is enough;
    files an older version left readable are tightened."""
    if not path.exists():
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        return
    for suffix in ("", "-wal", "-shm", "-journal"):
        candidate = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError):
            if candidate.stat().st_mode & 0o077:
                candidate.chmod(0o600)


def _prepare(conn: sqlite3.Connection, path: pathlib.Path) -> None:
    # Check before any pragma or DDL that writes: a foreign file must stay byte-for-byte intact.
    _check_ours(conn, path)
    _private_files(path)
    try:
        # Opening may wait longer, before anything is served: a server stopping on the same file
        # may still be checkpointing its log.
        conn.execute(f"PRAGMA busy_timeout = {OPEN_BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA.format(version=SCHEMA_VERSION)} COMMIT;")
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot initialise the Lattice database: {exc}") from exc


def _check_ours(conn: sqlite3.Connection, path: pathlib.Path) -> None:
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        row = None
        if "meta" in tables:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: not a Lattice database, or it is corrupt ({exc}); refusing to touch it") from exc
    if not tables:
        return  # new or empty file: ours to initialise
    if row is None:
        raise StoreError(f"{path}: an SQLite file but not a Lattice database; refusing to touch it")
    if row[0] > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: schema version {row[0]} is newer than this Lattice understands "
            f"({SCHEMA_VERSION}); upgrade Lattice"
        )


# -- rows ------------------------------------------------------------------------------------


def _revoke_grants(conn: sqlite3.Connection, match: Callable[[dict], bool], now: float) -> builtins.list[str]:
    revoked = []
    for proxy_id, raw in conn.execute("SELECT proxy_id, record FROM grants").fetchall():
        record = json.loads(raw)
        if match(record) and record.get("revoked_at") is None:
            conn.execute(
                "UPDATE grants SET record = ? WHERE proxy_id = ?",
                (_canonical({**record, "revoked_at": now}, f"grant {proxy_id!r}"), proxy_id),
            )
            revoked.append(proxy_id)
    return revoked


def _apply_one(conn: sqlite3.Connection, row: _Encoded, revision: int, now: float) -> tuple[ApplyResult, int]:
    old = _select_one(conn, row[:3])
    if old is not None and tuple(old[3:6]) == row[3:6]:
        return ApplyResult(_resource(old), "unchanged"), revision
    revision += 1
    created_at = now if old is None else old[7]
    stored = (*row, revision, created_at, now)
    insert = f"INSERT OR REPLACE INTO resources ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)"
    conn.execute(insert, stored)
    return ApplyResult(_resource(stored), "created" if old is None else "configured"), revision


def _check_expected(conn: sqlite3.Connection, key: tuple, expected: int | None) -> None:
    if expected is None:
        return
    old = _select_one(conn, key)
    current = None if old is None else old[6]
    if current != expected:
        kind, namespace, name = key
        now = "it no longer exists" if current is None else f"it is now at {current}"
        raise StoreConflict(
            f"{kind} {namespace}/{name}: resourceVersion {expected} is stale ({now}); get it again and reapply"
        )


def _select_one(conn: sqlite3.Connection, key: tuple) -> tuple | None:
    return conn.execute(f"SELECT {_COLUMNS} FROM resources WHERE {_BY_KEY}", key).fetchone()


def _resource(row: tuple) -> StoredResource:
    kind, namespace, name, api_version, metadata, spec, revision, created_at, updated_at = row
    return StoredResource(
        kind,
        namespace,
        name,
        api_version,
        json.loads(metadata),
        json.loads(spec),
        revision,
        created_at,
        updated_at,
    )


def _read_revision(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0]


def _write_revision(conn: sqlite3.Connection, revision: int) -> None:
    conn.execute("UPDATE meta SET value = ? WHERE key = 'revision'", (revision,))
