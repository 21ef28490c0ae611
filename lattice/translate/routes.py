"""A VirtualService's HTTP rules as Envoy routes: first match wins, one Envoy route per match."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2

from lattice.api import Resource
from lattice.api.durations import parse_duration
from lattice.api.networking import Headers, HTTPMatchRequest, HTTPRetry, HTTPRoute, HTTPRouteDestination, StringMatch
from lattice.mesh import MeshSnapshot, Service, fqdn
from lattice.translate import names
from lattice.translate.protos import duration, pack

FAULT = "envoy.filters.http.fault"
# Istio's default retry policy for sidecars: two retries on connection-level failures and 503.
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
DEFAULT_ATTEMPTS = 2


def default_route(service: Service) -> rc.Route:
    action = rc.RouteAction(cluster=names.outbound_cluster(service.port, None, service.hostname), timeout=duration(0))
    action.retry_policy.CopyFrom(_retry_policy(None))
    return rc.Route(name="default", match=rc.RouteMatch(prefix="/"), route=action)


def for_virtual_service(snapshot: MeshSnapshot, vs: Resource, service: Service) -> list[rc.Route]:
    out = []
    for index, rule in enumerate(vs.spec.http):
        label = rule.name or f"{vs.namespace}/{vs.name}#{index}"
        for match in rule.match or [None]:
            out.append(_route(snapshot, vs.namespace, service, rule, match, label))
    return out


def _route(snapshot: MeshSnapshot, namespace: str, service: Service, rule: HTTPRoute, match: HTTPMatchRequest | None, label: str) -> rc.Route:
    route = rc.Route(name=label, match=_match(match), route=_action(snapshot, namespace, service, rule))
    _add_headers(route, rule.headers)
    if len(rule.route) == 1:
        _add_headers(route, rule.route[0].headers)
    if rule.fault is not None:
        route.typed_per_filter_config[FAULT].CopyFrom(pack(_fault(rule)))
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
    pseudo = {":method": match.method, ":authority": match.authority}
    out.headers.extend(_header(k, v) for k, v in pseudo.items() if v is not None)
    out.headers.extend(_header(k, v) for k, v in sorted(match.headers.items()))
    out.headers.extend(_header(k, v, invert=True) for k, v in sorted(match.without_headers.items()))
    out.query_parameters.extend(rc.QueryParameterMatcher(name=k, string_match=_string(v)) for k, v in sorted(match.query_params.items()))
    return out


def _header(name: str, match: StringMatch, invert: bool = False) -> rc.HeaderMatcher:
    return rc.HeaderMatcher(name=name.lower(), string_match=_string(match), invert_match=invert)


def _string(match: StringMatch) -> string_pb2.StringMatcher:
    if match.exact is not None:
        return string_pb2.StringMatcher(exact=match.exact)
    if match.prefix is not None:
        return string_pb2.StringMatcher(prefix=match.prefix)
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=match.regex))


def _action(snapshot: MeshSnapshot, namespace: str, service: Service, rule: HTTPRoute) -> rc.RouteAction:
    action = rc.RouteAction(timeout=duration(parse_duration(rule.timeout) if rule.timeout else 0))
    if len(rule.route) == 1:
        action.cluster = _cluster(snapshot, namespace, service, rule.route[0])
    else:
        action.weighted_clusters.clusters.extend(_weighted(snapshot, namespace, service, d) for d in rule.route)
    action.retry_policy.CopyFrom(_retry_policy(rule.retries))
    if rule.retries is not None and rule.retries.attempts == 0:
        action.ClearField("retry_policy")
    return action


def _weighted(snapshot: MeshSnapshot, namespace: str, service: Service, d: HTTPRouteDestination) -> rc.WeightedCluster.ClusterWeight:
    out = rc.WeightedCluster.ClusterWeight(name=_cluster(snapshot, namespace, service, d), weight={"value": d.weight or 0})
    _add_headers(out, d.headers)
    return out


def _cluster(snapshot: MeshSnapshot, namespace: str, service: Service, d: HTTPRouteDestination) -> str:
    host = fqdn(d.destination.host, namespace, snapshot.domain)
    if d.destination.port is not None:
        port = d.destination.port.number
    else:
        ports = snapshot.service_ports(host)
        port = service.port if host == service.hostname or not ports else ports[0]
    return names.outbound_cluster(port, d.destination.subset, host)


def _retry_policy(retries: HTTPRetry | None) -> rc.RetryPolicy:
    attempts = retries.attempts if retries is not None else DEFAULT_ATTEMPTS
    retry_on = (retries.retry_on if retries is not None and retries.retry_on else DEFAULT_RETRY_ON).split(",")
    codes = sorted({int(c) for c in retry_on if c.strip().isdigit()})
    kinds = [c.strip() for c in retry_on if c.strip() and not c.strip().isdigit()]
    if retries is None:
        codes = [503]
    if codes and "retriable-status-codes" not in kinds:
        kinds.append("retriable-status-codes")
    policy = rc.RetryPolicy(
        retry_on=",".join(kinds),
        num_retries={"value": attempts},
        retriable_status_codes=codes,
        host_selection_retry_max_attempts=5,
        retry_host_predicate=[rc.RetryPolicy.RetryHostPredicate(name="envoy.retry_host_predicates.previous_hosts", typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate()))],
    )
    if retries is not None and retries.per_try_timeout:
        policy.per_try_timeout.CopyFrom(duration(parse_duration(retries.per_try_timeout)))
    return policy


def _fault(rule: HTTPRoute) -> fault_pb2.HTTPFault:
    out = fault_pb2.HTTPFault()
    delay, abort = rule.fault.delay, rule.fault.abort
    if delay is not None:
        out.delay.CopyFrom(common_fault.FaultDelay(fixed_delay=duration(parse_duration(delay.fixed_delay)), percentage=_fraction(delay.percentage, delay.percent)))
    if abort is not None:
        out.abort.CopyFrom(fault_pb2.FaultAbort(http_status=abort.http_status, percentage=_fraction(abort.percentage, abort.percent)))
    return out


def _fraction(percentage, percent: int | None) -> percent_pb2.FractionalPercent:
    # Istio: `percentage.value` (a float) wins over the deprecated integer `percent`; neither means 100.
    if percentage is not None:
        return percent_pb2.FractionalPercent(numerator=int(round(percentage.value * 10000)), denominator=percent_pb2.FractionalPercent.MILLION)
    return percent_pb2.FractionalPercent(numerator=100 if percent is None else percent, denominator=percent_pb2.FractionalPercent.HUNDRED)


def _add_headers(route: rc.Route | rc.WeightedCluster.ClusterWeight, headers: Headers | None) -> None:
    route.request_headers_to_add.extend(_header_ops(headers, "request", "set", "add"))
    route.response_headers_to_add.extend(_header_ops(headers, "response", "set", "add"))
    route.request_headers_to_remove.extend(headers.request.remove if headers and headers.request else [])
    route.response_headers_to_remove.extend(headers.response.remove if headers and headers.response else [])


def _header_ops(headers: Headers | None, side: str, *ops: str) -> list[base_pb2.HeaderValueOption]:
    section = getattr(headers, side, None) if headers else None
    if section is None:
        return []
    action = {"set": base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD, "add": base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD}
    return [
        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v), append_action=action[op])
        for op in ops
        for k, v in sorted(getattr(section, op).items())
    ]
