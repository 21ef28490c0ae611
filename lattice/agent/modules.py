"""Wasm modules on the sidecar's host: fetched from the control plane by digest, handed to Envoy
as local files (as Istio's agent does), so Envoy never reaches out for code itself.

The control plane's extension configs (ECDS) name a module by its digest, `<sha256>.wasm`, in
`vm_config.code.local.filename`. Before the relay passes such a config to Envoy, `ModuleFetcher`
makes sure the file is in the sidecar's module directory (fetched over the agents' API with the
workload's certificate, its SHA-256 checked) and rewrites the name to that file's path. A module
that cannot be had is left as named: Envoy cannot load it and the plugin's fail strategy decides
(FAIL_CLOSE: its requests fail; FAIL_OPEN: they pass without it), and the NACK names the module
in `lattice status`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import ssl
from collections.abc import Callable
from pathlib import Path

from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2
from envoy.extensions.filters.network.wasm.v3 import wasm_pb2 as network_wasm_pb2
from envoy.service.discovery.v3 import discovery_pb2

from lattice.agent.web_client import Client, ClientError
from lattice.identity import CONTROL_PLANE_NAME

log = logging.getLogger("lattice.agent.modules")
EXTENSION_CONFIG = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
_BY_DIGEST = re.compile(r"^([a-f0-9]{64})\.wasm$")
_WASM_TYPES = {
    http_wasm_pb2.Wasm.DESCRIPTOR.full_name: http_wasm_pb2.Wasm,
    network_wasm_pb2.Wasm.DESCRIPTOR.full_name: network_wasm_pb2.Wasm,
}
MAX_MODULE_BYTES = 64 << 20


class ModuleFetcher:
    def __init__(self, api: str, directory: Path, tls: Callable[[], ssl.SSLContext | bool]) -> None:
        self.api = api.rstrip("/")
        self.directory = directory
        self._tls = tls  # the workload's current client TLS context
        self._locks: dict[str, asyncio.Lock] = {}

    async def local_path(self, digest: str) -> Path | None:
        """The module's file on this host, fetched if needed; None if it cannot be had now."""
        path = self.directory / f"{digest}.wasm"
        async with self._locks.setdefault(digest, asyncio.Lock()):
            if path.is_file():
                return path
            try:
                body = await self._download(digest)
            except (ClientError, OSError, TimeoutError, ValueError) as e:
                log.warning("cannot fetch Wasm module %s from the control plane: %s", digest, e or type(e).__name__)
                return None
            await asyncio.to_thread(_keep, self.directory, path, body)
            return path

    async def _download(self, digest: str) -> bytes:
        async with Client(timeout=60, max_body=MAX_MODULE_BYTES, keep_alive=False) as session:
            url = f"{self.api}/agent/v1/modules/{digest}"
            async with session.get(url, ssl=self._tls(), server_hostname=CONTROL_PLANE_NAME) as response:
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}: {(await response.text())[:200]}")
                body = await response.read()
        if hashlib.sha256(body).hexdigest() != digest:
            raise ValueError("the bytes received are not the module asked for")
        return body

    async def localize(self, response: discovery_pb2.DiscoveryResponse) -> discovery_pb2.DiscoveryResponse:
        """An extension-config response with every module named by digest pointing at its local file."""
        if response.type_url != EXTENSION_CONFIG:
            return response
        out = discovery_pb2.DiscoveryResponse()
        out.CopyFrom(response)
        for resource in out.resources:
            config = extension_pb2.TypedExtensionConfig()
            resource.Unpack(config)
            if await self._localize_config(config):
                resource.Pack(config)
        return out

    async def _localize_config(self, config: extension_pb2.TypedExtensionConfig) -> bool:
        kind = _WASM_TYPES.get(config.typed_config.TypeName())
        if kind is None:
            return False
        wasm = kind()
        config.typed_config.Unpack(wasm)
        local = wasm.config.vm_config.code.local
        named = _BY_DIGEST.match(local.filename)
        if named is None:
            return False
        path = await self.local_path(named.group(1))
        if path is None:
            return False
        local.filename = str(path)
        config.typed_config.Pack(wasm)
        return True


def _keep(directory: Path, path: Path, body: bytes) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = directory / f".{path.name}.{os.getpid()}.part"
    partial.write_bytes(body)
    os.replace(partial, path)
