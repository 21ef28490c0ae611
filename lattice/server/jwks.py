"""The keys behind RequestAuthentication `jwksUri`s: fetched by the control plane, inlined into
sidecar config (Istio's default: istiod fetches, Envoy never calls out for keys).

- Every URL named by a stored RequestAuthentication is fetched before the first push that needs it
  (the pusher awaits `prepare`), again whenever a RequestAuthentication changes, and every
  `refresh` seconds, so rotated keys reach the sidecars within one interval; URLs whose last fetch
  failed are retried sooner.
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
from collections.abc import Callable

import aiohttp

from lattice.api.request_authn import RequestAuthenticationSpec, check_jwks
from lattice.server.refreshing import Refreshing
from lattice.store import Store

log = logging.getLogger("lattice.jwks")
MAX_JWKS_BYTES = 256 * 1024
MAX_REDIRECTS = 3


class JwksFetchError(Exception):
    """A JWKS URL answered with something other than a key set, or not at all."""


class JwksCache(Refreshing):
    """JWKS text and last error per URL, for the pusher to put in each snapshot."""

    what = "fetching JWKS"

    def __init__(self, store: Store, on_change: Callable[[], None], refresh: float) -> None:
        self._store = store
        super().__init__(on_change, refresh)
        self._lock = asyncio.Lock()
        self.keys: dict[str, str] = {}
        self.errors: dict[str, str] = {}

    async def refresh(self) -> bool:
        """Fetch every URL in use; True if any keys or errors changed."""
        async with self._lock:
            self._seen = self._fingerprint()
            wanted = self._wanted()
            before = (dict(self.keys), dict(self.errors))
            results = await asyncio.gather(*(_fetch(uri, timeout) for uri, timeout in sorted(wanted.items())))
            self.keys = {uri: text for uri, text in self.keys.items() if uri in wanted}
            self.errors = {}
            for uri, (text, error) in zip(sorted(wanted), results, strict=True):
                self._record(uri, text, error, before[1].get(uri))
            return (self.keys, self.errors) != before

    def _record(self, uri: str, text: str | None, error: str | None, last_error: str | None) -> None:
        if text is not None:
            if self.keys.get(uri) not in (None, text):
                log.info("JWKS at %s changed; pushing the new keys", uri)
            self.keys[uri] = text
            return
        self.errors[uri] = error or "unknown error"
        if self.errors[uri] != last_error:  # once per new reason, not every retry
            log.warning("cannot fetch JWKS %s: %s", uri, self.errors[uri])

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
