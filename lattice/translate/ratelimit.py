"""RateLimitPolicy limits as Envoy's local rate limit filter on a workload's inbound HTTP listener.

One filter per inbound connection manager holds every limit that applies to the workload (see
`lattice.mesh.rate_limits`). Each limit becomes a descriptor source (`rate_limits`) plus token
buckets (`descriptors`), so requests are counted in the filter's buckets, shared by every route:
- the limit's key entry is produced only when its `match` holds (method and header conditions by
  typed header matchers; the path by CEL on `request.url_path`, which, unlike `:path`, excludes the
  query string);
- `by` adds a second entry (the header's value, or the caller's SPIFFE ID read by CEL from the
  verified peer certificate) and a wildcard bucket, which Envoy splits into one bucket per value.
  Requests without that value (header absent, plaintext caller) share the limit's plain bucket, so
  leaving the header out never escapes the limit.
Envoy consumes a token from every matched bucket, most restrictive first; the request is refused
with 429 at the first empty one, and the x-ratelimit-* headers describe that bucket. Requests no
limit matches have no bucket at all (no default bucket): they pass without x-ratelimit-* headers.
"""

from __future__ import annotations

import json

from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2 as lrl
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.rate_limit_descriptors.expr.v3 import expr_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2, token_bucket_pb2

from lattice.api.networking import StringMatch
from lattice.api.ratelimit import Limit, RequestMatch
from lattice.mesh import MeshSnapshot, Workload
from lattice.translate.protos import duration, pack

FILTER = "envoy.filters.http.local_ratelimit"
LIMIT_KEY = "lattice.limit"
PATH_KEY = "lattice.path"
BY_KEY = "lattice.by"
# Distinct clients (or header values) remembered per limit; the least recently seen are forgotten,
# and come back with a full bucket.
MAX_TRACKED_KEYS = 10_000
CALLER_IDENTITY = "connection.uri_san_peer_certificate"


def inbound_filters(snapshot: MeshSnapshot, proxy: Workload) -> list[hcm.HttpFilter]:
    """The filters the inbound HTTP connection manager needs for `proxy`'s limits (none: none)."""
    limits = workload_limits(snapshot, proxy)
    if not limits:
        return []
    return [hcm.HttpFilter(name=FILTER, typed_config=pack(local_rate_limit(limits, proxy.port)))]


def workload_limits(snapshot: MeshSnapshot, proxy: Workload) -> list[tuple[str, Limit]]:
    """Every limit `proxy` enforces, keyed by `namespace/policy/limit` (or `limits[i]` when unnamed)."""
    return [
        (f"{p.namespace}/{p.name}/{limit.name or f'limits[{i}]'}", limit)
        for p in snapshot.rate_limit_policies_for(proxy)
        for i, limit in enumerate(p.spec.limits)
    ]


def local_rate_limit(limits: list[tuple[str, Limit]], port: int) -> lrl.LocalRateLimit:
    always = base_pb2.RuntimeFractionalPercent(default_value=percent_pb2.FractionalPercent(numerator=100))
    config = lrl.LocalRateLimit(
        stat_prefix=f"inbound_{port}_ratelimit",
        filter_enabled=always,
        filter_enforced=always,
        enable_x_ratelimit_headers=ratelimit_pb2.DRAFT_VERSION_03,
        # No default bucket: a request that no limit matches is not limited, and is not reported.
        always_consume_default_token_bucket={"value": False},
        max_dynamic_descriptors={"value": MAX_TRACKED_KEYS},
    )
    for key, limit in limits:
        config.rate_limits.append(_descriptor_source(key, limit))
        config.descriptors.extend(_buckets(key, limit))
    return config


def _descriptor_source(key: str, limit: Limit) -> rc.RateLimit:
    match = limit.match or RequestMatch()
    headers = _header_conditions(match)
    if headers:
        first = rc.RateLimit.Action(
            header_value_match=rc.RateLimit.Action.HeaderValueMatch(
                descriptor_key=LIMIT_KEY, descriptor_value=key, headers=headers
            )
        )
    else:
        first = rc.RateLimit.Action(
            generic_key=rc.RateLimit.Action.GenericKey(descriptor_key=LIMIT_KEY, descriptor_value=key)
        )
    actions = [first]
    if match.path is not None:
        actions.append(_cel(PATH_KEY, _path_condition(match.path), skip_if_error=False))
    if limit.by is not None and limit.by.header is not None:
        actions.append(
            rc.RateLimit.Action(
                request_headers=rc.RateLimit.Action.RequestHeaders(
                    header_name=limit.by.header, descriptor_key=BY_KEY, skip_if_absent=True
                )
            )
        )
    elif limit.by is not None:
        # Errors (no peer certificate: a plaintext caller) drop only this entry, so such callers
        # land in the limit's shared bucket rather than escaping it.
        actions.append(_cel(BY_KEY, CALLER_IDENTITY, skip_if_error=True))
    return rc.RateLimit(actions=actions)


def _buckets(key: str, limit: Limit) -> list[ratelimit_pb2.LocalRateLimitDescriptor]:
    entries = [ratelimit_pb2.RateLimitDescriptor.Entry(key=LIMIT_KEY, value=key)]
    if limit.match is not None and limit.match.path is not None:
        entries.append(ratelimit_pb2.RateLimitDescriptor.Entry(key=PATH_KEY, value="true"))
    bucket = token_bucket_pb2.TokenBucket(
        max_tokens=limit.bucket_size,
        tokens_per_fill={"value": limit.requests},
        fill_interval=duration(limit.period_ms / 1000),
    )
    shared = ratelimit_pb2.LocalRateLimitDescriptor(entries=entries, token_bucket=bucket)
    if limit.by is None:
        return [shared]
    # An empty value is Envoy's wildcard: one bucket per distinct value seen.
    per_key = ratelimit_pb2.LocalRateLimitDescriptor(
        entries=[*entries, ratelimit_pb2.RateLimitDescriptor.Entry(key=BY_KEY, value="")], token_bucket=bucket
    )
    return [shared, per_key]


def _header_conditions(match: RequestMatch) -> list[rc.HeaderMatcher]:
    out = []
    if len(match.methods) == 1:
        out.append(rc.HeaderMatcher(name=":method", string_match=string_pb2.StringMatcher(exact=match.methods[0])))
    elif match.methods:
        # Method names are validated tokens of [A-Z0-9-]: nothing in them needs escaping.
        out.append(rc.HeaderMatcher(name=":method", string_match=_regex("|".join(match.methods))))
    for name, value in sorted(match.headers.items()):
        out.append(rc.HeaderMatcher(name=name, string_match=_string(value)))
    return out


def _string(match: StringMatch) -> string_pb2.StringMatcher:
    if match.exact is not None:
        return string_pb2.StringMatcher(exact=match.exact)
    if match.prefix is not None:
        return string_pb2.StringMatcher(prefix=match.prefix)
    assert match.regex is not None, "validation: exactly one of exact, prefix, regex"
    return _regex(match.regex)


def _regex(pattern: str) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))


def _path_condition(path: StringMatch) -> str:
    """A CEL test of the request's path without its query; JSON string literals are CEL's too."""
    if path.exact is not None:
        return f"request.url_path == {_literal(path.exact)}"
    if path.prefix is not None:
        return f"request.url_path.startsWith({_literal(path.prefix)})"
    # CEL's matches() finds the pattern anywhere; anchor it to match the whole path, as Istio does.
    return f"request.url_path.matches({_literal(f'^(?:{path.regex})$')})"


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _cel(descriptor_key: str, expression: str, skip_if_error: bool) -> rc.RateLimit.Action:
    descriptor = expr_pb2.Descriptor(descriptor_key=descriptor_key, text=expression, skip_if_error=skip_if_error)
    return rc.RateLimit.Action(
        extension=extension_pb2.TypedExtensionConfig(
            name="envoy.rate_limit_descriptors.expr", typed_config=pack(descriptor)
        )
    )
