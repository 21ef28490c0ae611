"""The keys behind RequestAuthentication `jwksUri`s: fetched by the control plane, inlined into
sidecar config (Istio's default: istiod fetches, Envoy never calls out for keys).

- Every URL named by a stored RequestAuthentication is fetched before the first push that needs it
  (the pusher awaits `prepare`, which fetches the URLs nobody has fetched yet), and every `refresh`
  seconds by the replica that runs the "jwks-refresh" duty, so rotated keys reach the sidecars
  within one interval; URLs whose last fetch failed are retried sooner.
- What was fetched lives in the store (`put_jwks`), not only in this process: every replica serves
  the same keys (one fetches, the others follow the store's watch), and a restarted control plane
  pushes the keys it had before its first fetch is due.
- https is verified against the system's roots; plain http is allowed, as Istio allows it, for
  issuers inside a trusted network. A response must be 200, at most `MAX_JWKS_BYTES`, and a JSON
  Web Key Set (the same check `jwks` gets at apply time); redirects are followed a few times.
- A failed refresh keeps the last good keys; a URL never fetched has none, and the translator
  gives its rules a key nobody holds, so its tokens fail. Either way the error is kept per URL and
  shows in `lattice status`. When keys or errors change, a push is requested.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable

import aiohttp

from lattice.api.request_authn import RequestAuthenticationSpec, check_jwks
from lattice.server.refreshing import RETRY_FAILED_SECONDS, Refreshing
from lattice.store import StoreBackend, StoreError, is_shared

log = logging.getLogger("lattice.jwks")
MAX_JWKS_BYTES = 256 * 1024
MAX_REDIRECTS = 3


class JwksFetchError(Exception):
    """A JWKS URL answered with something other than a key set, or not at all."""


class JwksCache(Refreshing):
    """JWKS text and last error per URL, for the pusher to put in each snapshot, kept in the store."""

    what = "fetching JWKS"

    def __init__(
        self, store: StoreBackend, on_change: Callable[[], None], refresh: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        super().__init__(on_change, refresh)
        self._clock = clock
        self._lock = asyncio.Lock()
        self.keys: dict[str, str] = {}
        self.errors: dict[str, str] = {}

    async def refresh(self) -> bool:
        """Fetch every URL in use and record it in the store; True if any keys or errors changed."""
        return await self._fetch_and_record(everything=True)

    async def refresh_changed(self) -> bool:
        """The RequestAuthentications changed: fetch the URLs they name that nobody fetched yet."""
        return await self._fetch_and_record(everything=False)

    async def run(self) -> None:
        """The refresh duty: fetch when the oldest record is `refresh` old (sooner while one failed)."""
        while True:
            wait = self._next_refresh_in()
            if wait > 0:  # looked at again at least every RETRY_FAILED_SECONDS: another replica's
                await asyncio.sleep(min(wait, RETRY_FAILED_SECONDS))  # `prepare` may record a failure
                continue
            if await self._refresh_safely():
                self._on_change()
            await asyncio.sleep(min(self._refresh, 1.0))  # even if the store could not record it

    async def follow(self) -> None:
        """Take up what another replica fetched (a shared store's watch); ask for a push on change."""
        store = self._store
        if not is_shared(store):
            return  # a SQLite store has one writer: this process, which already holds what it fetched
        generation = store.jwks_generation
        while True:
            generation = await store.wait_for_jwks_change(generation)
            async with self._lock:
                changed = self._take_stored(self._wanted())
            if changed:
                self._on_change()

    async def _fetch_and_record(self, everything: bool) -> bool:
        async with self._lock:
            self._seen = self._fingerprint()
            wanted = self._wanted()
            before = (dict(self.keys), dict(self.errors))
            stored = await asyncio.to_thread(self._store.jwks)
            fetch = sorted(u for u in wanted if everything or stored.get(u, {}).get("keys") is None)
            results = await asyncio.gather(*(_fetch(uri, wanted[uri]) for uri in fetch))
            for uri, (text, error) in zip(fetch, results, strict=True):
                stored[uri] = {**self._record(uri, text, error, stored.get(uri, {})), "fetched_at": self._clock()}
                await self._write(self._store.put_jwks, uri, stored[uri])
            if everything:
                await self._write(self._store.drop_jwks, sorted(wanted))
            self._take_stored(wanted, stored)
            return (self.keys, self.errors) != before

    async def _write(self, call: Callable, *args: object) -> None:
        """Record in the store; if it cannot take it now, this replica still serves what it fetched."""
        try:
            await asyncio.to_thread(call, *args)
        except StoreError as e:
            log.warning("cannot record fetched JWKS in the store (%s); serving them from this replica only", e)

    def _record(self, uri: str, text: str | None, error: str | None, last: dict) -> dict:
        """What the store keeps of one fetch: the new keys, or the last good ones and why not."""
        if text is not None:
            if last.get("keys") not in (None, text):
                log.info("JWKS at %s changed; pushing the new keys", uri)
            return {"keys": text, "error": None}
        error = error or "unknown error"
        if error != last.get("error"):  # once per new reason, not every retry
            log.warning("cannot fetch JWKS %s: %s", uri, error)
        return {"keys": last.get("keys"), "error": error}

    def _take_stored(self, wanted: dict[str, float], stored: dict[str, dict] | None = None) -> bool:
        """Serve what the store holds for the URLs in use; True if that changed what we serve."""
        records = self._store.jwks() if stored is None else stored
        before = (self.keys, self.errors)
        self.keys = {u: r["keys"] for u, r in records.items() if u in wanted and r.get("keys") is not None}
        self.errors = {u: r["error"] for u, r in records.items() if u in wanted and r.get("error")}
        self.errors.update({u: "not fetched yet" for u in wanted if u not in records})
        return (self.keys, self.errors) != before

    def _next_refresh_in(self) -> float:
        records = self._store.jwks()
        wanted = self._wanted()
        if any(u not in records for u in wanted):
            return 0.0
        due = [
            float(r.get("fetched_at", 0))
            + (min(self._refresh, RETRY_FAILED_SECONDS) if r.get("error") else self._refresh)
            for u, r in records.items()
            if u in wanted
        ]
        return max(0.0, min(due, default=self._clock() + self._refresh) - self._clock())

    def _wanted(self) -> dict[str, float]:
        """Each jwksUri in use and how long to wait for it: the longest `timeout` any rule gives it."""
        wanted: dict[str, float] = {}
        for stored in self._store.list("RequestAuthentication"):
            spec = RequestAuthenticationSpec.model_validate(stored.spec)  # validated on apply
            for rule in spec.jwt_rules:
                if rule.jwks_uri:
                    wanted[rule.jwks_uri] = max(wanted.get(rule.jwks_uri, 0.0), rule.timeout_seconds)
        return wanted

    def _fingerprint(self) -> tuple:
        return tuple(sorted((r.namespace, r.name, r.revision) for r in self._store.list("RequestAuthentication")))


async def _fetch(uri: str, timeout: float) -> tuple[str | None, str | None]:
    """(JWKS text, None) or (None, why not)."""
    try:
        return await asyncio.wait_for(_get(uri), timeout), None
    except TimeoutError:
        return None, f"no answer within {timeout:g}s"
    except (aiohttp.ClientError, JwksFetchError, OSError) as e:
        return None, str(e) or type(e).__name__


async def _get(uri: str) -> str:
    tls = ssl.create_default_context()  # the system's roots; hostname checked
    async with aiohttp.ClientSession() as session:
        async with session.get(
            uri, ssl=tls, max_redirects=MAX_REDIRECTS, headers={"Accept": "application/json"}
        ) as response:
            if response.status != 200:
                raise JwksFetchError(f"HTTP {response.status}")
            body = await _bounded_body(response)
    try:
        return check_jwks(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise JwksFetchError("the answer is not UTF-8 text") from None
    except ValueError as e:
        raise JwksFetchError(f"the answer {e}") from None


async def _bounded_body(response: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_JWKS_BYTES:
            raise JwksFetchError(f"the answer is larger than {MAX_JWKS_BYTES} bytes")
    return bytes(body)
