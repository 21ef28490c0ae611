"""Wasm modules pulled from a real OCI registry (Debian's docker-registry, the CNCF distribution
server) on a loopback port: both image layouts Istio accepts, pinning by the image's digest, and a
tag that does not exist."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import urllib.request
from pathlib import Path

import pytest

from harness import wait_for
from lattice.agent.address import free_port
from lattice.agent.envoy import die_with_parent
from lattice.api.extensions import WasmConfig
from lattice.server.modules import ModuleCache, ModuleError
from lattice.store import Store

MODULE = b"\0asm\x01\0\0\0" + b"oci" * 16
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class Registry:
    """docker-registry serving one temporary directory on 127.0.0.1, anonymous read and write."""

    def __init__(self, root: Path) -> None:
        self.port = free_port("127.0.0.1")
        config = root / "config.yml"
        config.write_text(
            f"version: 0.1\nstorage: {{filesystem: {{rootdirectory: {root / 'data'}}}}}\n"
            f"http: {{addr: 127.0.0.1:{self.port}}}\nlog: {{level: error}}\n"
        )
        self.process = subprocess.Popen(
            ["docker-registry", "serve", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        wait_for(lambda: self._get("/v2/")[0] == 200, 10, what="the registry to answer")

    def _get(self, path: str) -> tuple[int, bytes]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return r.status, r.read()

    def _blob(self, repository: str, body: bytes) -> dict:
        digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
        start = urllib.request.Request(f"http://127.0.0.1:{self.port}/v2/{repository}/blobs/uploads/", method="POST")
        with urllib.request.urlopen(start, timeout=5) as r:
            location = r.headers["Location"]
        if location.startswith("/"):
            location = f"http://127.0.0.1:{self.port}{location}"
        upload = urllib.request.Request(
            f"{location}{'&' if '?' in location else '?'}digest={digest}", data=body, method="PUT"
        )
        upload.add_header("Content-Type", "application/octet-stream")
        urllib.request.urlopen(upload, timeout=5).close()
        return {"digest": digest, "size": len(body)}

    def push(self, repository: str, tag: str, layer: bytes, layer_type: str, config_type: str) -> str:
        """An image of one layer; its manifest's digest (hex)."""
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": config_type, **self._blob(repository, b"{}")},
            "layers": [{"mediaType": layer_type, **self._blob(repository, layer)}],
        }
        body = json.dumps(manifest).encode()
        put = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v2/{repository}/manifests/{tag}", data=body, method="PUT"
        )
        put.add_header("Content-Type", OCI_MANIFEST)
        urllib.request.urlopen(put, timeout=5).close()
        return hashlib.sha256(body).hexdigest()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    r = Registry(tmp_path_factory.mktemp("registry"))
    yield r
    r.stop()


@pytest.fixture
def modules(tmp_path):
    with Store(tmp_path / "lattice.db") as store:
        yield ModuleCache(store, tmp_path / "modules", on_change=lambda: None, refresh=3600)


def _tar_gz(name: str, body: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    return gzip.compress(out.getvalue())


async def test_wasm_artifact_image_is_pulled_and_kept_by_the_modules_digest(registry, modules):
    registry.push(
        "filters/guard",
        "v1",
        MODULE,
        "application/vnd.module.wasm.content.layer.v1+wasm",
        "application/vnd.wasm.config.v1+json",
    )
    digest = await modules.check(WasmConfig(url=f"oci://127.0.0.1:{registry.port}/filters/guard:v1"))
    assert digest == hashlib.sha256(MODULE).hexdigest()
    assert modules.path(digest).read_bytes() == MODULE


async def test_docker_compatible_image_with_plugin_wasm_and_pinning_by_image_digest(registry, modules):
    image = registry.push(
        "filters/compat",
        "v2",
        _tar_gz("plugin.wasm", MODULE),
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.config.v1+json",
    )
    url = f"oci://127.0.0.1:{registry.port}/filters/compat:v2"
    assert await modules.check(WasmConfig(url=url, sha256=image)) == hashlib.sha256(MODULE).hexdigest()
    with pytest.raises(ModuleError) as refused:
        await modules.check(WasmConfig(url=url, sha256="0" * 64, image_pull_policy="Always"))
    assert refused.value.field == "sha256" and image in str(refused.value)
    by_digest = f"oci://127.0.0.1:{registry.port}/filters/compat@sha256:{image}"
    assert await modules.check(WasmConfig(url=by_digest)) == hashlib.sha256(MODULE).hexdigest()


async def test_a_missing_tag_is_an_error_naming_the_image(registry, modules):
    url = f"oci://127.0.0.1:{registry.port}/filters/none:v9"
    with pytest.raises(ModuleError) as refused:
        await modules.check(WasmConfig(url=url))
    assert "filters/none/manifests/v9" in str(refused.value) and "404" in str(refused.value)
