"""The admin REST API: one API for the CLI and (later) the dashboard.

Every call but /api/v1/health and /metrics (Prometheus' scrape: counts and timings, no secrets)
needs the admin credential `lattice server` writes to
`$LATTICE_HOME/admin-token` (0600), sent as `Authorization: Bearer <token>`. Agents never use this
API: they have their own, authenticated by join tokens and workload certificates (agent_api.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import time
from collections.abc import Callable

import aiohttp
import pydantic
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from aiohttp import web

from lattice.api import KINDS, UnknownKindError, ValidationError, kind_for, parse_documents
from lattice.api.errors import FieldError
from lattice.identity import TokenRecord, fingerprint, mint_token
from lattice.mesh.analyze import analyze
from lattice.mesh.model import SNAPSHOT_FIELDS
from lattice.registry import Registry
from lattice.server import limits
from lattice.server.authz_check import CheckError, Question, check
from lattice.server.ca import CaManager, RotationError
from lattice.server.observe import Observatory
from lattice.server.metrics import CONTENT_TYPE, ControlPlaneMetrics
from lattice.server.modules import ModuleCache, ModuleError
from lattice.server.pusher import Pusher
from lattice.server import discovery
from lattice.server.console import Console
from lattice.server.why import WhyApi
from lattice.server.traces import TraceStore, list_response, trace_response
from lattice.store import StoreBackend, StoreConflict, StoredResource, StoreError, StoreUnavailable, is_shared
from lattice.translate import EXTENSION_CONFIG, SECRET, TYPE_ORDER
from lattice.xds import StatusBoard

log = logging.getLogger("lattice.api")
MAX_BODY = 8 << 20
PUBLIC = frozenset({"/api/v1/health", "/metrics"})  # no admin credential needed


def refresh_revocations(store: StoreBackend, ca: CaManager) -> bool:
    """Hand the CA the serials of live revoked certificates; True if its CRL changed."""
    return ca.set_revoked([s["serial"] for s in store.revoked_serials(time.time())])


class RestApi:
    def __init__(
        self,
        store: StoreBackend,
        registry: Registry,
        pusher: Pusher,
        board: StatusBoard,
        connected,
        ca: CaManager,
        admin_token: str,
        metrics: ControlPlaneMetrics | None = None,
        traces: TraceStore | None = None,
        modules: ModuleCache | None = None,
        replica=None,
        metrics_token: str = "",
        secrets=None,
    ) -> None:
        self.secrets = secrets  # server/secrets.py: `lattice secret`
        self._metrics_token = metrics_token  # reads the Prometheus targets only (server/discovery.py)
        self.modules = modules  # extensions' Wasm modules: fetched and checked when applied
        self.store, self.registry, self.pusher, self.board, self.ca = store, registry, pusher, board, ca
        self.replica = replica  # lattice.server.replicas.Replica: this replica and the others, for status
        self.traces = traces if traces is not None else TraceStore()  # spans the agents forward (agent_api.py)
        self.metrics = metrics or ControlPlaneMetrics()
        self._admin_token = admin_token
        self._connected = connected  # () -> list of node ids with an open ADS stream
        self.started = time.time()
        self.expiry_warnings: Callable[[], list] = lambda: []  # server/ca_duty.py: what will expire unless someone acts
        self.xds_address = ""  # set once the gRPC port is bound; agents learn it from /health
        self.observatory = Observatory(registry, ca.agent_key)  # stat, top, edges, tap: asked of the agents live
        self.console = Console(registry, lambda: self.observatory.session, api=self)  # /ui/: the web console

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=MAX_BODY, middlewares=[self._measure, self._authenticate, limits.bounded_body, _errors]
        )
        r = app.router
        r.add_get("/api/v1/health", self.health)
        r.add_get("/metrics", self.prometheus)
        r.add_post("/api/v1/apply", self.apply)
        r.add_post("/api/v1/analyze", self.analyze)
        r.add_post("/api/v1/authz/check", self.authz_check)
        r.add_post("/api/v1/delete", self.delete_documents)
        r.add_get("/api/v1/resources/{kind}", self.list_resources)
        r.add_get("/api/v1/resources/{kind}/{namespace}/{name}", self.get_resource)
        r.add_delete("/api/v1/resources/{kind}/{namespace}/{name}", self.delete_resource)
        r.add_get("/api/v1/workloads", self.list_workloads)
        r.add_get("/api/v1/status", self.status)
        r.add_post("/api/v1/tokens", self.create_token)
        r.add_get("/api/v1/tokens", self.list_tokens)
        r.add_delete("/api/v1/tokens/{id}", self.delete_token)
        r.add_get("/api/v1/ca", self.ca_info)
        r.add_post("/api/v1/ca/rotate-root", self.rotate_root)
        r.add_post("/api/v1/ca/revoke", self.revoke_identity)
        r.add_post("/api/v1/ca/trust", self.trust_root)
        r.add_delete("/api/v1/ca/trust/{fingerprint}", self.untrust_root)
        r.add_get("/api/v1/proxies/{id}/config_dump", self.config_dump)
        r.add_get("/api/v1/traces", self.list_traces)
        r.add_get("/api/v1/traces/{trace_id}", self.get_trace)
        self.observatory.add_routes(app)
        WhyApi(self.registry, lambda: self.pusher.snapshot, lambda: self.observatory.session).add_routes(app)
        discovery.add_routes(app, self.registry, lambda: self.pusher.snapshot.root_namespace)
        self.console.add_routes(app)
        if self.secrets is not None:
            self.secrets.add_routes(app)
        return app

    @web.middleware
    async def _authenticate(self, request: web.Request, handler):
        if request.path not in PUBLIC and not self.console.public(request.path) and not self.console.admits(request):
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            accepted = [self._admin_token] + ([self._metrics_token] if request.path == discovery.SD_PATH else [])
            if scheme.lower() != "bearer" or not any(
                t and hmac.compare_digest(token.strip().encode(), t.encode()) for t in accepted
            ):
                return web.json_response(
                    {
                        "error": "missing or wrong admin credential: the CLI reads it from "
                        "$LATTICE_HOME/admin-token, written by `lattice server`"
                    },
                    status=401,
                )
        return await handler(request)

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    @web.middleware
    async def _measure(self, request: web.Request, handler):
        """Every request into `lattice_api_*`, by route pattern (not path: bounded cardinality)."""
        started, code = time.perf_counter(), 500
        try:
            response = await handler(request)
            code = response.status
            return response
        except web.HTTPException as e:
            code = e.status
            raise
        finally:
            self.metrics.api_request(request.method, _route(request), code, time.perf_counter() - started)

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render().encode(), headers={"Content-Type": CONTENT_TYPE})

    async def create_token(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body, dict):
            return web.json_response({"error": "cannot create the token: the body must be a JSON object"}, status=400)
        uses = body.get("uses", 1)  # single use unless asked otherwise; null: unlimited until expiry
        try:
            if uses is not None and (isinstance(uses, bool) or not isinstance(uses, int)):
                raise ValueError(f"uses must be a whole number or null, got {uses!r:.40}")
            token, record = mint_token(
                str(body.get("namespace") or "default"),
                str(body.get("service_account") or ""),
                float(body.get("ttl_seconds") or 3600),
                uses,
                time.time(),
                self.ca.root_fingerprint,
                str(body.get("description") or ""),
                services=body.get("services"),
            )
        except (TypeError, ValueError) as e:
            return web.json_response({"error": f"cannot create the token: {e}"}, status=400)
        self.store.add_token(record.id, record.to_dict())
        identity = str(record.identity(self.ca.trust_domain))
        log.info("join token %s created for %s (services %s)", record.id, identity, ", ".join(record.services))
        return web.json_response(
            {
                "token": token,
                "id": record.id,
                "identity": identity,
                "services": list(record.services),
                "expires_at": record.expires_at,
                "uses": record.uses_left,
            }
        )

    async def list_tokens(self, request: web.Request) -> web.Response:
        now = time.time()
        items = [
            {k: v for k, v in t.items() if k != "secret_hash"}
            | {
                "identity": str(TokenRecord.from_dict(t).identity(self.ca.trust_domain)),
                "expired": t["expires_at"] <= now,
            }
            for t in self.store.list_tokens()
        ]
        return web.json_response({"items": items})

    async def delete_token(self, request: web.Request) -> web.Response:
        """Revoke a token: it cannot be redeemed, and every proxy that joined with it can neither
        renew nor register again; its certificates go on the CRL sidecars check."""
        token_id = request.match_info["id"]
        found, proxies = self.store.revoke_token(token_id, time.time())
        if not found:
            raise web.HTTPNotFound(
                text=json.dumps({"error": f"no token {token_id}; see `lattice token list`"}),
                content_type="application/json",
            )
        self._revoked(proxies, f"token {token_id}")
        return web.json_response({"deleted": token_id, "revoked_proxies": proxies})

    async def revoke_identity(self, request: web.Request) -> web.Response:
        """Revoke an identity: its tokens go, and every proxy holding it is cut off as above."""
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("service_account"), str):
            return web.json_response({"error": "service_account: a service account name is required"}, status=400)
        namespace, account = str(body.get("namespace") or "default"), body["service_account"]
        tokens, proxies = self.store.revoke_identity(namespace, account, time.time())
        identity = f"spiffe://{self.ca.trust_domain}/ns/{namespace}/sa/{account}"
        self._revoked(proxies, identity)
        return web.json_response(
            {
                "identity": identity,
                "tokens_deleted": tokens,
                "revoked_proxies": proxies,
                "revoked_certificates": self.ca.revoked_count,
            }
        )

    def _revoked(self, proxies: list[str], what: str) -> None:
        for proxy_id in proxies:
            self.ca.forget(proxy_id)
            self.registry.deregister(proxy_id)
        refresh_revocations(self.store, self.ca)
        log.warning(
            "revoked %s: %d proxies cut off, %d certificates on the CRL", what, len(proxies), self.ca.revoked_count
        )

    async def ca_info(self, request: web.Request) -> web.Response:
        info = self.ca.describe()
        workloads = self.registry.workloads()
        info["proxies"] = {
            "total": len(workloads),
            "trust_current_bundle": sum(self.ca.trusts_bundle(w.id) for w in workloads),
            "on_signing_root": sum(self.ca.on_signing_root(w.id) for w in workloads),
        }
        return web.json_response(info)

    async def rotate_root(self, request: web.Request) -> web.Response:
        try:
            self.ca.start_rotation()
        except RotationError as e:
            return web.json_response({"error": str(e)}, status=409)
        self.ca.advance([w.id for w in self.registry.workloads()])
        return web.json_response(self.ca.describe())

    async def trust_root(self, request: web.Request) -> web.Response:
        """Trust one more root mesh-wide (several replicas): every replica adds it to the trust
        bundle its proxies hold, and a replica may then be restarted to sign under it."""
        if not is_shared(self.store):
            return web.json_response({"error": _ONE_SERVER_TRUST}, status=409)
        body = await request.json()
        try:
            root = trusted_root(body.get("pem") if isinstance(body, dict) else None)
        except ValueError as e:
            return web.json_response({"error": f"pem: {e}"}, status=400)
        pem = root.public_bytes(serialization.Encoding.PEM).decode()
        roots = await asyncio.to_thread(self.store.add_ca_root, fingerprint(root), pem)
        self.ca.set_mesh_roots(roots)
        log.warning("root %s is now trusted mesh-wide", fingerprint(root)[:16])
        return web.json_response({"added": fingerprint(root), "roots": [r["fingerprint"] for r in roots]})

    async def untrust_root(self, request: web.Request) -> web.Response:
        """Stop trusting a root mesh-wide; refused while a replica signs under it or a proxy holds
        a certificate from it (its peers would then refuse that proxy)."""
        if not is_shared(self.store):
            return web.json_response({"error": _ONE_SERVER_TRUST}, status=409)
        wanted = request.match_info["fingerprint"].lower()
        matches = [r["fingerprint"] for r in self.store.ca_roots() if r["fingerprint"].startswith(wanted)]
        if len(wanted) < 8 or len(matches) != 1:
            known = ", ".join(r["fingerprint"][:16] for r in self.store.ca_roots())
            return web.json_response(
                {
                    "error": f"{wanted!r} names {len(matches)} of the trusted roots ({known}): "
                    "give at least 8 hex digits of one"
                },
                status=404,
            )
        [chosen] = matches
        replicas = self.replica.others() if self.replica is not None else []
        signing = [r["id"] for r in replicas if r.get("ca_root") == chosen]
        holding = sum(int(r.get("held_roots", {}).get(chosen, 0)) for r in replicas)
        if signing or holding:
            why = (
                f"replica(s) {', '.join(signing)} still sign under it: restart them with the new --ca-cert/--ca-key"
                if signing
                else f"{holding} proxies still hold a certificate from it; they renew from the new root on their next "
                "heartbeat"
            )
            return web.json_response({"error": f"root {chosen[:16]} is still in use: {why}"}, status=409)
        roots = await asyncio.to_thread(self.store.remove_ca_root, chosen)
        self.ca.set_mesh_roots(roots)
        log.warning("root %s is no longer trusted", chosen[:16])
        return web.json_response({"removed": chosen, "roots": [r["fingerprint"] for r in roots]})

    async def apply(self, request: web.Request) -> web.Response:
        source = request.query.get("source", "<request>")
        resources = parse_documents(await request.text(), source)
        await self._fetch_modules(resources, source)
        items = [(r.kind_key, r.namespace, r.name, r.api_version, r.metadata_dict(), r.spec_dict()) for r in resources]
        # metadata.resourceVersion, when given, is the version the writer read: a stale one is a 409.
        expected = {r.key: int(r.metadata.resource_version) for r in resources if r.metadata.resource_version}
        # In a worker thread: an etcd store that has lost quorum must not stall the loop serving xDS.
        results = await asyncio.to_thread(self.store.apply, items, expected or None)
        warnings = self._analysis(resources)
        return web.json_response(
            {
                "results": [_result(x.resource, x.action) for x in results],
                "revision": self.store.revision,
                "warnings": warnings,
            }
        )

    async def _fetch_modules(self, resources: list, source: str) -> None:
        """An extension's Wasm module is fetched and its sha256 checked before the extension is
        stored: a module that cannot be had is refused now, with its field, not failed on proxies."""
        if self.modules is None:
            return
        for r in resources:
            if r.kind not in ("TrafficExtension", "WasmPlugin"):
                continue
            wasm = r.spec.wasm if r.kind == "TrafficExtension" else r.spec.as_traffic_extension().wasm
            if wasm is None:
                continue
            try:
                await self.modules.check(wasm)
            except ModuleError as e:
                path = ("spec.wasm." if r.kind == "TrafficExtension" else "spec.") + e.field
                raise ValidationError(
                    f"{source}: {r.kind} {r.namespace}/{r.name}", [FieldError(path, str(e))]
                ) from None

    async def analyze(self, request: web.Request) -> web.Response:
        """What `lattice apply` would warn about for these documents, without storing anything."""
        resources = parse_documents(await request.text(), request.query.get("source", "<request>"))
        return web.json_response({"findings": self._analysis(resources)})

    async def authz_check(self, request: web.Request) -> web.Response:
        """The decision the destination's sidecar would make for a request, and the rule behind it."""
        body = await request.json()
        try:
            q = Question(
                source=str(body.get("from", "")),
                destination=str(body["to"]),
                method=str(body.get("method", "GET")),
                path=str(body.get("path", "/")),
                headers={str(k).lower(): str(v) for k, v in (body.get("headers") or {}).items()},
                namespace=str(body.get("namespace", "default")),
            )
            return web.json_response(check(self.pusher.snapshot, q))
        except KeyError as e:
            return web.json_response({"error": f"missing field {e.args[0]!r}"}, status=400)
        except CheckError as e:
            return web.json_response({"error": str(e)}, status=404)

    def _analysis(self, resources: list) -> list[dict]:
        # The mesh as last pushed (config and the registry's workloads), with `resources` in place
        # of their stored versions: what the mesh is, or will be at the next push, once they are
        # applied. No rebuild of everything stored for each apply.
        base = self.pusher.snapshot
        keys = {r.key for r in resources}
        changes = {}
        for kind, name in SNAPSHOT_FIELDS.items():
            mine = tuple(r for r in resources if r.kind_key == kind)
            if mine:
                changes[name] = tuple(r for r in getattr(base, name) if r.key not in keys) + mine
        snapshot = dataclasses.replace(base, **changes) if changes else base
        return [f.to_dict() for f in analyze(snapshot, resources, registry_known=True)]

    async def delete_documents(self, request: web.Request) -> web.Response:
        resources = parse_documents(await request.text(), request.query.get("source", "<request>"))
        gone = await asyncio.to_thread(self.store.delete, [r.key for r in resources])
        deleted = {(r.kind, r.namespace, r.name) for r in gone}
        results = [
            {"kind": k, "namespace": ns, "name": n, "action": "deleted" if (k, ns, n) in deleted else "not found"}
            for k, ns, n in (r.key for r in resources)
        ]
        return web.json_response({"results": results, "revision": self.store.revision})

    async def list_resources(self, request: web.Request) -> web.Response:
        info = kind_for(request.match_info["kind"])
        items = self.store.list(info.key, request.query.get("namespace") or None)
        return web.json_response({"items": [self._object(r) for r in items]})

    async def get_resource(self, request: web.Request) -> web.Response:
        info, ns, name = (
            kind_for(request.match_info["kind"]),
            request.match_info["namespace"],
            request.match_info["name"],
        )
        found = self.store.get(info.key, ns, name)
        if found is None:
            raise web.HTTPNotFound(
                text=json.dumps({"error": f"{info.key} {ns}/{name} not found"}), content_type="application/json"
            )
        return web.json_response(self._object(found))

    def _object(self, r: StoredResource) -> dict:
        """A stored resource as `lattice get` shows it, with the status the mesh computes for it
        (Gateway API kinds: Accepted, ResolvedRefs, Programmed), as a controller writes it back."""
        out = _object(r)
        status = self.pusher.snapshot.gateway_api.status.get((r.kind, r.namespace, r.name))
        return out | {"status": status} if status is not None else out

    async def delete_resource(self, request: web.Request) -> web.Response:
        info, ns, name = (
            kind_for(request.match_info["kind"]),
            request.match_info["namespace"],
            request.match_info["name"],
        )
        deleted = await asyncio.to_thread(self.store.delete, [(info.key, ns, name)])
        if not deleted:
            raise web.HTTPNotFound(
                text=json.dumps({"error": f"{info.key} {ns}/{name} not found"}), content_type="application/json"
            )
        return web.json_response({"results": [{"kind": info.key, "namespace": ns, "name": name, "action": "deleted"}]})

    async def list_workloads(self, request: web.Request) -> web.Response:
        return web.json_response({"items": [self._workload(w) for w in self.registry.workloads()]})

    async def status(self, request: web.Request) -> web.Response:
        snapshot = self.pusher.snapshot
        proxies = [self._proxy_status(w) for w in self.registry.workloads()]
        return web.json_response(
            {
                "server": {
                    "revision": self.store.revision,
                    "snapshot": snapshot.version,
                    "uptime_seconds": round(time.time() - self.started, 1),
                    "last_push_ms": round(self.pusher.last_push_seconds * 1000, 2),
                    "push_pending": self.pusher.pending,
                    "outbound_traffic_policy": snapshot.outbound_traffic_policy,
                    "expiry_warnings": [w.to_dict() for w in self.expiry_warnings()],
                },
                "proxies": proxies,
                "conflicts": snapshot.conflicts(),
                "store": await asyncio.to_thread(self.store.health),
                "replicas": self.replica.others() if self.replica is not None else [],
            }
        )

    async def list_traces(self, request: web.Request) -> web.Response:
        return list_response(self.traces, request.query)

    async def get_trace(self, request: web.Request) -> web.Response:
        return trace_response(self.traces, request.match_info["trace_id"])

    async def config_dump(self, request: web.Request) -> web.Response:
        workload = self._find(request.match_info["id"])
        url = f"http://{_host(workload.address)}:{workload.agent_port}/config_dump"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
                headers = {"Authorization": f"Bearer {self.ca.agent_key(workload.id)}"}
                async with session.get(url, params=request.query, headers=headers) as response:
                    return web.Response(
                        body=await response.read(), status=response.status, content_type="application/json"
                    )
        except (aiohttp.ClientError, TimeoutError) as e:
            raise web.HTTPBadGateway(
                text=json.dumps({"error": f"cannot reach the agent of {workload.id} at {url}: {e}"}),
                content_type="application/json",
            ) from e

    def _find(self, ref: str):
        """A workload by proxy id, or by workload name if that names exactly one."""
        exact = self.registry.get(ref)
        if exact is not None:
            return exact
        matches = [
            w for w in self.registry.workloads() if ref in (w.name, w.id.split(".")[0], f"{w.name}.{w.namespace}")
        ]
        if len(matches) == 1:
            return matches[0]
        detail = (
            f"{ref!r} matches {len(matches)} workloads: {', '.join(w.id for w in matches)}"
            if matches
            else f"no workload {ref!r}; see `lattice status`"
        )
        raise web.HTTPNotFound(text=json.dumps({"error": detail}), content_type="application/json")

    def _workload(self, w) -> dict:
        return {
            "id": w.id,
            "name": w.name,
            "namespace": w.namespace,
            "service": w.service,
            "version": w.version,
            "service_account": w.service_account,
            "labels": dict(w.labels),
            "address": w.address,
            "port": w.port,
            "app_port": w.app_port,
            "protocol": w.protocol,
            "healthy": w.healthy,
            "agent_port": w.agent_port,
            "outbound_port": w.outbound_port,
            "local_address": w.outbound_address,
            "capture": w.capture,
            "silent": self.registry.silent(w.id),
            "last_seen_seconds": round(self.registry.last_seen_age(w.id) or 0, 1),
        }

    def _proxy_status(self, w) -> dict:
        status = self.board.get(w.id)
        types = {}
        for type_url in TYPE_ORDER:
            t = status.types.get(type_url) if status else None
            if t is None and type_url in (EXTENSION_CONFIG, SECRET):
                continue  # asked for only by proxies whose listeners name an extension or a secret
            types[type_url.rsplit(".", 1)[-1]] = {
                "state": t.state if t else "NOT SENT",
                "sent": t.sent_version if t else "",
                "acked": t.acked_version if t else "",
                "error": t.nack if t else "",
                "rejected": t.nacked_version if t else "",  # the version the error is about
                "sent_in_all": {
                    "responses": t.responses if t else 0,
                    "resources": t.resources_sent if t else 0,
                    "bytes": t.bytes_sent if t else 0,
                },
            }
        held = self.ca.held.get(w.id)
        certificate = (
            {
                "identity": held.identity,
                "serial": held.serial,
                "expires": held.not_after,
                "root": held.root[:16],
                "bundle_version": held.bundle_version,
            }
            if held
            else None
        )
        return self._workload(w) | {
            "connected": w.id in self._connected(),
            "xds": status.protocol if status else "",
            "pushes": status.pushes if status else 0,
            "types": types,
            "certificate": certificate,
        }


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


_ONE_SERVER_TRUST = (
    "lattice ca trust is for several replicas on etcd; one server rotates its root with `lattice ca rotate-root` "
    "(or, for a plug-in CA, trusts new --ca-cert files at restart and keeps the old root trusted)"
)


def trusted_root(pem: object) -> x509.Certificate:
    """The one self-signed CA certificate `pem` holds; ValueError saying what is wrong otherwise."""
    if not isinstance(pem, str) or "BEGIN CERTIFICATE" not in pem:
        raise ValueError("a PEM certificate is required")
    certs = x509.load_pem_x509_certificates(pem.encode())
    if len(certs) != 1:
        raise ValueError(f"expected one root certificate, got {len(certs)}")
    [cert] = certs
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ValueError(
            f"{cert.subject.rfc4514_string()} is not a CA certificate (basicConstraints CA:FALSE or absent)"
        )
    if cert.issuer != cert.subject:
        raise ValueError(f"{cert.subject.rfc4514_string()} is issued by {cert.issuer.rfc4514_string()}: give its root")
    return cert


def _result(r: StoredResource, action: str) -> dict:
    return {"kind": r.kind, "namespace": r.namespace, "name": r.name, "action": action, "revision": r.revision}


def _object(r: StoredResource) -> dict:
    metadata = dict(r.metadata) | {
        "name": r.name,
        "namespace": r.namespace,
        "resourceVersion": str(r.revision),
        "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.created_at)),
    }
    return {
        "apiVersion": r.api_version,
        "kind": KINDS[r.kind].kind if r.kind in KINDS else r.kind,
        "metadata": metadata,
        "spec": r.spec,
    }


@web.middleware
async def _errors(request: web.Request, handler):
    try:
        return await handler(request)
    except ValidationError as e:
        return web.json_response({"error": str(e), "details": e.to_dict()}, status=400)
    except pydantic.ValidationError as e:
        problems = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        return web.json_response({"error": "invalid request: " + "; ".join(problems)}, status=400)
    except UnknownKindError as e:
        return web.json_response({"error": str(e)}, status=404)
    except StoreConflict as e:  # a stale metadata.resourceVersion: nothing was written
        return web.json_response({"error": str(e)}, status=409)
    except StoreUnavailable as e:  # etcd unreachable or without quorum: nothing was written
        log.error("store: %s", e)
        return web.json_response({"error": f"the store cannot take writes now: {e}"}, status=503)
    except StoreError as e:  # nothing was written: the store applies all or nothing
        log.error("store: %s", e)
        return web.json_response({"error": str(e)}, status=422)
    except json.JSONDecodeError as e:
        return web.json_response({"error": f"request body is not JSON: {e}"}, status=400)
    except UnicodeDecodeError as e:
        return web.json_response({"error": f"request body is not UTF-8 (byte {e.start}): {e.reason}"}, status=400)
    except RecursionError:
        return web.json_response({"error": "request body is nested too deeply"}, status=400)
