"""Route tables: the outbound table routes by Host to each service, through its VirtualService."""

from __future__ import annotations

import re

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from lattice.mesh import MeshSnapshot, Service, Workload
from lattice.translate import names, routes, telemetry


def route_configurations(snapshot: MeshSnapshot, proxy: Workload) -> list[route_pb2.RouteConfiguration]:
    hosts, taken = [], set()
    # Registered services first: a ServiceEntry repeating one of their names does not get it
    # (Envoy refuses a table that lists one domain twice).
    for service in sorted(snapshot.services_for(proxy), key=lambda s: s.source != "registry"):
        host = _virtual_host(snapshot, proxy, service)
        if any(d in taken for d in host.domains):
            trimmed = rc.VirtualHost()
            trimmed.CopyFrom(host)  # the shared one stays whole for other proxies' tables
            trimmed.domains[:] = [d for d in host.domains if d not in taken]
            host = trimmed
        taken.update(host.domains)
        if host.domains:
            hosts.append(host)
    for service in snapshot.absent_services():
        host = _absent_host(service, proxy, snapshot.domain)
        host.domains[:] = [d for d in host.domains if d not in taken]
        taken.update(host.domains)
        if host.domains:
            hosts.append(host)
    catch_all = _block_all_host if snapshot.outbound_policy_for(proxy) == "REGISTRY_ONLY" else _passthrough_host
    hosts.append(catch_all(snapshot.domain))
    # A route may name a cluster that does not exist (a subset no DestinationRule defines);
    # Envoy accepts the table and answers such requests 503, as Istio does.
    return [route_pb2.RouteConfiguration(name=names.OUTBOUND_ROUTE, virtual_hosts=hosts)]


def _virtual_host(snapshot: MeshSnapshot, proxy: Workload, service: Service) -> rc.VirtualHost:
    """Built once per snapshot for all callers alike: a host's names and a VirtualService's
    sourceNamespace matches depend on the caller's namespace, its sourceLabels matches on the
    caller's labels (only a VirtualService that has some reads them: callers that differ only in
    labels then share one host, and one route table)."""
    rule = snapshot.virtual_service_for(service.hostname, proxy.namespace)
    if rule is not None and routes.matches_source_labels(rule):
        caller: tuple = (proxy.namespace, tuple(sorted(proxy.labels.items())))
    else:
        caller = (proxy.namespace,)
    return snapshot.memo(
        ("virtual-host", service.hostname, service.port, caller),
        lambda: _build_virtual_host(snapshot, proxy, service, rule),
    )


def _build_virtual_host(snapshot: MeshSnapshot, proxy: Workload, service: Service, rule) -> rc.VirtualHost:
    ports = snapshot.service_ports(service.hostname)
    aliases = service.aliases(proxy.namespace, snapshot.domain)
    domains = [f"{a}:{service.port}" for a in aliases]
    # A bare host (no port) means port 80 in HTTP; a service with a single port also takes it,
    # so `http://reviews/` works for a service that only serves 9080.
    if service.port == 80 or (len(ports) == 1 and 80 not in ports):
        domains += aliases
    # HTTP rules none of which can apply on this port, e.g. an HTTPRoute whose parentRef names
    # another port of the Service, leave the port its default route, as Istio does (Gateway API
    # conformance MeshPorts). A VirtualService of `tcp`/`tls` rules only routes no HTTP at all.
    table = routes.for_virtual_service(snapshot, rule, service, proxy) if rule else []
    if not table and (rule is None or rule.spec.http):
        table = [routes.default_route(service, snapshot)]
    host = rc.VirtualHost(name=f"{service.hostname}:{service.port}", domains=domains, routes=table)
    if (
        service.source == "registry"
    ):  # the destination's sidecar learns which workload called (never sent outside the mesh)
        telemetry.add_peer_header(host.request_headers_to_add)
    return host


NO_UPSTREAM_HEADER = "x-lattice-no-healthy-upstream"  # the mesh name that had none


def _absent_host(service: Service, proxy: Workload, domain: str) -> rc.VirtualHost:
    """A mesh name no workload serves now (mesh/absent.py): 503 and the name, on any port, as
    Envoy answers for a service whose endpoints are all unhealthy; never the passthrough."""
    aliases = service.aliases(proxy.namespace, domain)
    return rc.VirtualHost(
        name=f"absent:{service.hostname}",
        domains=[*aliases, *(f"{a}:*" for a in aliases)],
        routes=[no_upstream_route("no_healthy_upstream", rc.RouteMatch(prefix="/"), service.hostname)],
    )


def no_upstream_route(name: str, match: rc.RouteMatch, hostname: str) -> rc.Route:
    body = f"no healthy upstream for {hostname}: no workload serves it now\n"
    return rc.Route(
        name=name,
        match=match,
        direct_response=rc.DirectResponseAction(status=503, body=base_pb2.DataSource(inline_string=body)),
        response_headers_to_add=[
            base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=NO_UPSTREAM_HEADER, value=hostname))
        ],
    )


def _mesh_domain_route(domain: str) -> rc.Route:
    """Any `<name>.<namespace>.svc[.<domain>]` no service answers to: it is the mesh's by its form,
    so it never leaves for the passthrough either."""
    pattern = r"[^.:]+\.[^.:]+\.svc(\." + re.escape(domain) + r")?\.?(:[0-9]+)?"
    authority = rc.HeaderMatcher(
        name=":authority", string_match=string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))
    )
    return no_upstream_route("mesh_domain", rc.RouteMatch(prefix="/", headers=[authority]), f"*.svc.{domain}")


def _passthrough_host(domain: str) -> rc.VirtualHost:
    return rc.VirtualHost(
        name="allow_any",
        domains=["*"],
        routes=[
            *refusals(),
            _mesh_domain_route(domain),
            rc.Route(
                name="allow_any",
                match=rc.RouteMatch(prefix="/"),
                route=rc.RouteAction(cluster=names.PASSTHROUGH, timeout={"seconds": 0}),
            ),
        ],
    )


def _block_all_host(domain: str) -> rc.VirtualHost:
    """REGISTRY_ONLY: a host that is neither a service nor a ServiceEntry gets 502, as from Istio's BlackHoleCluster."""
    return rc.VirtualHost(
        name="block_all",
        domains=["*"],
        routes=[
            *refusals(),
            _mesh_domain_route(domain),
            rc.Route(
                name="block_all", match=rc.RouteMatch(prefix="/"), direct_response=rc.DirectResponseAction(status=502)
            ),
        ],
    )


def refusals() -> list[rc.Route]:
    """400 for requests Envoy's codecs let through but a careful proxy refuses, first in every
    catch-all host (where they land) and inbound (the last hop before the app):
    - a host named twice: Envoy joins repeated Host headers with ',', a value no host name has;
      which of the two a later hop would believe is anyone's guess (RFC 9112, section 3.2);
    - a method not in upper case (`gEt`): HTTP/1.1 refuses it in the codec, HTTP/2 does not, and
      a policy on GET would not match what a case-blind app serves as GET."""
    authority = rc.HeaderMatcher(name=":authority", string_match=string_pb2.StringMatcher(contains=","))
    lowercase = rc.HeaderMatcher(
        name=":method", string_match=string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".*[a-z].*"))
    )
    return [
        rc.Route(
            name="ambiguous_host",
            match=rc.RouteMatch(prefix="/", headers=[authority]),
            direct_response=rc.DirectResponseAction(status=400),
        ),
        rc.Route(
            name="method_case",
            match=rc.RouteMatch(prefix="/", headers=[lowercase]),
            direct_response=rc.DirectResponseAction(status=400),
        ),
    ]


def upstream_route_configuration(
    snapshot: MeshSnapshot, proxy: Workload, service: Service, name: str
) -> route_pb2.RouteConfiguration:
    """An `--upstream` port's table: the service's own routes, whatever Host the app sends (it
    chose the service by dialing its local port, not by name)."""
    host = rc.VirtualHost()
    host.CopyFrom(_virtual_host(snapshot, proxy, service))  # a copy: the shared one serves other tables
    host.domains[:] = ["*"]
    return route_pb2.RouteConfiguration(name=name, virtual_hosts=[host])
