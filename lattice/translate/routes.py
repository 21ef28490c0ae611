"""A VirtualService's HTTP rules as Envoy routes: first match wins, one Envoy route per match.

Rules are translated for one proxy: matches on `sourceLabels`, `sourceNamespace` and `port` are
decided here (a match that cannot apply to this proxy or this service port is left out, and a rule
left with no match is left out), so Envoy only sees what can match.
"""

from __future__ import annotations

import base64

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import previous_priorities_config_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2

from lattice.api import Resource
from lattice.api.durations import parse_duration
from lattice.api.networking import (
    GRPC_STATUS,
    PREFIX_REDIRECT,
    CorsPolicy,
    Destination,
    Headers,
    HTTPDirectResponse,
    HTTPFaultInjection,
    HTTPMatchRequest,
    HTTPRedirect,
    HTTPRetry,
    HTTPRoute,
    HTTPRouteDestination,
    Percent,
    StringMatch,
)
from lattice.mesh import MeshSnapshot, Service, Workload
from lattice.translate import names, policy
from lattice.translate.protos import duration, pack

FAULT = "envoy.filters.http.fault"
CORS = "envoy.filters.http.cors"
# Istio's default retry policy for sidecars: two retries on connection-level failures and 503.
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
DEFAULT_ATTEMPTS = 2
_REDIRECT_CODES = {
    301: rc.RedirectAction.MOVED_PERMANENTLY,
    302: rc.RedirectAction.FOUND,
    303: rc.RedirectAction.SEE_OTHER,
    307: rc.RedirectAction.TEMPORARY_REDIRECT,
    308: rc.RedirectAction.PERMANENT_REDIRECT,
}


def default_route(service: Service, snapshot: MeshSnapshot | None = None) -> rc.Route:
    action = rc.RouteAction(cluster=names.outbound_cluster(service.port, None, service.hostname), timeout=duration(0))
    action.hash_policy.extend(policy.route_hash_policies(snapshot, [action.cluster]) if snapshot else [])
    action.retry_policy.CopyFrom(_retry_policy(None))
    return rc.Route(name="default", match=rc.RouteMatch(prefix="/"), route=action)


def for_virtual_service(
    snapshot: MeshSnapshot,
    vs: Resource,
    service: Service | None,
    proxy: Workload,
    gateway: str | None = None,
    port: int | None = None,
) -> list[rc.Route]:
    """Envoy routes for `vs` as `proxy` applies them: a sidecar routing `service` (gateway None),
    or a gateway proxy serving Gateway `gateway` ("namespace/name") on `port` (service None)."""
    if port is None:
        assert service is not None, "a sidecar routes a service, a gateway a port"
        port = service.port
    out: list[rc.Route] = []
    for index, rule in enumerate(vs.spec.http):
        label = rule.name or f"{vs.namespace}/{vs.name}#{index}"
        matches = [m for m in rule.match if _applies(m, vs.namespace, proxy, gateway, port)] if rule.match else [None]
        out.extend(_route(snapshot, vs.namespace, service, rule, match, label) for match in matches)
    return out


def matches_source_labels(vs: Resource) -> bool:
    """Whether a match of `vs`'s HTTP rules names source labels: only then do the routes
    `for_virtual_service` makes for a sidecar depend on the caller's labels."""
    return any(match.source_labels for rule in vs.spec.http for match in rule.match)


def _applies(match: HTTPMatchRequest, namespace: str, proxy: Workload, gateway: str | None, port: int) -> bool:
    """Whether a match can fire for this proxy on this port (decided at translation time, as Istio does)."""
    if match.port is not None and match.port != port:
        return False
    if match.gateways:  # a match naming gateways narrows the VirtualService's own list
        bound = {g if "/" in g or g == "mesh" else f"{namespace}/{g}" for g in match.gateways}
        if (gateway or "mesh") not in bound:
            return False
    if match.source_namespace is not None and proxy.namespace != match.source_namespace:
        return False
    return all(proxy.labels.get(k) == v for k, v in match.source_labels.items())


def _route(
    snapshot: MeshSnapshot,
    namespace: str,
    service: Service | None,
    rule: HTTPRoute,
    match: HTTPMatchRequest | None,
    label: str,
) -> rc.Route:
    name = f"{label}.{match.name}" if match is not None and match.name else label
    route = rc.Route(name=name, match=_match(match))
    if match is not None and match.stat_prefix:
        route.stat_prefix = match.stat_prefix
    if rule.redirect is not None:
        route.redirect.CopyFrom(_redirect(rule.redirect))
    elif rule.direct_response is not None:
        route.direct_response.CopyFrom(_direct_response(rule.direct_response))
    else:
        route.route.CopyFrom(_action(snapshot, namespace, service, rule))
    _add_headers(route, rule.headers)
    if len(rule.route) == 1:
        _add_headers(route, rule.route[0].headers)
    if rule.fault is not None:
        route.typed_per_filter_config[FAULT].CopyFrom(pack(_fault(rule.fault)))
    if rule.cors_policy is not None:
        route.typed_per_filter_config[CORS].CopyFrom(pack(_cors(rule.cors_policy)))
    return route


def _match(match: HTTPMatchRequest | None) -> rc.RouteMatch:
    out = rc.RouteMatch(prefix="/")
    if match is None:
        return out
    uri = match.uri
    if uri is not None and uri.exact is not None:
        out.path = uri.exact
    elif uri is not None and uri.prefix is not None:
        out.prefix = uri.prefix
    elif uri is not None and uri.regex is not None:
        out.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=uri.regex))
    if match.ignore_uri_case:
        out.case_sensitive.value = False
    pseudo = {":method": match.method, ":authority": match.authority, ":scheme": match.scheme}
    out.headers.extend(_header(k, v) for k, v in pseudo.items() if v is not None)
    out.headers.extend(_header(k, v) for k, v in sorted(match.headers.items()))
    out.headers.extend(_header(k, v, invert=True) for k, v in sorted(match.without_headers.items()))
    out.query_parameters.extend(
        rc.QueryParameterMatcher(name=k, string_match=_string(v)) for k, v in sorted(match.query_params.items())
    )
    return out


def _header(name: str, match: StringMatch, invert: bool = False) -> rc.HeaderMatcher:
    # Envoy never matches a missing header, inverted or not; Istio's withoutHeaders must match a
    # request that lacks the header, so an absent header counts as empty there.
    return rc.HeaderMatcher(
        name=name.lower(), string_match=_string(match), invert_match=invert, treat_missing_header_as_empty=invert
    )


def _string(match: StringMatch, ignore_case: bool = False) -> string_pb2.StringMatcher:
    if match.exact is not None:
        return string_pb2.StringMatcher(exact=match.exact, ignore_case=ignore_case)
    if match.prefix is not None:
        return string_pb2.StringMatcher(prefix=match.prefix, ignore_case=ignore_case)
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=match.regex))


def _action(snapshot: MeshSnapshot, namespace: str, service: Service | None, rule: HTTPRoute) -> rc.RouteAction:
    action = rc.RouteAction(timeout=duration(parse_duration(rule.timeout) if rule.timeout else 0))
    if len(rule.route) == 1:
        action.cluster = cluster_for(snapshot, namespace, service, rule.route[0].destination)
    else:
        action.weighted_clusters.clusters.extend(_weighted(snapshot, namespace, service, d) for d in rule.route)
    chosen = [action.cluster] if action.cluster else [c.name for c in action.weighted_clusters.clusters]
    action.hash_policy.extend(policy.route_hash_policies(snapshot, chosen))  # consistent hashing lives on the route
    if rule.retries is None or rule.retries.attempts > 0:
        action.retry_policy.CopyFrom(_retry_policy(rule.retries))
    _add_rewrite(action, rule)
    action.request_mirror_policies.extend(_mirrors(snapshot, namespace, service, rule))
    return action


def _weighted(
    snapshot: MeshSnapshot, namespace: str, service: Service | None, d: HTTPRouteDestination
) -> rc.WeightedCluster.ClusterWeight:
    out = rc.WeightedCluster.ClusterWeight(
        name=cluster_for(snapshot, namespace, service, d.destination), weight={"value": d.weight or 0}
    )
    _add_headers(out, d.headers)
    return out


def cluster_for(snapshot: MeshSnapshot, namespace: str, service: Service | None, d: Destination) -> str:
    """The outbound cluster a destination names; its port defaults to the routed service's port for
    the same host, and to the destination service's only (first) port otherwise."""
    host = snapshot.resolve_host(d.host, namespace)  # a ServiceEntry host as written, else its FQDN
    if d.port is not None:
        port = d.port.number
    elif service is not None and (host == service.hostname or not snapshot.service_ports(host)):
        port = service.port
    else:
        port = (snapshot.service_ports(host) or [80])[0]
    return names.outbound_cluster(port, d.subset, host)


def _add_rewrite(action: rc.RouteAction, rule: HTTPRoute) -> None:
    rewrite = rule.rewrite
    if rewrite is None:
        return
    if rewrite.uri is not None:
        action.prefix_rewrite = rewrite.uri
    elif rewrite.uri_regex_rewrite is not None:
        action.regex_rewrite.pattern.regex = rewrite.uri_regex_rewrite.match
        action.regex_rewrite.substitution = rewrite.uri_regex_rewrite.rewrite
    if rewrite.authority is not None:
        action.host_rewrite_literal = rewrite.authority


def _mirrors(
    snapshot: MeshSnapshot, namespace: str, service: Service | None, rule: HTTPRoute
) -> list[rc.RouteAction.RequestMirrorPolicy]:
    # Istio: `mirror` with `mirrorPercentage` (or the deprecated integer `mirrorPercent`), or the
    # newer `mirrors` list with a percentage each; unset percentages mirror everything.
    targets: list[tuple[Destination, Percent | None, int | None]] = [
        (m.destination, m.percentage, None) for m in rule.mirrors
    ]
    if rule.mirror is not None:
        targets.append((rule.mirror, rule.mirror_percentage, rule.mirror_percent))
    return [
        rc.RouteAction.RequestMirrorPolicy(
            cluster=cluster_for(snapshot, namespace, service, destination),
            runtime_fraction=base_pb2.RuntimeFractionalPercent(default_value=_fraction(percentage, percent)),
        )
        for destination, percentage, percent in targets
    ]


def _redirect(r: HTTPRedirect) -> rc.RedirectAction:
    out = rc.RedirectAction(response_code=_REDIRECT_CODES[r.redirect_code])
    if r.uri is not None and r.uri.startswith(PREFIX_REDIRECT):
        out.prefix_rewrite = r.uri.removeprefix(PREFIX_REDIRECT)
    elif r.uri is not None:
        out.path_redirect = r.uri
    if r.authority is not None:
        out.host_redirect = r.authority
    if r.scheme is not None:
        out.scheme_redirect = r.scheme
    if r.port is not None:
        out.port_redirect = r.port
    elif r.derive_port == "FROM_PROTOCOL_DEFAULT":
        out.port_redirect = 443 if (r.scheme or "http") == "https" else 80
    return out


def _direct_response(d: HTTPDirectResponse) -> rc.DirectResponseAction:
    out = rc.DirectResponseAction(status=d.status)
    if d.body is not None and d.body.string is not None:
        out.body.inline_string = d.body.string
    elif d.body is not None and d.body.bytes is not None:  # validation: string or bytes
        out.body.inline_bytes = base64.b64decode(d.body.bytes)
    return out


def _retry_policy(retries: HTTPRetry | None) -> rc.RetryPolicy:
    attempts = retries.attempts if retries is not None else DEFAULT_ATTEMPTS
    asked = retries.retry_on if retries is not None else None
    given = bool(asked)
    retry_on = [c.strip() for c in (asked or DEFAULT_RETRY_ON).split(",") if c.strip()]
    # Istio: without retryOn, 503 is the retriable status code; with it, the codes it lists.
    codes = sorted({int(c) for c in retry_on if c.isdigit()}) if given else [503]
    kinds = [c for c in retry_on if not c.isdigit()]
    if codes and "retriable-status-codes" not in kinds:
        kinds.append("retriable-status-codes")
    policy = rc.RetryPolicy(
        retry_on=",".join(kinds),
        num_retries={"value": attempts},
        retriable_status_codes=codes,
        host_selection_retry_max_attempts=5,
        retry_host_predicate=[
            rc.RetryPolicy.RetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate()),
            )
        ],
    )
    if retries is not None and retries.per_try_timeout:
        policy.per_try_timeout.CopyFrom(duration(parse_duration(retries.per_try_timeout)))
    if retries is not None and retries.retry_remote_localities:
        # Retry in another locality (priority) than the one that failed.
        policy.retry_priority.name = "envoy.retry_priorities.previous_priorities"
        policy.retry_priority.typed_config.CopyFrom(
            pack(previous_priorities_config_pb2.PreviousPrioritiesConfig(update_frequency=2))
        )
    return policy


def _fault(fault: HTTPFaultInjection) -> fault_pb2.HTTPFault:
    out = fault_pb2.HTTPFault()
    delay, abort = fault.delay, fault.abort
    if delay is not None:
        out.delay.CopyFrom(
            common_fault.FaultDelay(
                fixed_delay=duration(parse_duration(delay.fixed_delay)),
                percentage=_fraction(delay.percentage, delay.percent),
            )
        )
    if abort is not None:
        out.abort.CopyFrom(fault_pb2.FaultAbort(percentage=_fraction(abort.percentage, abort.percent)))
        if abort.grpc_status is not None:
            out.abort.grpc_status = GRPC_STATUS[abort.grpc_status]
        else:
            out.abort.http_status = abort.http_status
    return out


def _fraction(percentage: Percent | None, percent: int | None) -> percent_pb2.FractionalPercent:
    # Istio: `percentage.value` (a float) wins over the deprecated integer `percent`; neither means 100.
    if percentage is not None:
        return percent_pb2.FractionalPercent(
            numerator=int(round(percentage.value * 10000)), denominator=percent_pb2.FractionalPercent.MILLION
        )
    return percent_pb2.FractionalPercent(
        numerator=100 if percent is None else percent, denominator=percent_pb2.FractionalPercent.HUNDRED
    )


def _cors(policy: CorsPolicy) -> cors_pb2.CorsPolicy:
    origins = [_string(m) for m in policy.allow_origins] + [
        string_pb2.StringMatcher(exact=o) for o in policy.allow_origin
    ]
    out = cors_pb2.CorsPolicy(
        allow_origin_string_match=origins,
        allow_methods=",".join(policy.allow_methods),
        allow_headers=",".join(policy.allow_headers),
        expose_headers=",".join(policy.expose_headers),
    )
    if policy.max_age is not None:
        out.max_age = str(int(parse_duration(policy.max_age)))
    if policy.allow_credentials is not None:
        out.allow_credentials.value = policy.allow_credentials
    if policy.unmatched_preflights is not None:
        # Istio's default (UNSPECIFIED) forwards preflights that match no origin to the app.
        out.forward_not_matching_preflights.value = policy.unmatched_preflights != "IGNORE"
    return out


def _add_headers(route: rc.Route | rc.WeightedCluster.ClusterWeight, headers: Headers | None) -> None:
    route.request_headers_to_add.extend(_header_ops(headers, "request", "set", "add"))
    route.response_headers_to_add.extend(_header_ops(headers, "response", "set", "add"))
    route.request_headers_to_remove.extend(headers.request.remove if headers and headers.request else [])
    route.response_headers_to_remove.extend(headers.response.remove if headers and headers.response else [])


def _header_ops(headers: Headers | None, side: str, *ops: str) -> list[base_pb2.HeaderValueOption]:
    section = getattr(headers, side, None) if headers else None
    if section is None:
        return []
    action = {
        "set": base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        "add": base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD,
    }
    return [
        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v), append_action=action[op])
        for op in ops
        for k, v in sorted(getattr(section, op).items())
    ]
