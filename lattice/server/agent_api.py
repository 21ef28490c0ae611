"""The agents' API (TLS): certificates for join tokens or current certificates, and registration.

An agent with nothing but a join token fetches the trust bundle (public), checks it against the
root pin in its token, and from then on talks TLS verified against that bundle. Its first
certificate costs it the token; renewals are paid with the certificate it holds. Registration,
heartbeats and deregistration need a certificate whose identity is the workload's own.

Redeeming a token leaves a grant for the proxy in the store (the token, the identity, the services
it may serve, the serials signed since). Renewals and registrations stand on it: a revoked token
or identity revokes its grants, so the proxy can neither renew nor register again, and its
certificates go on the CRL that heartbeats announce (`crl_version`) and `/agent/v1/crl` serves.
"""

from __future__ import annotations

import json
import logging
import ssl
import tempfile
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from pathlib import Path

import pydantic
from aiohttp import web

from lattice.api.registration import Registration
from lattice.identity import CsrRefused, SpiffeId, TokenError, TokenRecord, parse_token
from lattice.server import limits
from lattice.identity import check_token as token_check
from lattice.registry import Registry
from lattice.server import placement
from lattice.server.ca import CaManager
from lattice.server.metrics import ControlPlaneMetrics
from lattice.server.modules import ModuleCache
from lattice.server.traces import TraceStore, receive
from lattice.store import StoreBackend, StoreError

log = logging.getLogger("lattice.agent-api")
MAX_BODY = 64 << 10


class AgentApi:
    def __init__(
        self,
        ca: CaManager,
        store: StoreBackend,
        registry: Registry,
        xds_address: str = "",
        metrics: ControlPlaneMetrics | None = None,
        traces: TraceStore | None = None,
        modules: ModuleCache | None = None,
        callers_hold_drain: Callable[[str], bool] = lambda workload_id: True,
    ) -> None:
        self.ca, self.store, self.registry = ca, store, registry
        self.callers_hold_drain = callers_hold_drain  # server/drain.py: may a draining workload close?
        self.traces = traces if traces is not None else TraceStore()  # the embedded trace collector
        self.metrics = metrics or ControlPlaneMetrics()
        self.modules = modules  # Wasm modules the control plane holds, by digest
        self.xds_address = xds_address  # set once the gRPC port is bound
        # This replica first, then the others (lattice.server.replicas.Replica.others); set by the server.
        self.replica_list: Callable[[], list[dict]] = lambda: []
        self._context: ssl.SSLContext | None = None
        self._context_key: tuple | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[limits.bounded_body, _errors])
        r = app.router
        r.add_get("/agent/v1/bundle", self.bundle)
        r.add_get("/agent/v1/replicas", self.replicas)
        r.add_post("/agent/v1/certificate", self.certificate)
        r.add_put("/agent/v1/workloads/{id}", self.register)
        r.add_post("/agent/v1/workloads/{id}/heartbeat", self.heartbeat)
        r.add_delete("/agent/v1/workloads/{id}", self.deregister)
        r.add_post("/agent/v1/traces", self.traces_in)
        r.add_get("/agent/v1/modules/{digest}", self.module)
        r.add_get("/agent/v1/crl", self.crl)
        return app

    # --- TLS: the server certificate and the client roots follow renewals and root rotation ---

    def ssl_context(self) -> ssl.SSLContext:
        """The listening context; each handshake switches to the current one (see `_current`)."""
        context = self._current()
        context.sni_callback = self._choose
        return context

    def _choose(self, connection: ssl.SSLObject, server_name: str | None, _context) -> None:
        connection.context = self._current()

    def _current(self) -> ssl.SSLContext:
        chain, key = self.ca.server_credentials()
        wanted = (chain, self.ca.bundle_version)
        if self._context is None or self._context_key != wanted:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            with tempfile.TemporaryDirectory() as tmp:  # ssl loads keys from files only
                cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
                cert_file.write_bytes(chain)
                key_file.touch(mode=0o600)
                key_file.write_bytes(key)
                context.load_cert_chain(cert_file, key_file)
            context.load_verify_locations(cadata=self.ca.bundle_pem.decode())
            context.verify_mode = ssl.CERT_OPTIONAL  # a token-holder has no certificate yet
            context.sni_callback = self._choose
            self._context, self._context_key = context, wanted
        return self._context

    # --- handlers -----------------------------------------------------------------------

    async def bundle(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "bundle": self.ca.bundle_pem.decode(),
                "bundle_version": self.ca.bundle_version,
                "trust_domain": self.ca.trust_domain,
                "xds": placement.xds_for(self.xds_address, _arrived_at(request)),
            }
        )

    async def replicas(self, request: web.Request) -> web.Response:
        """Every control-plane replica's agent API and xDS addresses, for agents to fail over to."""
        self._require_peer(request)
        here = _arrived_at(request)
        listed = [
            {"agent": r.get("agent", ""), "xds": placement.xds_for(r.get("xds", ""), here if i == 0 else None)}
            for i, r in enumerate(self.replica_list())
        ]
        return web.json_response({"replicas": listed})

    async def certificate(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "the body must be a JSON object"}), content_type="application/json"
            )
        csr, proxy_id = str(body.get("csr", "")), str(body.get("proxy_id", ""))
        self.metrics.csrs.inc()
        identity, token = self._csr_identity(request, proxy_id, str(body.get("reattest_from", "")))
        try:
            issued = self.ca.sign(csr.encode(), identity, proxy_id)
        except CsrRefused as e:  # counted by the CA manager too, by reason
            self.metrics.csr_refused(e.reason)
            log.warning("refused a CSR for %s (%s): %s", identity, e.reason, e)
            raise _refuse(403, str(e), reason=e.reason) from None
        if token is not None:
            self.store.put_grant(proxy_id, _grant(proxy_id, token, time.time()))
        self.store.record_serial(proxy_id, f"{issued.serial:x}", issued.not_after.timestamp())
        self.metrics.issued.inc()
        log.info(
            "issued %s to %s (serial %x, until %s)",
            identity,
            proxy_id,
            issued.serial,
            issued.not_after.isoformat(timespec="seconds"),
        )
        return web.json_response(
            {
                "chain": issued.chain_pem.decode(),
                "bundle": self.ca.bundle_pem.decode(),
                "bundle_version": self.ca.bundle_version,
                "identity": str(identity),
                "root": issued.root_fingerprint,
                "xds": placement.xds_for(self.xds_address, _arrived_at(request)),
                "agent_key": self.ca.agent_key(proxy_id),  # what its port asks the control plane for
            }
        )

    def _csr_identity(
        self, request: web.Request, proxy_id: str, reattest_from: str = ""
    ) -> tuple[SpiffeId, TokenRecord | None]:
        """The identity a CSR is for: the caller's certificate's (while its grant stands) or join
        token's, if it may have one for `proxy_id`; and the token, when one was redeemed."""
        try:
            peer = _peer(request, self.ca.trust_domain)
            token = None
            if peer is not None:
                identity = peer
            else:
                token = self._redeem(request)
                identity = SpiffeId(self.ca.trust_domain, token.namespace, token.service_account)
            if not proxy_id.endswith(f".{identity.namespace}"):
                raise _refuse(
                    403, f"proxy id {proxy_id!r} must end with .{identity.namespace}, the namespace of {identity}"
                )
            self._check_owner(proxy_id, identity)
            if peer is not None:
                if reattest_from:
                    self._carry_grant(request, reattest_from, proxy_id, identity)
                self._granted(proxy_id, identity)
        except web.HTTPException:
            self.metrics.authentication_failures.inc()
            raise
        return identity, token

    def _carry_grant(self, request: web.Request, previous: str, proxy_id: str, identity: SpiffeId) -> None:
        """Re-attestation: a restarted agent (agent/kept_identity.py) pays its first CSR for its new
        proxy id with the certificate it kept from `previous`. If that certificate was signed under
        `previous`'s standing grant, the grant carries over (token, services, and so revocation)."""
        if previous == proxy_id or self.store.get_grant(proxy_id) is not None:
            return
        old = self.store.get_grant(previous)
        serial = _peer_serial(request)
        if (
            old is None
            or old.get("revoked_at") is not None
            or (old.get("namespace"), old.get("service_account")) != (identity.namespace, identity.service_account)
            or serial not in {s.get("serial") for s in old.get("serials", ())}
        ):
            return  # no grant to carry: `_granted` refuses, saying so
        self.store.put_grant(
            proxy_id,
            {**old, "proxy_id": proxy_id, "granted_at": time.time(), "serials": [], "reattested_from": previous},
        )
        log.info("%s re-attested as %s with the certificate of %s", identity, proxy_id, previous)

    def _granted(self, proxy_id: str, identity: SpiffeId) -> dict:
        """The proxy's standing grant for `identity`, or a refusal saying how to get one."""
        grant = self.store.get_grant(proxy_id)
        if grant is None or (grant.get("namespace"), grant.get("service_account")) != (
            identity.namespace,
            identity.service_account,
        ):
            raise _refuse(403, f"{identity} holds no grant for proxy {proxy_id}: join with a token for it first")
        if grant.get("revoked_at") is not None:
            raise _refuse(
                403,
                f"the grant of proxy {proxy_id} ({identity}) was revoked: join again with a new token",
                reason="revoked",
            )
        return grant

    def _redeem(self, request: web.Request) -> TokenRecord:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _refuse(
                401, "no credential: present a join token (`lattice token create`) or a current workload certificate"
            )
        try:
            parsed = parse_token(token.strip())
            record = TokenRecord.from_dict(
                self.store.consume_token(
                    parsed.id, lambda r: token_check(parsed, TokenRecord.from_dict(r) if r else None, time.time())
                )
            )
        except TokenError as e:
            self.ca.refused["token"] += 1
            log.warning("refused a join token: %s", e)
            raise _refuse(401, f"join token refused: {e}") from None
        return record

    async def register(self, request: web.Request) -> web.Response:
        identity = self._require_peer(request)
        registration = Registration.model_validate(await request.json() | {"id": request.match_info["id"]})
        if (registration.namespace, registration.service_account) != (identity.namespace, identity.service_account):
            raise _refuse(
                403,
                f"{identity} may not register a workload of service account "
                f"{registration.namespace}/{registration.service_account}",
            )
        self._check_owner(registration.id, identity)
        grant = self._granted(registration.id, identity)
        if registration.service not in grant.get("services", ()):
            allowed = ", ".join(grant.get("services", ())) or "none"
            raise _refuse(
                403,
                f"{identity} may not serve {registration.service!r}: its join token allows {allowed}; "
                f"mint one with `lattice token create --service-account {identity.service_account} "
                f"-n {identity.namespace} --service {registration.service}`",
            )
        self._place(request, registration, await self._gone(registration))
        workload = self.registry.register(registration)
        return web.json_response({"id": workload.id})

    async def _gone(self, registration: Registration) -> set[str]:
        """Workloads at this registration's address and port, of its identity, whose agent is gone
        (its port refuses connections): a restart of the same workload, after a crash or a kill,
        takes their place at once instead of waiting for them to fall silent."""
        same = [
            w
            for w in placement.conflicts(registration, self.registry.workloads())
            if (w.namespace, w.service_account) == (registration.namespace, registration.service_account)
        ]
        return {w.id for w in same if not await placement.agent_listening(w.address, w.agent_port)}

    def _place(self, request: web.Request, registration: Registration, gone: AbstractSet[str] = frozenset()) -> None:
        """An address its peers reach, of the agent's own host, and no live workload's already."""
        try:
            placement.check_address(registration, request.remote, _arrived_at(request))
            for holder in placement.conflicts(registration, self.registry.workloads()):
                if holder.id not in gone and not self.registry.silent(holder.id):
                    raise placement.taken(registration, holder)
                why = "its agent is gone" if holder.id in gone else "silent"
                log.info("workload %s replaces %s (%s) at %s", registration.id, holder.id, why, registration.address)
                self.registry.deregister(holder.id)
        except placement.PlacementRefused as e:
            log.warning("refused to register %s: %s", registration.id, e)
            raise _refuse(e.status, str(e)) from None

    async def heartbeat(self, request: web.Request) -> web.Response:
        workload_id = self._owned(request)
        try:
            self._granted(workload_id, self._require_peer(request))
        except web.HTTPException:
            self.ca.forget(workload_id)
            self.registry.deregister(workload_id)
            raise
        body = await request.json()
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "the body must be a JSON object"}), content_type="application/json"
            )
        draining = bool(body.get("draining"))
        if not self.registry.heartbeat(workload_id, bool(body.get("healthy")), draining):
            raise _refuse(404, "unknown workload; register again")
        answer = self.ca.report(workload_id, int(body.get("bundle_version", 0)), body.get("certificate"))
        self.ca.advance([w.id for w in self.registry.workloads()])
        if draining:
            answer["callers_hold_drain"] = self.callers_hold_drain(workload_id)
        return web.json_response(
            {"ok": True, **answer, "bundle_version": self.ca.bundle_version, "crl_version": self.ca.crl_version}
        )

    async def crl(self, request: web.Request) -> web.Response:
        """The revocation list sidecars check peers against (empty while nothing is revoked)."""
        self._require_peer(request)
        return web.json_response({"crl": self.ca.crl_pem().decode(), "crl_version": self.ca.crl_version})

    async def deregister(self, request: web.Request) -> web.Response:
        workload_id = self._owned(request)
        self.ca.forget(workload_id)
        return web.json_response({"deregistered": self.registry.deregister(workload_id)})

    @limits.streams_body  # up to traces.MAX_BODY, more than this app's client_max_size
    async def traces_in(self, request: web.Request) -> web.Response:
        """Spans from a workload's Envoy, forwarded by its agent (server/traces.py)."""
        return await receive(request, self.traces, str(self._require_peer(request)))

    async def module(self, request: web.Request) -> web.StreamResponse:
        """A Wasm module by its digest, for a workload's agent to hand its Envoy (agent/modules.py)."""
        self._require_peer(request)
        path = self.modules.path(request.match_info["digest"]) if self.modules is not None else None
        if path is None:
            raise _refuse(404, "the control plane holds no module with that sha256")
        return web.FileResponse(path, headers={"Content-Type": "application/wasm"})

    def _require_peer(self, request: web.Request) -> SpiffeId:
        identity = _peer(request, self.ca.trust_domain)
        if identity is None:
            raise _refuse(401, "a workload certificate is required: get one with a join token first")
        return identity

    def _owned(self, request: web.Request) -> str:
        """The workload id in the path, if the caller's certificate is that workload's identity."""
        workload_id = request.match_info["id"]
        self._check_owner(workload_id, self._require_peer(request))
        return workload_id

    def _check_owner(self, workload_id: str, identity: SpiffeId) -> None:
        """A registered workload id belongs to its identity: nobody else may take it over."""
        workload = self.registry.get(workload_id)
        if workload is not None and (workload.namespace, workload.service_account) != (
            identity.namespace,
            identity.service_account,
        ):
            raise _refuse(403, f"{identity} does not own workload {workload_id}")


def _arrived_at(request: web.Request) -> str | None:
    """The control plane's own address the agent's connection reached."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return sockname[0] if isinstance(sockname, tuple) else None


def _grant(proxy_id: str, token: TokenRecord, now: float) -> dict:
    return {
        "proxy_id": proxy_id,
        "token_id": token.id,
        "namespace": token.namespace,
        "service_account": token.service_account,
        "services": list(token.services),
        "granted_at": now,
        "serials": [],
        "revoked_at": None,
    }


def _peer_serial(request: web.Request) -> str:
    """The verified client certificate's serial, as the store records serials (lowercase hex)."""
    cert = request.transport.get_extra_info("peercert") if request.transport else None
    try:
        return format(int((cert or {}).get("serialNumber", ""), 16), "x")
    except ValueError:
        return ""


def _peer(request: web.Request, trust_domain: str) -> SpiffeId | None:
    """The SPIFFE identity of the verified client certificate, if one was presented."""
    cert = request.transport.get_extra_info("peercert") if request.transport else None
    for kind, value in (cert or {}).get("subjectAltName", ()):
        if kind == "URI":
            try:
                identity = SpiffeId.parse(value)
            except ValueError:
                continue
            if identity.trust_domain == trust_domain:
                return identity
    return None


def _refuse(status: int, message: str, **extra) -> web.HTTPException:
    kinds = {
        400: web.HTTPBadRequest,
        401: web.HTTPUnauthorized,
        403: web.HTTPForbidden,
        404: web.HTTPNotFound,
        409: web.HTTPConflict,
    }
    return kinds[status](text=json.dumps({"error": message, **extra}), content_type="application/json")


@web.middleware
async def _errors(request: web.Request, handler):
    try:
        return await handler(request)
    except pydantic.ValidationError as e:
        problems = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        return web.json_response({"error": "invalid registration: " + "; ".join(problems)}, status=400)
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        return web.json_response({"error": f"bad request body: {e}"}, status=400)
    except RecursionError:
        return web.json_response({"error": "bad request body: nested too deeply"}, status=400)
    except StoreError as e:  # etcd unreachable or without quorum: nothing recorded, the agent retries
        log.error("store: %s", e)
        return web.json_response({"error": f"the control plane cannot record this now: {e}"}, status=503)
