"""ModuleCache with real files and a real HTTP server on an OS-chosen port: modules fetched,
checked against their pin, kept by digest, refreshed when their source changes, and every
failure kept with its reason."""

from __future__ import annotations

import hashlib

import pytest
from aiohttp import web

from lattice.api.extensions import WasmConfig
from lattice.server.modules import ModuleCache, ModuleError
from lattice.store import Store

MODULE_A = b"\0asm\x01\0\0\0" + b"a" * 32
MODULE_B = b"\0asm\x01\0\0\0" + b"b" * 32


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "lattice.db") as opened:
        yield opened


def apply_extension(store: Store, name: str, url: str, pin: str = "", policy: str = "") -> None:
    wasm = {"url": url, **({"sha256": pin} if pin else {}), **({"imagePullPolicy": policy} if policy else {})}
    meta = {"name": name, "namespace": "default"}
    store.apply([("TrafficExtension", "default", name, "extensions.istio.io/v1alpha1", meta, {"wasm": wasm})])


@pytest.fixture
async def modules_http():
    """GET /<name> answers `bodies[name]` (404 if absent)."""
    bodies: dict[str, bytes] = {}

    async def handle(request: web.Request) -> web.Response:
        body = bodies.get(request.path.lstrip("/"))
        return web.Response(status=404) if body is None else web.Response(body=body)

    app = web.Application()
    app.router.add_get("/{name}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", bodies
    await runner.cleanup()


def cache(store: Store, tmp_path, changes: list | None = None) -> ModuleCache:
    return ModuleCache(store, tmp_path / "modules", on_change=lambda: (changes or []).append(1), refresh=3600)


async def test_file_module_is_kept_by_digest_and_a_change_at_the_source_gives_a_new_digest(store, tmp_path):
    source = tmp_path / "plugin.wasm"
    source.write_bytes(MODULE_A)
    apply_extension(store, "one", f"file://{source}")
    modules = cache(store, tmp_path)
    assert await modules.refresh()
    assert modules.digests == {(f"file://{source}", ""): sha(MODULE_A)}
    assert modules.path(sha(MODULE_A)).read_bytes() == MODULE_A
    source.write_bytes(MODULE_B)
    assert await modules.refresh()  # a refresh reads the source again: a rebuilt module is a change
    assert modules.digests[(f"file://{source}", "")] == sha(MODULE_B)
    assert not await modules.refresh()  # nothing changed since


async def test_pinned_module_must_match_and_a_mismatch_keeps_nothing(store, tmp_path, modules_http):
    base, bodies = modules_http
    bodies["plugin.wasm"] = MODULE_A
    modules = cache(store, tmp_path)
    with pytest.raises(ModuleError) as refused:
        await modules.check(WasmConfig(url=f"{base}/plugin.wasm", sha256=sha(MODULE_B)))
    assert refused.value.field == "sha256" and sha(MODULE_A) in str(refused.value)
    assert modules.path(sha(MODULE_A)) is None and modules.path(sha(MODULE_B)) is None
    assert await modules.check(WasmConfig(url=f"{base}/plugin.wasm", sha256=sha(MODULE_A))) == sha(MODULE_A)
    bodies.clear()  # held by digest: a pinned module is not fetched again
    assert await modules.check(WasmConfig(url=f"{base}/plugin.wasm", sha256=sha(MODULE_A))) == sha(MODULE_A)


@pytest.mark.parametrize(
    ("name", "body", "reason"),
    [("missing.wasm", None, "HTTP 404"), ("text.wasm", b"<html>not wasm</html>", "not a WebAssembly module")],
)
async def test_failures_are_kept_with_their_reason_and_the_last_good_digest_stays(
    store, tmp_path, modules_http, name, body, reason
):
    base, bodies = modules_http
    bodies[name] = MODULE_A
    # Plain http must be pinned; Always fetches a pinned module again on every refresh.
    apply_extension(store, "one", f"{base}/{name}", pin=sha(MODULE_A), policy="Always")
    key = (f"{base}/{name}", sha(MODULE_A))
    modules = cache(store, tmp_path)
    await modules.refresh()
    good = modules.digests[key]
    if body is None:
        del bodies[name]
    else:
        bodies[name] = body
    assert await modules.refresh()
    assert reason in modules.errors[key]
    assert modules.digests[key] == good


async def test_missing_file_is_an_error_naming_it(store, tmp_path):
    modules = cache(store, tmp_path)
    with pytest.raises(ModuleError) as refused:
        await modules.check(WasmConfig(url=f"file://{tmp_path}/nowhere.wasm"))
    assert "nowhere.wasm" in str(refused.value) and refused.value.field == "url"


async def test_prepare_fetches_only_what_is_new(store, tmp_path):
    source = tmp_path / "a.wasm"
    source.write_bytes(MODULE_A)
    apply_extension(store, "a", f"file://{source}")
    modules = cache(store, tmp_path)
    await modules.prepare()
    assert modules.digests[(f"file://{source}", "")] == sha(MODULE_A)
    source.write_bytes(MODULE_B)  # changed at the source, but prepare only fills in what is missing
    apply_extension(store, "b", f"file://{source}")  # a change to the extensions makes prepare look
    await modules.prepare()
    assert modules.digests[(f"file://{source}", "")] == sha(MODULE_A)
