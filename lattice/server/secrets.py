"""The mesh's own secret store: TLS certificates and keys that gateways serve (`credentialName`).

`lattice secret create tls NAME --cert F --key F [--ca F]` sends the material to the REST API,
which checks it (api/tls_secret.py) and keeps it in the config store under a kind of its own
(`Secret.lattice.dev`, which `lattice get` and `apply` do not know), so that every replica sees it
and a change moves the store's revision and so triggers a push. The certificate and CAs are kept
as they are; the private key only sealed (AES-256-GCM, bound to the secret's namespace and name)
with a key in `$LATTICE_HOME/secrets.key` (0600, in the 0700 home, beside the CA's key). Replicas
sharing an etcd store need the same file, as they need the same CA. Nothing here logs material;
reads (`lattice secret get/list`) show the certificate's subject, names, validity and fingerprint,
never the key.

The pusher asks `credentials()` for what it puts in the snapshot; the translator gives each
gateway the secrets its servers name, over SDS, so a new version reaches the next connection
without a restart.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from pathlib import Path

from aiohttp import web
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lattice.api.tls_secret import SecretError, TlsMaterial, check_name, check_tls, describe
from lattice.api.meta import DNS1123_LABEL
from lattice.mesh.credentials import TlsCredential
from lattice.store import StoreError

log = logging.getLogger("lattice.secrets")
KIND = "Secret.lattice.dev"
API_VERSION = "lattice.dev/v1"
KEY_FILE = "secrets.key"


class SecretVault:
    def __init__(self, store, home: Path) -> None:
        self.store = store
        self._key_path = home / KEY_FILE
        self._key: bytes | None = None
        self._opened: dict[tuple[str, str, int], TlsCredential] = {}  # by revision: unsealed once per change
        self.errors: dict[tuple[str, str], str] = {}  # secrets this replica cannot unseal, and why

    # --- writing and reading ----------------------------------------------------------------

    def put(self, namespace: str, name: str, material: TlsMaterial, mode: str) -> dict:
        """Store a checked secret. mode: create (refused if it exists), update (refused if not)."""
        _check_namespace(namespace)
        check_name(name)
        check_tls(material)
        exists = self.store.get(KIND, namespace, name) is not None
        if mode == "create" and exists:
            raise SecretExists(
                f"TLS secret {namespace}/{name} exists; replace it with "
                f"`lattice secret update tls {name} -n {namespace}`"
            )
        if mode == "update" and not exists:
            raise SecretMissing(f"no TLS secret {namespace}/{name}; make it with `lattice secret create tls {name}`")
        self._check_same_key()
        spec = {
            "type": "tls",
            "cert": material.cert_pem.decode(),
            "ca": material.ca_pem.decode(),
            "sealedKey": self._seal(namespace, name, material.key_pem),
            "sealedWith": self._key_id(),
        }
        metadata = {"name": name, "namespace": namespace}
        (result,) = self.store.apply([(KIND, namespace, name, API_VERSION, metadata, spec)])
        log.info("TLS secret %s/%s %s", namespace, name, "updated" if exists else "created")
        return self._shown(result.resource) | {"action": "updated" if exists else "created"}

    def list(self, namespace: str | None = None) -> list[dict]:
        return [self._shown(r) for r in self.store.list(KIND, namespace)]

    def get(self, namespace: str, name: str) -> dict | None:
        found = self.store.get(KIND, namespace, name)
        return self._shown(found) if found else None

    def delete(self, namespace: str, name: str) -> bool:
        return bool(self.store.delete([(KIND, namespace, name)]))

    def credentials(self) -> dict[tuple[str, str], TlsCredential]:
        """Every secret this replica can unseal, by (namespace, name)."""
        out, opened, errors = {}, {}, {}
        for r in self.store.list(KIND):
            key = (r.namespace, r.name, r.revision)
            credential = self._opened.get(key)
            if credential is None:
                try:
                    credential = self._open(r)
                except SecretError as e:
                    errors[(r.namespace, r.name)] = str(e)
                    continue
            opened[key] = out[(r.namespace, r.name)] = credential
        self._opened, self.errors = opened, errors
        return out

    def _shown(self, r) -> dict:
        material = TlsMaterial(r.spec["cert"].encode(), b"", r.spec.get("ca", "").encode())
        return {
            "namespace": r.namespace,
            "name": r.name,
            "type": "tls",
            "created": r.created_at,
            "updated": r.updated_at,
            "revision": r.revision,
        } | describe(material)

    def _open(self, r) -> TlsCredential:
        if r.spec.get("sealedWith") != self._key_id():
            raise SecretError(
                f"TLS secret {r.namespace}/{r.name} was sealed with another secrets key than {self._key_path}; "
                "give every replica the same file, or create the secret again"
            )
        key_pem = self._unseal(r.namespace, r.name, r.spec["sealedKey"])
        return TlsCredential(r.spec["cert"].encode(), key_pem, r.spec.get("ca", "").encode())

    # --- sealing ------------------------------------------------------------------------------

    def _check_same_key(self) -> None:
        """Refuse to seal with a key other than the one the stored secrets were sealed with.

        Each replica keeps its own `secrets.key`; a replica given another file (or none, which would
        make a new one) would otherwise store secrets the other replicas cannot open, and a mixed
        store serves no gateway everywhere.
        """
        self._key = None  # read the file again: it may have just been copied from another replica
        sealed_with = {r.spec.get("sealedWith") for r in self.store.list(KIND)} - {None}
        if not sealed_with:
            return
        if not self._key_path.exists() or sealed_with != {self._key_id()}:
            raise SecretError(
                f"the stored TLS secrets were sealed with another secrets key than {self._key_path}; "
                "copy secrets.key from the replica that created them (every replica needs the same file), "
                "then try again"
            )

    def _sealing_key(self) -> bytes:
        if self._key is None:
            if not self._key_path.exists():
                fd = os.open(self._key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(AESGCM.generate_key(bit_length=256))
            os.chmod(self._key_path, 0o600)
            self._key = self._key_path.read_bytes()
            if len(self._key) != 32:
                raise StoreError(f"{self._key_path} is not a secrets key (32 bytes); restore it from a backup")
        return self._key

    def _key_id(self) -> str:
        return hashlib.sha256(b"lattice-secrets-key:" + self._sealing_key()).hexdigest()[:16]

    def _seal(self, namespace: str, name: str, plain: bytes) -> str:
        nonce = os.urandom(12)
        sealed = AESGCM(self._sealing_key()).encrypt(nonce, plain, f"{namespace}/{name}".encode())
        return base64.b64encode(nonce + sealed).decode()

    def _unseal(self, namespace: str, name: str, text: str) -> bytes:
        raw = base64.b64decode(text)
        try:
            return AESGCM(self._sealing_key()).decrypt(raw[:12], raw[12:], f"{namespace}/{name}".encode())
        except Exception:
            raise SecretError(f"TLS secret {namespace}/{name} cannot be unsealed: its stored key was altered") from None

    # --- REST ---------------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/api/v1/secrets", self._post)
        r.add_get("/api/v1/secrets", self._list)
        r.add_get("/api/v1/secrets/{namespace}/{name}", self._get)
        r.add_delete("/api/v1/secrets/{namespace}/{name}", self._delete)

    async def _post(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body must be JSON")
        if not isinstance(body, dict) or body.get("type") != "tls":
            return _error(400, "type: only tls secrets are kept (lattice secret create tls)")
        try:
            material = TlsMaterial(
                str(body.get("cert") or "").encode(),
                str(body.get("key") or "").encode(),
                str(body.get("ca") or "").encode(),
            )
            mode = body.get("mode", "create")
            if mode not in ("create", "update"):
                raise SecretError(f"mode: create or update, not {mode!r:.20}")
            shown = self.put(str(body.get("namespace") or "default"), str(body.get("name") or ""), material, mode)
        except SecretExists as e:
            return _error(409, str(e))
        except SecretMissing as e:
            return _error(404, str(e))
        except SecretError as e:
            return _error(400, f"cannot keep the secret: {e}")
        return web.json_response(shown)

    async def _list(self, request: web.Request) -> web.Response:
        items = self.list(request.query.get("namespace") or None)
        for item in items:
            why = self.errors.get((item["namespace"], item["name"]))
            if why:
                item["error"] = why
        return web.json_response({"items": items})

    async def _get(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        found = self.get(ns, name)
        if found is None:
            return _error(404, f"no TLS secret {ns}/{name}; see `lattice secret list`")
        return web.json_response(found)

    async def _delete(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        if not self.delete(ns, name):
            return _error(404, f"no TLS secret {ns}/{name}; see `lattice secret list`")
        log.info("TLS secret %s/%s deleted", ns, name)
        return web.json_response({"namespace": ns, "name": name, "action": "deleted"})


class SecretExists(SecretError):
    pass


class SecretMissing(SecretError):
    pass


def _check_namespace(namespace: str) -> None:
    if not DNS1123_LABEL.match(namespace):
        raise SecretError(f"namespace {namespace!r} must be a DNS-1123 label")


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=json.dumps({"error": message}), content_type="application/json")
