"""Gateway API `Gateway`s (of a class Lattice serves) as the Istio Gateways and gateway-bound
VirtualServices the gateway translator already serves, plus the `status` the spec defines.

This is how Istio implements the Gateway API, and Lattice follows it so one translator serves both:
- A Gateway whose `GatewayClass` names `lattice.dev/gateway-controller` becomes an Istio-shaped
  Gateway named `<name>-k8s-gateway`, one HTTP or HTTPS server per listener, selecting the gateway
  proxies started with `lattice gateway --gateway-class CLASS` (label `CLASS_LABEL`); a proxy started
  with `--gateway NAME` too (label `NAME_LABEL`) serves that Gateway alone (translate/gateway.py checks).
- TLSRoutes (on TLS listeners, `tls.mode: Passthrough`) and TCPRoutes (on TCP listeners) become
  gateway-bound VirtualServices with `tls` (by SNI: the route's hostnames met with the listener's)
  and `tcp` routes, one per (route, listener); backends in another namespace need a ReferenceGrant.
- An HTTPS listener's `certificateRefs` become the server's credentialName
  `kubernetes-gateway://NAMESPACE/NAME` (Istio's spelling); a secret in another namespace needs a
  ReferenceGrant there naming Gateways of this namespace and Secret, else the listener is not served
  and its ResolvedRefs says RefNotPermitted (InvalidCertificateRef while the secret does not exist).
- Routes attached to it (HTTPRoute, GRPCRoute; parentRefs of kind Gateway) are accepted by the
  listeners that allow their namespace and kind, whose port and `sectionName` they name and whose
  hostname meets theirs. Their rules become VirtualService rules (`mesh/gateway_api.py` converts
  them as for mesh routes, each match restricted to the listener's port), one VirtualService per
  (Gateway, hostname), ordered by Gateway API precedence: a host's own routes first, then those of
  routes with wildcard hostnames that cover it.
- A backend in another namespace than its route needs a `ReferenceGrant` there naming the route's
  kind and namespace; without one the backend gets no traffic (requests that only it could serve
  get 500) and the route's ResolvedRefs condition says RefNotPermitted.
- Status (Accepted, ResolvedRefs, Programmed) is computed here from the same snapshot, for
  `lattice get -o yaml` to show: what a Kubernetes controller would write back.

Pure: resources and workloads in, resources and status out.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Mapping

import pydantic

from lattice.api import Resource
from lattice.api.gateway import GatewaySpec as IstioGatewaySpec
from lattice.api.gateway_api_gateway import CONTROLLER_NAME, GROUP, Listener
from lattice.api.meta import ObjectMeta
from lattice.api.networking import VirtualServiceSpec
from lattice.mesh import gateway_api
from lattice.mesh.credentials import GATEWAY_API_PREFIX

CLASS_LABEL = "gateway.networking.k8s.io/gateway-class-name"
NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
SOURCE_ANNOTATION = "lattice.dev/gateway-api-gateway"  # "namespace/name" of the Gateway API Gateway
SUFFIX = "-k8s-gateway"
GATEWAY_KEY = f"Gateway.{GROUP}"


@dataclass(frozen=True)
class GatewayApiConfig:
    gateways: tuple[Resource, ...] = ()  # Istio-shaped Gateways
    virtual_services: tuple[Resource, ...] = ()  # bound to those Gateways
    status: Mapping[tuple[str, str, str], dict] = field(default_factory=dict)  # by Resource.key


@dataclass
class _Attached:
    """What one route contributes to one Gateway: its match entries per effective hostname."""

    gateway: Resource
    listeners: list[Listener]
    hostnames: list[str]


def convert(
    classes: Iterable[Resource],
    gateways: Iterable[Resource],
    routes: Iterable[Resource],
    grants: Iterable[Resource],
    workloads: Iterable,
    created: Mapping[tuple[str, str, str], float],
    domain: str,
    certificates: frozenset[tuple[str, str]] = frozenset(),
    l4_routes: Iterable[Resource] = (),
) -> GatewayApiConfig:
    """`certificates`: the (namespace, name) of every TLS secret the control plane keeps."""
    ours = {c.name for c in classes if c.spec.controller_name == CONTROLLER_NAME}
    status: dict[tuple[str, str, str], dict] = {}
    for c in classes:
        if c.name in ours:
            status[c.key] = {"conditions": [_condition("Accepted", True, "Accepted", "served by `lattice gateway`")]}
    served = {(g.namespace, g.name): g for g in gateways if g.spec.gateway_class_name in ours}
    grants = tuple(grants)
    attached_count: dict[tuple[str, str, str], int] = defaultdict(int)
    groups: dict[tuple[str, str, str], list] = defaultdict(list)  # (gw ns, gw name, host) -> entries
    for route in routes:
        parents = []
        route = _permitted_backends(route, grants, domain)
        for ref in route.spec.parent_refs:
            if ref.is_service:
                continue
            gw = served.get((ref.namespace or route.namespace, ref.name))
            condition = _attach(route, ref, gw, groups, attached_count, created, domain)
            parents.append(_parent_status(ref, condition, _resolved_refs(route, grants)))
        if parents:
            status[route.key] = {"parents": parents}
    l4_services = []
    for route in l4_routes:
        parents = []
        for ref in route.spec.parent_refs:
            gw = served.get((ref.namespace or route.namespace, ref.name))
            condition, vs = _attach_l4(route, ref, gw, attached_count, grants, domain)
            l4_services.extend(vs)
            parents.append(_parent_status(ref, condition, _resolved_refs(route, grants)))
        status[route.key] = {"parents": parents}
    proxies = [w for w in workloads if getattr(w, "kind", "") == "gateway" and w.healthy]
    istio_gateways = []
    for gw in gateways:
        if gw.spec.gateway_class_name not in ours:
            status[gw.key] = {"conditions": [_pending(gw)]}
            continue
        converted = _istio_gateway(gw, grants)
        if converted is not None:  # None: every listener's certificate is refused
            istio_gateways.append(converted)
        status[gw.key] = _gateway_status(gw, proxies, attached_count, grants, certificates)
    vs = [_virtual_service(key, entries) for key, entries in sorted(_with_wildcards(groups).items())]
    vs.extend(l4_services)
    return GatewayApiConfig(tuple(istio_gateways), tuple(v for v in vs if v is not None), MappingProxyType(status))


# --- routes -----------------------------------------------------------------------------------


def _attach(route, ref, gw, groups, attached_count, created, domain) -> dict:
    """Attach `route` to `gw` through `ref`; the Accepted condition of that parent."""
    if gw is None:
        return _condition("Accepted", False, "NoMatchingParent", "no Gateway of a class Lattice serves has this name")
    listeners = [
        listener
        for listener in gw.spec.listeners
        if (ref.section_name in (None, listener.name)) and ref.port in (None, listener.port)
    ]
    allowed = [x for x in listeners if _allows(x, gw, route)]
    if not allowed:
        return _condition(
            "Accepted", False, "NotAllowedByListeners", "no listener allows this route's kind and namespace"
        )
    matched = [(x, hosts) for x in allowed if (hosts := _hostnames(route.spec.hostnames, x.hostname)) is not None]
    if not matched:
        return _condition(
            "Accepted", False, "NoMatchingListenerHostname", "no listener hostname intersects the route's hostnames"
        )
    age = created.get(route.key, 0.0)
    for listener, hosts in matched:
        attached_count[(gw.namespace, gw.name, listener.name)] += 1
        entries = gateway_api.entries_for(route, listener.port, age, domain)
        for host in hosts:
            groups[(gw.namespace, gw.name, host)].extend((0, e, route) for e in entries)
    return _condition("Accepted", True, "Accepted", "")


def _attach_l4(route, ref, gw, attached_count, grants, domain) -> tuple[dict, list[Resource]]:
    """A TLSRoute (by SNI) or TCPRoute on `gw`'s TLS or TCP listeners: its Accepted condition and
    the gateway-bound VirtualService (`tls` or `tcp` routes) serving it on each listener."""
    if gw is None:
        return _condition(
            "Accepted", False, "NoMatchingParent", "no Gateway of a class Lattice serves has this name"
        ), []
    listeners = [
        x
        for x in gw.spec.listeners
        if ref.section_name in (None, x.name) and ref.port in (None, x.port) and _allows(x, gw, route)
    ]
    if not listeners:
        return _condition(
            "Accepted", False, "NotAllowedByListeners", "no listener allows this route's kind and namespace"
        ), []
    hostnames = getattr(route.spec, "hostnames", [])
    matched = [(x, hosts) for x in listeners if (hosts := _hostnames(hostnames, x.hostname)) is not None]
    if not matched:
        return _condition(
            "Accepted", False, "NoMatchingListenerHostname", "no listener hostname intersects the route's hostnames"
        ), []
    destinations = [
        {"destination": {"host": f"{b.name}.{b.namespace or route.namespace}.svc.{domain}", "port": {"number": b.port}}}
        | ({"weight": b.weight} if len(route.spec.rules[0].backend_refs) > 1 else {})
        for b in route.spec.rules[0].backend_refs
        if _permitted(route, b, grants) and b.weight > 0
    ]
    out = []
    for listener, hosts in matched:
        attached_count[(gw.namespace, gw.name, listener.name)] += 1
        if not destinations:
            continue  # refused backends: the connection has nowhere to go, as the spec says
        section = "tls" if route.kind == "TLSRoute" else "tcp"
        match = {"port": listener.port} | ({"sniHosts": hosts} if section == "tls" else {})
        spec = {
            "hosts": hosts if section == "tls" else ["*"],
            "gateways": [f"{gw.namespace}/{gw.name}{SUFFIX}"],
            section: [{"match": [match], "route": destinations}],
        }
        meta = ObjectMeta(
            name=f"{gw.name}{SUFFIX}.{listener.name}.{route.kind.lower()}.{route.namespace}.{route.name}",
            namespace=gw.namespace,
            annotations={"lattice.dev/routes": f"{route.namespace}/{route.name}"},
        )
        try:
            out.append(
                Resource("networking.istio.io/v1", "VirtualService", meta, VirtualServiceSpec.model_validate(spec))
            )
        except pydantic.ValidationError:
            continue
    return _condition("Accepted", True, "Accepted", ""), out


def _allows(listener: Listener, gw: Resource, route: Resource) -> bool:
    namespaces = listener.allowed_routes.namespaces.from_
    return route.kind in listener.route_kinds() and (namespaces == "All" or route.namespace == gw.namespace)


def _hostnames(route_hosts: list[str], listener_host: str | None) -> list[str] | None:
    """The hostnames a route serves on a listener ('*' for any), or None when they do not meet."""
    if not route_hosts:
        return [listener_host or "*"]
    if listener_host is None:
        return list(route_hosts)
    out = [h for h in (_intersect(r, listener_host) for r in route_hosts) if h]
    return out or None


def _intersect(a: str, b: str) -> str | None:
    if a == b or (a.startswith("*.") and b.endswith(a[1:])):
        return b
    if b.startswith("*.") and a.endswith(b[1:]):
        return a
    return None


def _permitted_backends(route: Resource, grants: tuple[Resource, ...], domain: str) -> Resource:
    """`route` with every backend its namespace may not refer to given no traffic (weight 0)."""
    rules = []
    changed = False
    for rule in route.spec.rules:
        refs = []
        for b in rule.backend_refs:
            if not _permitted(route, b, grants):
                b, changed = b.model_copy(update={"weight": 0}), True
            refs.append(b)
        rules.append(rule.model_copy(update={"backend_refs": refs}))
    if not changed:
        return route
    return Resource(route.api_version, route.kind, route.metadata, route.spec.model_copy(update={"rules": rules}))


def _permitted(route: Resource, backend, grants: tuple[Resource, ...]) -> bool:
    target = backend.namespace or route.namespace
    if target == route.namespace:
        return True
    return any(
        g.namespace == target and g.spec.allows(GROUP, route.kind, route.namespace, "", "Service", backend.name)
        for g in grants
    )


def _resolved_refs(route: Resource, grants: tuple[Resource, ...]) -> dict:
    refused = sorted(
        f"{b.namespace}/{b.name}"
        for rule in route.spec.rules
        for b in rule.backend_refs
        if not _permitted(route, b, grants)
    )
    if refused:
        return _condition(
            "ResolvedRefs",
            False,
            "RefNotPermitted",
            f"no ReferenceGrant lets {route.kind}s of namespace {route.namespace} refer to "
            f"Service {', '.join(refused)}",
        )
    return _condition("ResolvedRefs", True, "ResolvedRefs", "")


def _parent_status(ref, accepted: dict, resolved: dict) -> dict:
    parent = {"group": ref.group or GROUP, "kind": ref.kind or "Gateway", "name": ref.name}
    for name, value in (("namespace", ref.namespace), ("sectionName", ref.section_name), ("port", ref.port)):
        if value is not None:
            parent[name] = value
    return {"parentRef": parent, "controllerName": CONTROLLER_NAME, "conditions": [accepted, resolved]}


def _with_wildcards(groups: dict) -> dict:
    """Each host's entries followed by those of the wildcard hostnames that cover it: a request
    for the host meets those rules too, after its own (the most specific hostname wins first)."""
    out = {}
    for (ns, name, host), entries in groups.items():
        extra = [
            (1, e, r)
            for (ns2, name2, other), more in groups.items()
            if (ns2, name2) == (ns, name) and other != host and _covers(other, host)
            for _, e, r in more
        ]
        out[(ns, name, host)] = entries + extra
    return out


def _covers(pattern: str, host: str) -> bool:
    return pattern == "*" or (pattern.startswith("*.") and host.endswith(pattern[1:]) and host != pattern)


def _virtual_service(key: tuple[str, str, str], entries: list) -> Resource | None:
    namespace, name, host = key
    ordered = sorted(entries, key=lambda x: (x[0], x[1].rank))
    spec = {
        "hosts": [host],
        "gateways": [f"{namespace}/{name}{SUFFIX}"],
        "http": [rule for _, entry, _ in ordered for rule in entry.rules],
    }
    routes = sorted({f"{r.namespace}/{r.name}" for _, _, r in entries})
    # One per (Gateway, host): named after both so that each is its own VirtualService.
    label = host.replace("*", "wildcard")
    meta = ObjectMeta(
        name=f"{name}{SUFFIX}.{label}", namespace=namespace, annotations={"lattice.dev/routes": ",".join(routes)}
    )
    try:
        return Resource("networking.istio.io/v1", "VirtualService", meta, VirtualServiceSpec.model_validate(spec))
    except pydantic.ValidationError:
        return None


# --- gateways ---------------------------------------------------------------------------------


def _istio_gateway(gw: Resource, grants: tuple[Resource, ...]) -> Resource | None:
    servers = [
        {
            "port": {"number": x.port, "protocol": x.protocol, "name": x.name},
            "hosts": [f"*/{x.hostname or '*'}"],
            "name": x.name,
        }
        | ({"tls": {"mode": "SIMPLE", "credentialName": "certificate-ref"}} if x.protocol == "HTTPS" else {})
        | ({"tls": {"mode": "PASSTHROUGH"}} if x.protocol == "TLS" else {})
        for x in gw.spec.listeners
        if _certificate_refused(gw, x, grants) is None
    ]
    if not servers:
        return None
    spec = IstioGatewaySpec.model_validate({"selector": {CLASS_LABEL: gw.spec.gateway_class_name}, "servers": servers})
    # A listener's certificateRefs, as Istio converts them: kubernetes-gateway://NAMESPACE/NAME.
    refs = {x.name: _certificate(gw, x) for x in gw.spec.listeners if x.protocol == "HTTPS"}
    spec = spec.model_copy(
        update={
            "servers": [
                s.model_copy(update={"tls": s.tls.model_copy(update={"credential_name": refs[s.name]})})
                if s.tls is not None and s.name in refs
                else s
                for s in spec.servers
            ]
        }
    )
    meta = ObjectMeta(
        name=f"{gw.name}{SUFFIX}", namespace=gw.namespace, annotations={SOURCE_ANNOTATION: f"{gw.namespace}/{gw.name}"}
    )
    return Resource("networking.istio.io/v1", "Gateway", meta, spec)


def _certificate(gw: Resource, listener: Listener) -> str:
    namespace, name = _certificate_key(gw, listener)
    return f"{GATEWAY_API_PREFIX}{namespace}/{name}"


def _certificate_key(gw: Resource, listener: Listener) -> tuple[str, str]:
    assert listener.tls is not None
    ref = listener.tls.certificate_refs[0]
    return ref.namespace or gw.namespace, ref.name


def _certificate_refused(gw: Resource, listener: Listener, grants: tuple[Resource, ...]) -> str | None:
    """Why a listener's certificate may not be used (another namespace's, without a ReferenceGrant)."""
    if listener.tls is None or not listener.tls.certificate_refs:
        return None
    namespace, name = _certificate_key(gw, listener)
    if namespace == gw.namespace or any(
        g.namespace == namespace and g.spec.allows(GROUP, "Gateway", gw.namespace, "", "Secret", name) for g in grants
    ):
        return None
    return f"no ReferenceGrant in namespace {namespace} lets Gateways of namespace {gw.namespace} use Secret {name}"


def _listener_refs(gw: Resource, listener: Listener, grants, certificates: frozenset) -> dict:
    refused = _certificate_refused(gw, listener, grants)
    if refused:
        return _condition("ResolvedRefs", False, "RefNotPermitted", refused)
    if listener.protocol == "HTTPS" and _certificate_key(gw, listener) not in certificates:
        namespace, name = _certificate_key(gw, listener)
        return _condition(
            "ResolvedRefs",
            False,
            "InvalidCertificateRef",
            f"no TLS secret {namespace}/{name}: make it with `lattice secret create tls {name} -n {namespace}`",
        )
    return _condition("ResolvedRefs", True, "ResolvedRefs", "")


def serves(proxy_labels: Mapping[str, str], gateway: Resource, proxy_namespace: str) -> bool:
    """Whether a proxy started with `--gateway NAME` may serve `gateway` (one converted from the
    Gateway API): only the Gateway it names, in its own namespace. Other Gateways are unaffected."""
    source = gateway.metadata.annotations.get(SOURCE_ANNOTATION)
    wanted = proxy_labels.get(NAME_LABEL)
    return source is None or wanted is None or source == f"{proxy_namespace}/{wanted}"


def _gateway_status(gw: Resource, proxies: list, attached: Mapping, grants=(), certificates=frozenset()) -> dict:
    mine = [p for p in proxies if _proxy_serves(p, gw)]
    programmed = (
        _condition("Programmed", True, "Programmed", f"served by {', '.join(sorted(p.id for p in mine))}")
        if mine
        else _condition(
            "Programmed",
            False,
            "NoResources",
            f"no healthy `lattice gateway --gateway-class {gw.spec.gateway_class_name}` is running",
        )
    )
    listeners = [
        {
            "name": x.name,
            "supportedKinds": [{"group": GROUP, "kind": k} for k in x.route_kinds()],
            "attachedRoutes": attached.get((gw.namespace, gw.name, x.name), 0),
            "conditions": [
                _condition("Accepted", True, "Accepted", ""),
                _listener_refs(gw, x, grants, certificates),
                {**programmed, "message": ""},
            ],
        }
        for x in gw.spec.listeners
    ]
    out = {"conditions": [_condition("Accepted", True, "Accepted", ""), programmed], "listeners": listeners}
    addresses = sorted({p.address for p in mine})
    if addresses:
        out["addresses"] = [{"type": "IPAddress", "value": a} for a in addresses]
    return out


def _proxy_serves(proxy, gw: Resource) -> bool:
    labels = dict(proxy.labels)
    if labels.get(CLASS_LABEL) != gw.spec.gateway_class_name:
        return False
    return NAME_LABEL not in labels or (proxy.namespace, labels[NAME_LABEL]) == (gw.namespace, gw.name)


def _pending(gw: Resource) -> dict:
    return _condition(
        "Accepted",
        None,
        "Pending",
        f"no GatewayClass {gw.spec.gateway_class_name!r} with controllerName {CONTROLLER_NAME} exists",
    )


def _condition(kind: str, ok: bool | None, reason: str, message: str) -> dict:
    status = "Unknown" if ok is None else ("True" if ok else "False")
    return {"type": kind, "status": status, "reason": reason, "message": message}
