"""Gateway API mesh routes (HTTPRoute, GRPCRoute) as the VirtualService-shaped tables sidecars apply.

This is how Istio implements GAMMA, and Lattice follows it so one translator serves both APIs:
- Every route attached to a Service becomes VirtualService rules for that Service's host, one rule
  per match. The routes of one kind in one namespace that attach to one Service merge into one
  table, ordered by Gateway API precedence rather than VirtualService's "first listed wins": for
  HTTPRoute an Exact path, then the longest prefix, then a method match, then the most header
  matches, then the most query matches; for GRPCRoute the longest service, then the longest
  method, then the most header matches; ties go to the oldest route, then the first by
  namespace/name, then to list order.
- The table is validated as a VirtualService (`VirtualServiceSpec`), so what the translator reads
  is exactly what a hand-written VirtualService would be.
- A table competes with VirtualServices for its host as Istio's converted routes do: sidecars
  apply one per host, the oldest (its routes' oldest creation time). The loser is named in
  `conflicts()`, which `lattice status` shows.
- A route in another namespace than its Service (a consumer route) applies only to clients in
  its own namespace, and there ahead of the Service's own routes (GEP-1426).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping

import pydantic

from lattice.api import Resource
from lattice.api.gateway_api import (
    CORS,
    GRPCRouteMatch,
    GRPCRouteRule,
    HeaderModifier,
    HTTPRouteMatch,
    HTTPRouteRule,
    RequestMirror,
    RequestRedirect,
    ValueMatch,
)
from lattice.api.durations import parse_duration
from lattice.api.meta import ObjectMeta
from lattice.api.networking import PREFIX_REDIRECT, VirtualServiceSpec
from lattice.mesh.hosts import fqdn

ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")
_PATH_RANK = {"Exact": 3, "PathPrefix": 2, "RegularExpression": 1}
# Istio's default retry conditions, kept when a Gateway API retry names only status codes.
_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled"


@dataclass(frozen=True)
class RouteTable:
    """The merged, ordered rules of the routes of one kind in one namespace for one Service host."""

    host: str
    resource: Resource  # kind HTTPRoute or GRPCRoute, spec a VirtualServiceSpec
    created: float  # its oldest route's creation time: its age against VirtualServices
    routes: tuple[str, ...]  # "namespace/name" of every route merged in
    consumer: bool  # the routes live outside the Service's namespace

    def label(self) -> str:
        return f"{self.resource.kind} {', '.join(self.routes)}"


@dataclass(frozen=True)
class _Entry:
    """The VirtualService rules of one route match, with where Gateway API ranks it."""

    rank: tuple
    rules: tuple[dict, ...]


@dataclass(frozen=True)
class _Parent:
    host: str
    namespace: str
    port: int | None


def route_tables(
    routes: Iterable[Resource], created: Mapping[tuple[str, str, str], float], domain: str
) -> tuple[tuple[RouteTable, ...], tuple[str, ...]]:
    """Every route table, and the routes that could not be converted (with why)."""
    groups: dict[tuple[str, str, str], list[tuple[_Entry, Resource]]] = defaultdict(list)
    service_ns: dict[str, str] = {}
    for route in routes:
        age = created.get(route.key, 0.0)
        for parent, entries in _entries(route, age, domain):
            service_ns[parent.host] = parent.namespace
            groups[(route.kind, route.namespace, parent.host)].extend((e, route) for e in entries)
    tables, problems = [], []
    for (kind, namespace, host), group in sorted(groups.items()):
        try:
            tables.append(_table(kind, namespace, host, group, created, namespace != service_ns[host]))
        except pydantic.ValidationError as e:
            names = ", ".join(sorted({f"{r.namespace}/{r.name}" for _, r in group}))
            problems.append(f"{kind} {names}: cannot be applied to {host}: {_first_error(e)}")
    return tuple(tables), tuple(problems)


def by_precedence(
    virtual_services: tuple[Resource, ...],
    tables: tuple[RouteTable, ...],
    created: Mapping[tuple[str, str, str], float],
) -> tuple[Resource, ...]:
    """VirtualServices and route tables in the order sidecars choose among them for a host:
    consumer route tables first (they apply only to their own namespace), then oldest first.
    VirtualServices arrive oldest first; a stable sort keeps that order where times tie."""
    ranked = [(0, t.created, i, t.resource) for i, t in enumerate(tables) if t.consumer]
    ranked += [(1, created.get(r.key, 0.0), -1, r) for r in virtual_services]
    ranked += [(1, t.created, i, t.resource) for i, t in enumerate(tables) if not t.consumer]
    return tuple(r for *_, r in sorted(ranked, key=lambda x: x[:3]))


def mesh_wide_winners(index: Mapping[str, tuple[Resource, ...]]) -> dict[str, Resource]:
    """Per host, the first resource that applies in every namespace: the one a loser lost to. A
    consumer route (exported only to its own namespace) takes nothing from other namespaces."""
    out = {}
    for host, resources in index.items():
        everywhere = [r for r in resources if not r.spec.export_to or "*" in r.spec.export_to]
        out[host] = (everywhere or resources)[0]
    return out


def table_conflicts(tables: tuple[RouteTable, ...], winners: Mapping[str, Resource]) -> list[str]:
    """Route tables that lost their host to an older VirtualService or route table."""
    out = []
    for t in tables:
        winner = winners.get(t.host)
        if winner is not None and winner is not t.resource and not t.consumer:
            out.append(
                f"{t.label()}: host {t.host} is already claimed by {winner.kind} {winner.namespace}/{winner.name}, "
                "which is older; "
                "sidecars apply one VirtualService or merged route set per host (as Istio does); ignored for that host"
            )
    return out


def _table(
    kind: str, namespace: str, host: str, entries: list[tuple[_Entry, Resource]], created: Mapping, consumer: bool
) -> RouteTable:
    ordered = sorted(entries, key=lambda er: er[0].rank)
    spec = {"hosts": [host], "http": [rule for entry, _ in ordered for rule in entry.rules]}
    if consumer:
        spec["exportTo"] = ["."]
    routes = sorted(
        {r.key: r for _, r in entries}.values(), key=lambda r: (created.get(r.key, 0.0), r.namespace, r.name)
    )
    names = tuple(f"{r.namespace}/{r.name}" for r in routes)
    meta = ObjectMeta(name=routes[0].name, namespace=namespace, annotations={"lattice.dev/routes": ",".join(names)})
    resource = Resource(routes[0].api_version, kind, meta, VirtualServiceSpec.model_validate(spec))
    return RouteTable(host, resource, created.get(routes[0].key, 0.0), names, consumer)


def _first_error(e: pydantic.ValidationError) -> str:
    err = e.errors()[0]
    return f"{'.'.join(map(str, err['loc']))}: {err['msg'].removeprefix('Value error, ')}"


def entries_for(route: Resource, port: int | None, age: float, domain: str) -> list[_Entry]:
    """A route's rules as ranked VirtualService entries whose matches apply on `port` only (when
    given): how a Gateway listener takes the routes attached to it (mesh/k8s_gateway.py)."""
    convert = _http_entries if route.kind == "HTTPRoute" else _grpc_entries
    return convert(route, _Parent("", "", port), age, domain)


def _entries(route: Resource, age: float, domain: str) -> Iterable[tuple[_Parent, list[_Entry]]]:
    for ref in route.spec.parent_refs:
        if not ref.is_service:  # attached to a Gateway: served at the edge (mesh/k8s_gateway.py)
            continue
        namespace = ref.namespace or route.namespace
        parent = _Parent(fqdn(ref.name, namespace, domain), namespace, ref.port)
        convert = _http_entries if route.kind == "HTTPRoute" else _grpc_entries
        yield parent, convert(route, parent, age, domain)


def _http_entries(route: Resource, parent: _Parent, age: float, domain: str) -> list[_Entry]:
    out = []
    for i, rule in enumerate(route.spec.rules):
        action = _http_action(route.namespace, rule, domain)
        for j, match in enumerate(rule.matches or [HTTPRouteMatch()]):
            path = match.path
            kind, value = (path.type, path.value) if path is not None else ("PathPrefix", "/")
            rank = (-_PATH_RANK[kind], -len(value), match.method is None, -len(match.headers), -len(match.query_params))
            rules = _http_rules(_rule_name(route, rule.name, i), match, parent.port, action, rule)
            out.append(_Entry((*rank, age, route.namespace, route.name, i, j), tuple(rules)))
    return out


def _grpc_entries(route: Resource, parent: _Parent, age: float, domain: str) -> list[_Entry]:
    out = []
    for i, rule in enumerate(route.spec.rules):
        action = _grpc_action(route.namespace, rule, domain)
        for j, match in enumerate(rule.matches or [GRPCRouteMatch()]):
            method = match.method
            service_len = len(method.service or "") if method else 0
            method_len = len(method.method or "") if method else 0
            rank = (-service_len, -method_len, -len(match.headers))
            vs_match = _grpc_match(match) | _port(parent.port)
            rule_dict = {"name": _rule_name(route, rule.name, i), "match": [vs_match], **action}
            out.append(_Entry((*rank, age, route.namespace, route.name, i, j), (rule_dict,)))
    return out


def _rule_name(route: Resource, name: str | None, index: int) -> str:
    return f"{route.namespace}/{route.name}/{name}" if name else f"{route.namespace}/{route.name}#{index}"


def _port(port: int | None) -> dict:
    return {"port": port} if port is not None else {}


def _http_rules(name: str, match: HTTPRouteMatch, port: int | None, action: dict, rule: HTTPRouteRule) -> list[dict]:
    """One VirtualService rule per URI form the match needs. A Gateway API PathPrefix matches whole
    path segments (`/foo` matches `/foo` and `/foo/bar`, not `/foobar`), which Envoy's string
    prefix does not: it becomes an exact match on `/foo` and a prefix match on `/foo/`, each with
    its own prefix rewrite so ReplacePrefixMatch replaces whole segments too."""
    common = _headers_match(match) | _port(port)
    # ReplacePrefixMatch, of a URLRewrite or a RequestRedirect (a rule has one or the other)
    modifier = rule.filter("URLRewrite") or rule.filter("RequestRedirect")
    path = modifier.path if modifier is not None else None
    replacement = path.replace_prefix_match if path is not None else None
    out = []
    for uri, prefix_rewrite in _uri_forms(match, replacement):
        rule_dict = {"name": name, "match": [common | ({"uri": uri} if uri else {})], **action}
        if prefix_rewrite is not None and "redirect" in rule_dict:
            rule_dict["redirect"] = {**rule_dict["redirect"], "uri": PREFIX_REDIRECT + prefix_rewrite}
        elif prefix_rewrite is not None:
            rule_dict["rewrite"] = {**rule_dict.get("rewrite", {}), "uri": prefix_rewrite}
        out.append(rule_dict)
    return out


def _uri_forms(match: HTTPRouteMatch, replacement: str | None) -> list[tuple[dict | None, str | None]]:
    path = match.path
    if path is not None and path.type == "Exact":
        return [({"exact": path.value}, None)]
    if path is not None and path.type == "RegularExpression":
        return [({"regex": path.value}, None)]
    prefix = (path.value if path is not None else "/").rstrip("/")
    segment = replacement.rstrip("/") + "/" if replacement is not None else None
    if not prefix:  # "/" matches everything; nothing to tell apart
        return [(None if replacement is None else {"prefix": "/"}, segment)]
    return [({"exact": prefix}, replacement), ({"prefix": prefix + "/"}, segment)]


def _headers_match(match: HTTPRouteMatch) -> dict:
    out: dict = {}
    if match.method is not None:
        out["method"] = {"exact": match.method}
    if match.headers:
        out["headers"] = {h.name.lower(): _value(h) for h in match.headers}
    if match.query_params:
        out["queryParams"] = {q.name: _value(q) for q in match.query_params}
    return out


def _value(m: ValueMatch) -> dict:
    return {"exact": m.value} if m.type == "Exact" else {"regex": m.value}


def _grpc_match(match: GRPCRouteMatch) -> dict:
    """gRPC calls are POSTs to `/<service>/<method>`; Istio matches them on that path."""
    out: dict = {}
    if match.headers:
        out["headers"] = {h.name.lower(): _value(h) for h in match.headers}
    m = match.method
    if m is None:
        return out
    if m.type == "RegularExpression":
        out["uri"] = {"regex": f"/{m.service or '[^/]+'}/{m.method or '[^/]+'}"}
    elif m.service is not None and m.method is not None:
        out["uri"] = {"exact": f"/{m.service}/{m.method}"}
    elif m.service is not None:
        out["uri"] = {"prefix": f"/{m.service}/"}
    elif m.method is not None:  # validation: service, method or both
        out["uri"] = {"regex": f"/[^/]+/{re.escape(m.method)}"}
    return out


def _http_action(namespace: str, rule: HTTPRouteRule, domain: str) -> dict:
    """What a rule does once matched, in VirtualService terms (everything but the match)."""
    redirect = rule.filter("RequestRedirect")
    out = {"redirect": _redirect(redirect)} if redirect is not None else _forward(namespace, rule.backend_refs, domain)
    out |= _header_ops(rule)
    rewrite = rule.filter("URLRewrite")
    if rewrite is not None:
        out["rewrite"] = _rewrite(rewrite)
    out |= _mirrors(namespace, rule, domain)
    cors = rule.filter("CORS")
    if cors is not None:
        out["corsPolicy"] = _cors(cors)
    out |= _timeouts_and_retries(rule)
    return out


def _grpc_action(namespace: str, rule: GRPCRouteRule, domain: str) -> dict:
    return _forward(namespace, rule.backend_refs, domain) | _header_ops(rule) | _mirrors(namespace, rule, domain)


def _forward(namespace: str, backends: list, domain: str) -> dict:
    """Weighted destinations; Gateway API answers 500 when no backend may receive traffic."""
    live = [b for b in backends if b.weight > 0]
    if not live:
        return {"directResponse": {"status": 500}}
    return {"route": [_destination(namespace, b, domain) for b in live]}


def _destination(namespace: str, backend, domain: str) -> dict:
    out = {"destination": _service(namespace, backend, domain), "weight": backend.weight}
    headers = _headers(
        _filter(backend.filters, "RequestHeaderModifier"), _filter(backend.filters, "ResponseHeaderModifier")
    )
    if headers:
        out["headers"] = headers
    return out


def _filter(filters: list, kind: str):
    return next((f for f in filters if f.type == kind), None)


def _service(namespace: str, ref, domain: str) -> dict:
    return {"host": f"{ref.name}.{ref.namespace or namespace}.svc.{domain}", "port": {"number": ref.port}}


def _header_ops(rule) -> dict:
    headers = _headers(_filter(rule.filters, "RequestHeaderModifier"), _filter(rule.filters, "ResponseHeaderModifier"))
    return {"headers": headers} if headers else {}


def _headers(request, response) -> dict:
    out = {}
    if request is not None:
        out["request"] = _operations(request.request_header_modifier)
    if response is not None:
        out["response"] = _operations(response.response_header_modifier)
    return out


def _operations(m: HeaderModifier) -> dict:
    ops = {"set": {h.name: h.value for h in m.set}, "add": {h.name: h.value for h in m.add}, "remove": list(m.remove)}
    return {k: v for k, v in ops.items() if v}


def _redirect(r: RequestRedirect) -> dict:
    # Gateway API: without a port, a new scheme brings its well-known port; otherwise the port stays.
    out: dict = {"redirectCode": r.status_code}
    if r.scheme is not None:
        out["scheme"] = r.scheme
        if r.port is None:
            out["derivePort"] = "FROM_PROTOCOL_DEFAULT"
    if r.hostname is not None:
        out["authority"] = r.hostname
    if r.port is not None:
        out["port"] = r.port
    if r.path is not None and r.path.type == "ReplaceFullPath":
        out["uri"] = r.path.replace_full_path  # ReplacePrefixMatch: per path form (_http_rules)
    return out


def _rewrite(rewrite) -> dict:
    out: dict = {}
    if rewrite.hostname is not None:
        out["authority"] = rewrite.hostname
    if rewrite.path is not None and rewrite.path.type == "ReplaceFullPath":
        # The whole path, whatever matched (Istio's conversion of ReplaceFullPath).
        out["uriRegexRewrite"] = {"match": "/.*", "rewrite": rewrite.path.replace_full_path}
    return out


def _mirrors(namespace: str, rule, domain: str) -> dict:
    mirrors = [f.request_mirror for f in rule.filters if f.type == "RequestMirror"]
    return {"mirrors": [_mirror(namespace, m, domain) for m in mirrors]} if mirrors else {}


def _mirror(namespace: str, m: RequestMirror, domain: str) -> dict:
    return {"destination": _service(namespace, m.backend_ref, domain), "percentage": {"value": m.share()}}


def _cors(c: CORS) -> dict:
    out: dict = {
        "allowOrigins": [_origin(o) for o in c.allow_origins],
        "allowMethods": list(c.allow_methods),
        "allowHeaders": list(c.allow_headers),
        "exposeHeaders": list(c.expose_headers),
        "maxAge": f"{c.max_age}s",
    }
    if c.allow_credentials is not None:
        out["allowCredentials"] = c.allow_credentials
    return out


def _origin(origin: str) -> dict:
    """`*` allows any origin; `https://*.example.com` any subdomain (one or more labels)."""
    if origin == "*":
        return {"regex": ".*"}
    if "*" not in origin:
        return {"exact": origin}
    scheme, _, host = origin.partition("://*.")
    return {"regex": f"{re.escape(scheme)}://[^/]+\\.{re.escape(host)}"}


def _timeouts_and_retries(rule: HTTPRouteRule) -> dict:
    """`timeouts.request` bounds the whole request (retries included), `timeouts.backendRequest`
    each try: Istio's `timeout` and `retries.perTryTimeout`. A zero duration means no timeout."""
    out: dict = {}
    timeouts, retry = rule.timeouts, rule.retry
    if timeouts is not None and timeouts.request is not None:
        out["timeout"] = timeouts.request
    per_try = timeouts.backend_request if timeouts is not None and timeouts.backend_request is not None else None
    if per_try is not None and parse_duration(per_try) == 0:
        per_try = None
    if retry is None and per_try is None:
        return out
    retries: dict = {"attempts": 2 if retry is None or retry.attempts is None else retry.attempts}
    if retry is not None and retry.codes:
        retries["retryOn"] = ",".join([_RETRY_ON, *map(str, retry.codes)])
    if per_try is not None:
        retries["perTryTimeout"] = per_try
    return out | {"retries": retries}
