"""Wasm modules from OCI registries (the distribution API), as Istio pulls them for `oci://` URLs.

`oci://registry[:port]/repository[:tag|@sha256:digest]` (no tag: `latest`). Both image layouts
Istio accepts: the Wasm artifact (a layer of media type `application/vnd.module.wasm.content.
layer.v1+wasm` holding the module itself) and the compatible Docker/OCI image (one layer, a tar,
gzipped or not, holding `plugin.wasm`). Every blob is checked against its digest on arrival, and
`sha256`, when given, against the image's manifest digest (as Istio checks an image by tag).

Registries speak https, verified against the system's roots; one on a loopback address may speak
plain http (Docker treats 127.0.0.0/8 as insecure by default too). Anonymous pulls, including the
bearer-token challenge registries send (an anonymous token from their realm); registries that
need credentials are out of reach until Lattice keeps pull secrets.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import ipaddress
import json
import re
import ssl
import tarfile
from dataclasses import dataclass

import aiohttp

WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
MAX_MANIFEST_BYTES = 1 << 20
_REFERENCE = re.compile(r"^oci://(?P<registry>[^/]+)/(?P<repository>[a-z0-9]+(?:[._/-][a-z0-9]+)*)(?P<ref>[:@].+)?$")
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class OciError(Exception):
    """The image cannot be had: a bad reference, an answer that is not an image, a wrong digest."""


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    reference: str  # a tag, or sha256:<hex>

    @property
    def base(self) -> str:
        host = self.registry.rsplit(":", 1)[0].strip("[]")
        scheme = "http" if _loopback(host) else "https"
        return f"{scheme}://{self.registry}/v2/{self.repository}"

    @property
    def is_latest(self) -> bool:
        return self.reference == "latest"


def parse(url: str) -> Reference:
    found = _REFERENCE.match(url)
    if found is None:
        raise OciError(f"{url!r} is not an image reference: oci://registry[:port]/repository[:tag|@sha256:digest]")
    ref = found["ref"] or ":latest"
    return Reference(found["registry"], found["repository"], ref[1:])


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def pull(url: str, max_bytes: int, timeout: float) -> tuple[bytes, str]:
    """(the module, the image's manifest digest)."""
    ref = parse(url)
    tls = ssl.create_default_context()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        client = _Registry(session, tls)
        manifest_bytes = await client.get(f"{ref.base}/manifests/{ref.reference}", MAX_MANIFEST_BYTES, MANIFEST_TYPES)
        digest = hashlib.sha256(manifest_bytes).hexdigest()
        if ref.reference.startswith("sha256:") and ref.reference != f"sha256:{digest}":
            raise OciError(f"{url}: the registry's manifest has digest sha256:{digest}, not {ref.reference}")
        layer = _module_layer(url, manifest_bytes)
        blob = await client.get(f"{ref.base}/blobs/{layer['digest']}", max_bytes, ())
    if f"sha256:{hashlib.sha256(blob).hexdigest()}" != layer["digest"]:
        raise OciError(f"{url}: a layer's bytes do not match its digest {layer['digest']}")
    return (blob if layer.get("mediaType") == WASM_LAYER else _from_tar(url, blob, max_bytes)), digest


def _module_layer(url: str, manifest_bytes: bytes) -> dict:
    try:
        manifest = json.loads(manifest_bytes)
        layers = manifest["layers"]
    except (ValueError, KeyError, TypeError):
        raise OciError(f"{url}: the registry's answer is not an image manifest") from None
    wasm = [layer for layer in layers if layer.get("mediaType") == WASM_LAYER]
    if wasm:
        return wasm[0]
    if len(layers) == 1:
        return layers[0]
    raise OciError(f"{url}: no Wasm layer ({WASM_LAYER}) and not a one-layer image holding plugin.wasm")


def _from_tar(url: str, blob: bytes, max_bytes: int) -> bytes:
    data = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = next((m for m in tar.getmembers() if m.name.lstrip("./") == "plugin.wasm" and m.isfile()), None)
            if member is None or member.size > max_bytes:
                raise OciError(f"{url}: the image's layer holds no plugin.wasm (or one too large)")
            extracted = tar.extractfile(member)
            assert extracted is not None
            return extracted.read()
    except tarfile.TarError:
        raise OciError(f"{url}: the image's layer is neither a Wasm module nor a tar") from None


class _Registry:
    """GETs against one registry, answering its bearer-token challenge anonymously once."""

    def __init__(self, session: aiohttp.ClientSession, tls: ssl.SSLContext) -> None:
        self.session, self.tls = session, tls
        self.token: str | None = None

    async def get(self, url: str, max_bytes: int, accept: tuple[str, ...]) -> bytes:
        for _ in range(2):
            headers = {"Accept": ", ".join(accept)} if accept else {}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            async with self.session.get(url, headers=headers, ssl=self._tls(url)) as response:
                if response.status == 401 and self.token is None:
                    self.token = await self._anonymous_token(response.headers.get("WWW-Authenticate", ""), url)
                    continue
                if response.status != 200:
                    raise OciError(f"{url} answered HTTP {response.status}")
                body = await response.content.read(max_bytes + 1)
                if len(body) > max_bytes:
                    raise OciError(f"{url} is larger than {max_bytes} bytes")
                return body
        raise OciError(f"{url}: the registry refused an anonymous pull; pull secrets are not supported yet")

    def _tls(self, url: str) -> ssl.SSLContext | bool:
        return self.tls if url.startswith("https://") else False

    async def _anonymous_token(self, challenge: str, url: str) -> str:
        if not challenge.lower().startswith("bearer "):
            raise OciError(f"{url}: the registry wants credentials; pull secrets are not supported yet")
        fields = dict(_CHALLENGE.findall(challenge))
        realm = fields.pop("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise OciError(f"{url}: the registry's token challenge names no realm")
        async with self.session.get(realm, params=fields, ssl=self._tls(realm)) as response:
            if response.status != 200:
                raise OciError(f"{url}: the registry's token service answered HTTP {response.status}")
            answer = await response.json(content_type=None)
        token = answer.get("token") or answer.get("access_token")
        if not token:
            raise OciError(f"{url}: the registry's token service gave no token")
        return token
