"""Wasm modules named by TrafficExtensions and WasmPlugins: fetched by the control plane, checked
against their `sha256`, kept by digest under `$LATTICE_HOME/modules`, served to agents.

- `check` runs at `lattice apply`: the module is fetched then and there, so a wrong `sha256`, a
  missing file or an unreachable URL is refused with the field's path instead of failing later on
  every proxy. A pinned module already held is not fetched again.
- Every `refresh` seconds each URL in use is fetched again (a pinned one only with
  `imagePullPolicy: Always`): a module changed at its source gets a new digest, which goes into the
  next snapshot, so proxies load it by that digest. A failed refresh keeps the last good digest;
  the error is kept per URL and shows in `lattice status`.
- `file://` is a path on the control plane's host; `http://` must be pinned (the API refuses it
  otherwise); `https://` is verified against the system's roots; `oci://` is pulled from a
  registry (server/oci.py), pinned by the image's digest. At most `MAX_MODULE_BYTES`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
from collections.abc import Callable, Iterable
from pathlib import Path

import aiohttp

from lattice.api.extensions import SHA256, TrafficExtensionSpec, WasmConfig, WasmPluginSpec
from lattice.server import oci
from lattice.server.refreshing import Refreshing
from lattice.store import StoreBackend

log = logging.getLogger("lattice.modules")
MAX_MODULE_BYTES = 64 << 20
MAX_REDIRECTS = 3
FETCH_TIMEOUT_SECONDS = 30.0
WASM_MAGIC = b"\0asm"
KINDS = ("TrafficExtension", "WasmPlugin")

ModuleKey = tuple[str, str]  # (url, pinned sha256 or "")


class ModuleError(Exception):
    """A module that cannot be had: unreachable, too large, not Wasm, or not the pinned bytes
    (`field` names which of the module's fields is at fault: url or sha256)."""

    def __init__(self, message: str, field: str = "url") -> None:
        super().__init__(message)
        self.field = field


def wasm_configs(store: StoreBackend) -> Iterable[WasmConfig]:
    """The Wasm part of every stored extension (validated on apply)."""
    for stored in store.list("TrafficExtension"):
        spec = TrafficExtensionSpec.model_validate(stored.spec)
        if spec.wasm is not None:
            yield spec.wasm
    for stored in store.list("WasmPlugin"):
        wasm = WasmPluginSpec.model_validate(stored.spec).as_traffic_extension().wasm
        assert wasm is not None
        yield wasm


def key(wasm: WasmConfig) -> ModuleKey:
    return (wasm.url, wasm.sha256)


class ModuleCache(Refreshing):
    """Module digests and last errors per (url, pinned sha256), for the pusher's snapshots."""

    what = "fetching Wasm modules"

    def __init__(self, store: StoreBackend, directory: Path, on_change: Callable[[], None], refresh: float) -> None:
        self._store = store
        self._dir = directory
        super().__init__(on_change, refresh)
        self._lock = asyncio.Lock()
        self.digests: dict[ModuleKey, str] = {}
        self.errors: dict[ModuleKey, str] = {}

    def path(self, digest: str) -> Path | None:
        """The file holding a module by its digest, if the control plane holds it."""
        if not SHA256.match(digest):
            return None
        path = self._dir / f"{digest}.wasm"
        return path if path.is_file() else None

    async def check(self, wasm: WasmConfig) -> str:
        """Fetch (unless held and the pull policy allows) and verify one module now; its digest, or ModuleError."""
        digest = self._held(wasm) or await self._fetch_and_keep(wasm)
        self.digests[key(wasm)] = digest
        self.errors.pop(key(wasm), None)
        return digest

    def _held(self, wasm: WasmConfig) -> str | None:
        """The digest of a module held that needs no fetch: pinned (or an OCI image by digest or
        by a tag other than latest) and `imagePullPolicy` not Always, as Istio pulls."""
        if wasm.image_pull_policy == "Always":
            return None
        if wasm.url.startswith("oci://"):
            if oci.parse(wasm.url).is_latest and wasm.image_pull_policy != "IfNotPresent":
                return None
            digest = self.digests.get(key(wasm))
        else:
            digest = wasm.sha256
        return digest if digest and self.path(digest) is not None else None

    async def refresh_changed(self) -> bool:
        """Only what is not held yet: changed extensions name new modules; known ones keep their schedule."""
        return await self.refresh(only_missing=True)

    async def refresh(self, only_missing: bool = False) -> bool:
        """Fetch the modules in use (only those not held yet, if `only_missing`); True on any change."""
        async with self._lock:
            self._seen = self._fingerprint()
            wanted = {key(w): w for w in wasm_configs(self._store)}
            before = (dict(self.digests), dict(self.errors))
            self.digests = {k: d for k, d in self.digests.items() if k in wanted}
            self.errors = {k: e for k, e in self.errors.items() if k in wanted}
            todo = [w for k, w in sorted(wanted.items()) if not (only_missing and k in self.digests)]
            for wasm, outcome in zip(todo, await asyncio.gather(*(self._quietly(w) for w in todo)), strict=True):
                self._record(key(wasm), outcome, before[1].get(key(wasm)))
            return (self.digests, self.errors) != before

    async def _quietly(self, wasm: WasmConfig) -> str | ModuleError:
        held = self._held(wasm)
        if held is not None:
            return held
        try:
            return await self._fetch_and_keep(wasm)
        except ModuleError as e:
            return e

    def _record(self, k: ModuleKey, outcome: str | ModuleError, last_error: str | None) -> None:
        if isinstance(outcome, str):
            if self.digests.get(k) not in (None, outcome):
                log.info("Wasm module at %s changed (sha256 %s); pushing it", k[0], outcome)
            self.digests[k] = outcome
            self.errors.pop(k, None)
            return
        self.errors[k] = str(outcome)
        if self.errors[k] != last_error:
            log.warning("cannot fetch Wasm module %s: %s", k[0], outcome)

    async def _fetch_and_keep(self, wasm: WasmConfig) -> str:
        if wasm.url.startswith("oci://"):
            body, image = await _pull(wasm.url)
            if wasm.sha256 and image != wasm.sha256:  # an image is pinned by its manifest's digest
                raise ModuleError(
                    f"{wasm.url} is image sha256 {image}, not the pinned {wasm.sha256}: refusing it", "sha256"
                )
        else:
            body = await _fetch(wasm.url)
        if not body.startswith(WASM_MAGIC):
            raise ModuleError(f"{wasm.url} is not a WebAssembly module (it does not start with \\0asm)")
        digest = hashlib.sha256(body).hexdigest()
        if wasm.sha256 and digest != wasm.sha256 and not wasm.url.startswith("oci://"):
            raise ModuleError(f"{wasm.url} has sha256 {digest}, not the pinned {wasm.sha256}: refusing it", "sha256")
        await asyncio.to_thread(_keep, self._dir, digest, body)
        return digest

    def _fingerprint(self) -> tuple:
        return tuple(sorted((r.kind, r.namespace, r.name, r.revision) for k in KINDS for r in self._store.list(k)))


def _keep(directory: Path, digest: str, body: bytes) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    final = directory / f"{digest}.wasm"
    if final.is_file():
        return
    partial = directory / f".{digest}.{os.getpid()}.part"
    partial.write_bytes(body)
    os.replace(partial, final)


async def _fetch(url: str) -> bytes:
    try:
        if url.startswith("file://"):
            return await asyncio.to_thread(_read_file, Path(url.removeprefix("file://")))
        return await asyncio.wait_for(_get(url), FETCH_TIMEOUT_SECONDS)
    except TimeoutError:
        raise ModuleError(f"{url} gave no answer within {FETCH_TIMEOUT_SECONDS:g}s") from None
    except (aiohttp.ClientError, OSError) as e:
        raise ModuleError(f"{url}: {e or type(e).__name__}") from None


async def _pull(url: str) -> tuple[bytes, str]:
    try:
        return await oci.pull(url, MAX_MODULE_BYTES, FETCH_TIMEOUT_SECONDS)
    except TimeoutError:
        raise ModuleError(f"{url} gave no answer within {FETCH_TIMEOUT_SECONDS:g}s") from None
    except (oci.OciError, aiohttp.ClientError, OSError) as e:
        raise ModuleError(str(e) or type(e).__name__) from None


def _read_file(path: Path) -> bytes:
    with path.open("rb") as f:
        body = f.read(MAX_MODULE_BYTES + 1)
    if len(body) > MAX_MODULE_BYTES:
        raise ModuleError(f"{path} is larger than {MAX_MODULE_BYTES >> 20} MiB")
    return body


async def _get(url: str) -> bytes:
    tls: ssl.SSLContext | bool = (
        ssl.create_default_context() if url.startswith("https://") else True
    )  # True: aiohttp's default
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, ssl=tls, max_redirects=MAX_REDIRECTS) as response,
    ):
        if response.status != 200:
            raise ModuleError(f"{url} answered HTTP {response.status}")
        body = bytearray()
        async for chunk in response.content.iter_chunked(256 * 1024):
            body += chunk
            if len(body) > MAX_MODULE_BYTES:
                raise ModuleError(f"{url} is larger than {MAX_MODULE_BYTES >> 20} MiB")
        return bytes(body)
