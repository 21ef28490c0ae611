"""AuthorizationPolicy as Envoy RBAC on a workload's inbound listener, the way Istio compiles it.

Order of evaluation, as Istio's: CUSTOM (an RBAC filter in shadow mode marks the requests the
policies select, then ext_authz asks the external authorizer about those only; see
`translate.ext_authz`), AUDIT (RBAC action LOG: every request passes; a match sets the
`access_log_hint` metadata that access logs can filter on), DENY, then ALLOW. No ALLOW policy: no
ALLOW filter, so everything not denied passes; ALLOW policies whose rules all fail to match deny.

Each rule of each policy becomes one RBAC policy named `ns[<ns>]-policy[<name>]-rule[<i>]`, so a
decision (Envoy's `enforced_effective_policy_id` metadata, or `lattice authz check`) points at the
rule that made it. A policy with no rules compiles to one policy that never matches (`spec: {}`
allows nothing). Dry-run policies (`istio.io/dry-run: "true"`) go to the same filter's
`shadow_rules`: evaluated and counted (`rbac.istio_dry_run_<action>_.shadow_denied`), not enforced.

A rule is an OR over its `from` entries (principals) and an OR over its `to` entries
(permissions); within an entry every field must match (AND), a field matches when any value does
(OR), and a `not*` field when none does. `when` conditions join every entry on their side.
On a TCP workload, HTTP-only fields (hosts, methods, paths, requestPrincipals, request.*) cannot be
checked: an ALLOW rule using one is dropped (allowing less), a DENY or AUDIT rule drops the field
(denying more) — Istio's rule, so that not understanding a request never lets more of it through.

`rbac_configs` is the one compiled form: the sidecar's filters are built from it, and
`lattice authz check` evaluates the very same messages.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from envoy.config.core.v3 import address_pb2, extension_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac
from envoy.extensions.path.match.uri_template.v3 import uri_template_match_pb2 as uri_template
from envoy.type.matcher.v3 import metadata_pb2, path_pb2, regex_pb2, string_pb2, value_pb2

from lattice.api import Resource
from lattice.api.authorization import Operation, Rule, Source, bracket_names, is_path_template
from lattice.api.mesh_config import ExtensionProvider
from lattice.mesh import MeshSnapshot, Workload
from lattice.mesh import authz as scoping
from lattice.mesh import protocol as protocols
from lattice.translate import ext_authz, jwt, names
from lattice.translate.ext_authz import CUSTOM_POLICY_PREFIX, custom_provider
from lattice.translate.protos import pack

HTTP_FILTER = names.RBAC_HTTP_FILTER
NETWORK_FILTER = names.RBAC_NETWORK_FILTER
JWT_METADATA = "envoy.filters.http.jwt_authn"  # where jwt_authn puts verified payloads, keyed by issuer
TCP_STAT_PREFIX = names.TCP_STAT_PREFIX
SHADOW_STAT_PREFIX = {"ALLOW": "istio_dry_run_allow_", "DENY": "istio_dry_run_deny_", "AUDIT": ""}
ENVOY_ACTION = {
    "ALLOW": rbac_pb2.RBAC.ALLOW,
    "DENY": rbac_pb2.RBAC.DENY,
    "AUDIT": rbac_pb2.RBAC.LOG,
    "CUSTOM": rbac_pb2.RBAC.DENY,
}
BAD_CUSTOM_SUFFIX = "-deny-due-to-bad-CUSTOM-action"
_FILTER_NAME = {"AUDIT": "lattice.authz.audit", "DENY": "lattice.authz.deny", "ALLOW": "lattice.authz.allow"}


class HttpOnly(Exception):
    """A field a TCP filter chain cannot check."""


@dataclass(frozen=True)
class Target:
    """What compiling a rule for one workload needs besides the rule."""

    workload: Workload
    tcp: bool  # the workload's port is opaque TCP: no HTTP attributes to match
    issuers: tuple[str, ...]  # JWT issuers whose verified payloads the jwt_authn filter stores
    port: int  # the inbound listener's port (the service port)
    app_port: int  # the app's port, which Istio users write as the container port
    allow: bool = True  # compiling an ALLOW rule: on TCP an HTTP-only field drops the rule, not the field

    @staticmethod
    def of(snapshot: MeshSnapshot, proxy: Workload) -> Target:
        return Target(proxy, proxy.protocol in protocols.OPAQUE, _issuers(snapshot, proxy), proxy.port, proxy.app_port)


def _issuers(snapshot: MeshSnapshot, proxy: Workload) -> tuple[str, ...]:
    # RequestAuthentication decides which tokens are verified.
    return tuple(sorted({rule.issuer for rule in jwt.workload_rules(snapshot, proxy)}))


# --- the compiled form -----------------------------------------------------------------------------


def rbac_configs(snapshot: MeshSnapshot, proxy: Workload) -> list[tuple[str, rbac_pb2.RBAC, bool]]:
    """(action, RBAC, shadow) in evaluation order: CUSTOM, AUDIT, DENY, ALLOW, each enforced then
    dry-run. A CUSTOM entry's matches are the requests the external authorizer decides; CUSTOM
    policies whose provider cannot be used are DENY rules instead (Istio's fail-closed)."""
    policies = snapshot.authorization_policies_for(proxy)
    target = Target.of(snapshot, proxy)
    custom, broken = _custom(snapshot, scoping.by_action(policies, "CUSTOM"), target)
    out = [("CUSTOM", custom, False)] if custom is not None else []
    for action in ("AUDIT", "DENY", "ALLOW"):
        chosen = scoping.by_action(policies, action)
        for shadow in (False, True):
            subset = [p for p in chosen if scoping.dry_run(p) == shadow]
            rbac = compile_policies(subset, action, target) if subset else None
            if action == "DENY" and not shadow and broken is not None:
                rbac = broken if rbac is None else _merged(rbac, broken)
            if rbac is not None:
                out.append((action, rbac, shadow))
    return out


def _custom(
    snapshot: MeshSnapshot, policies: list[Resource], target: Target
) -> tuple[rbac_pb2.RBAC | None, rbac_pb2.RBAC | None]:
    """(the requests to ask the authorizer about, None) — or (None, DENY rules) when the provider
    is unknown or ambiguous: Istio then denies what the policies select rather than let it pass."""
    if not policies:
        return None, None
    provider, _ = custom_provider(snapshot, target.workload)
    if provider is None:
        rbac = compile_policies(policies, "DENY", target)
        return None, rbac_pb2.RBAC(
            action=rbac.action, policies={k + BAD_CUSTOM_SUFFIX: v for k, v in rbac.policies.items()}
        )
    if target.tcp and provider.envoy_ext_authz_grpc is None:
        return None, None  # Istio: an HTTP authorizer cannot judge a TCP connection, so the policy is skipped
    return compile_policies(policies, "CUSTOM", target, prefix=f"{CUSTOM_POLICY_PREFIX}-{provider.name}-"), None


def _merged(first: rbac_pb2.RBAC, second: rbac_pb2.RBAC) -> rbac_pb2.RBAC:
    out = rbac_pb2.RBAC()
    out.CopyFrom(first)
    for name, policy in second.policies.items():
        out.policies[name].CopyFrom(policy)
    return out


def compile_policies(policies: list[Resource], action: str, target: Target, prefix: str = "") -> rbac_pb2.RBAC:
    """One RBAC with a policy per rule (`prefix` + Istio's name); rules that cannot apply are left out."""
    rbac = rbac_pb2.RBAC(action=ENVOY_ACTION[action])
    for p in policies:
        if not p.spec.rules:
            rbac.policies[f"{prefix}{policy_name(p, 0)}"].CopyFrom(_never())
        for i, rule in enumerate(p.spec.rules):
            compiled = compile_rule(rule, action, target)
            if compiled is not None:
                rbac.policies[f"{prefix}{policy_name(p, i)}"].CopyFrom(compiled)
    return rbac


def policy_name(policy: Resource, rule: int) -> str:
    return f"ns[{policy.namespace}]-policy[{policy.name}]-rule[{rule}]"


def compile_rule(rule: Rule, action: str, target: Target) -> rbac_pb2.Policy | None:
    """The rule as one RBAC policy; None when it uses an HTTP-only field in an ALLOW on TCP."""
    target = replace(target, allow=action == "ALLOW")
    try:
        permissions = [
            _and_permissions(_operation_parts(op, target) + _when_permissions(rule, target), action)
            for op in rule.operations or (None,)
        ]
        principals = [
            _and_principals(_source_parts(src, target) + _when_principals(rule, target), action)
            for src in rule.sources or (None,)
        ]
    except HttpOnly:
        return None
    return rbac_pb2.Policy(permissions=permissions, principals=principals)


# --- filters ---------------------------------------------------------------------------------------


def _usable_provider(snapshot: MeshSnapshot, proxy: Workload) -> ExtensionProvider:
    """The provider of a CUSTOM group (`_custom` makes one only when the provider is usable)."""
    provider, _ = custom_provider(snapshot, proxy)
    assert provider is not None, "a CUSTOM group exists only for a usable provider"
    return provider


def http_filters(snapshot: MeshSnapshot, proxy: Workload) -> list[hcm.HttpFilter]:
    """The inbound HTTP filters for `proxy`'s policies, in evaluation order (none: none)."""
    filters = []
    for action, group in _by_action(rbac_configs(snapshot, proxy)):
        if action == "CUSTOM":
            filters += ext_authz.http_filters(snapshot, proxy, _usable_provider(snapshot, proxy), group[0][0])
            continue
        config = http_rbac.RBAC(
            **_rules_and_shadow(group), shadow_rules_stat_prefix=SHADOW_STAT_PREFIX[action] if _shadow(group) else ""
        )
        filters.append(hcm.HttpFilter(name=_FILTER_NAME[action], typed_config=pack(config)))
    return filters


def network_filters(snapshot: MeshSnapshot, proxy: Workload) -> list[listener_components_pb2.Filter]:
    """The filters to put before tcp_proxy on a TCP chain: a denied connection is closed."""
    filters = []
    for action, group in _by_action(rbac_configs(snapshot, proxy)):
        if action == "CUSTOM":
            filters += ext_authz.network_filters(snapshot, proxy, _usable_provider(snapshot, proxy), group[0][0])
            continue
        config = network_rbac.RBAC(
            **_rules_and_shadow(group),
            stat_prefix=TCP_STAT_PREFIX,
            shadow_rules_stat_prefix=SHADOW_STAT_PREFIX[action] if _shadow(group) else "",
        )
        filters.append(listener_components_pb2.Filter(name=NETWORK_FILTER, typed_config=pack(config)))
    return filters


def _by_action(configs: list[tuple[str, rbac_pb2.RBAC, bool]]) -> list[tuple[str, list[tuple[rbac_pb2.RBAC, bool]]]]:
    out: dict[str, list[tuple[rbac_pb2.RBAC, bool]]] = {}
    for action, rbac, shadow in configs:
        out.setdefault(action, []).append((rbac, shadow))
    return list(out.items())


def _rules_and_shadow(group: list[tuple[rbac_pb2.RBAC, bool]]) -> dict:
    # Absent `rules` enforce nothing: an action with only dry-run policies changes no decision.
    return {("shadow_rules" if shadow else "rules"): rbac for rbac, shadow in group}


def _shadow(group: list[tuple[rbac_pb2.RBAC, bool]]) -> bool:
    return any(shadow for _, shadow in group)


# --- one entry of `from` / `to`, and `when` --------------------------------------------------------


def _operation_parts(op: Operation | None, target: Target) -> list[tuple[list, list]]:
    """(matchers for values, matchers for notValues) per field of a `to.operation`."""
    if op is None:
        return []
    return [
        (_http(target, [_host(v) for v in op.hosts]), _http(target, [_host(v) for v in op.not_hosts])),
        (_http(target, [_method(v) for v in op.methods]), _http(target, [_method(v) for v in op.not_methods])),
        (_http(target, [_path(v) for v in op.paths]), _http(target, [_path(v) for v in op.not_paths])),
        ([_port(v, target) for v in op.ports], [_port(v, target) for v in op.not_ports]),
    ]


def _source_parts(src: Source | None, target: Target) -> list[tuple[list, list]]:
    if src is None:
        return []
    return [
        ([_principal(v) for v in src.principals], [_principal(v) for v in src.not_principals]),
        (
            _http(target, [_request_principal(v, target) for v in src.request_principals]),
            _http(target, [_request_principal(v, target) for v in src.not_request_principals]),
        ),
        ([_namespace(v) for v in src.namespaces], [_namespace(v) for v in src.not_namespaces]),
        ([_remote_ip(v) for v in src.remote_ip_blocks], [_remote_ip(v) for v in src.not_remote_ip_blocks]),
        ([_source_ip(v) for v in src.ip_blocks], [_source_ip(v) for v in src.not_ip_blocks]),
    ]


def _when_permissions(rule: Rule, target: Target) -> list[tuple[list, list]]:
    return [
        (_condition(c.key, c.values, target), _condition(c.key, c.not_values, target))
        for c in rule.when
        if _is_permission_key(c.key)
    ]


def _when_principals(rule: Rule, target: Target) -> list[tuple[list, list]]:
    return [
        (_condition(c.key, c.values, target), _condition(c.key, c.not_values, target))
        for c in rule.when
        if not _is_permission_key(c.key)
    ]


def _is_permission_key(key: str) -> bool:
    """Istio's split: what the request is for is a permission, who sends it a principal."""
    return key in ("destination.ip", "destination.port", "connection.sni") or key.startswith(
        "experimental.envoy.filters."
    )


def _condition(key: str, values: list[str], target: Target) -> list:
    simple = {
        "destination.ip": _destination_ip,
        "connection.sni": _sni,
        "source.ip": _source_ip,
        "remote.ip": _remote_ip,
        "source.namespace": _namespace,
        "source.principal": _principal,
    }
    if key in simple:
        return [simple[key](v) for v in values]
    if key == "destination.port":
        return [_port(v, target) for v in values]
    if key.startswith("experimental.envoy.filters."):
        return [_envoy_filter(key, v) for v in values]
    return _http(target, [_http_condition(key, v, target) for v in values])


def _http_condition(key: str, value: str, target: Target):
    if key == "request.auth.principal":
        return _request_principal(value, target)
    if key == "request.auth.audiences":
        return _claim(["aud"], value, target)
    if key == "request.auth.presenter":
        return _claim(["azp"], value, target)
    if key.startswith("request.auth.claims"):
        return _claim(bracket_names(key.removeprefix("request.auth.claims")), value, target)
    header = bracket_names(key.removeprefix("request.headers"))[0]
    return rbac_pb2.Principal(header=_header(header, value))


def _http(target: Target, matchers: list) -> list:
    """`matchers`, which only an HTTP request has. On TCP there is nothing to match them against:
    an ALLOW rule is dropped (HttpOnly), a DENY or AUDIT rule goes on without the field."""
    if target.tcp and matchers:
        if target.allow:
            raise HttpOnly()
        return []
    return matchers


def _and_permissions(parts: list[tuple[list, list]], action: str) -> rbac_pb2.Permission:
    rules = _combine(parts, action, rbac_pb2.Permission, "or_rules", "not_rule", "rules")
    return rbac_pb2.Permission(and_rules=rbac_pb2.Permission.Set(rules=rules or [rbac_pb2.Permission(any=True)]))


def _and_principals(parts: list[tuple[list, list]], action: str) -> rbac_pb2.Principal:
    ids = _combine(parts, action, rbac_pb2.Principal, "or_ids", "not_id", "ids")
    return rbac_pb2.Principal(and_ids=rbac_pb2.Principal.Set(ids=ids or [rbac_pb2.Principal(any=True)]))


def _combine(parts, action: str, message, or_field: str, not_field: str, list_field: str) -> list:
    """Each field as OR(values) and NOT(OR(notValues)); fields with neither are left out."""
    out = []
    for values, not_values in parts:
        if values:
            out.append(message(**{or_field: message.Set(**{list_field: values})}))
        if not_values:
            out.append(message(**{not_field: message(**{or_field: message.Set(**{list_field: not_values})})}))
    return out


def _never() -> rbac_pb2.Policy:
    """A policy nothing matches: Istio's compilation of a policy without rules."""
    return rbac_pb2.Policy(
        permissions=[rbac_pb2.Permission(not_rule=rbac_pb2.Permission(any=True))],
        principals=[rbac_pb2.Principal(not_id=rbac_pb2.Principal(any=True))],
    )


# --- single values ---------------------------------------------------------------------------------


def quote_meta(text: str) -> str:
    """Go's regexp.QuoteMeta, which Istio uses: RE2 reads the result as the literal text."""
    return "".join("\\" + c if c in "\\.+*?()|[]{}^$" else c for c in text)


def string_match(value: str, prefix: str = "", ignore_case: bool = False) -> string_pb2.StringMatcher:
    """Istio's wildcard strings: `*` anything (non-empty), `*x` suffix, `x*` prefix, else exact."""
    if value == "*":
        return _regex(".+")
    if value.startswith("*"):
        if prefix:
            return _regex(f"{quote_meta(prefix)}.*{quote_meta(value[1:])}")
        return string_pb2.StringMatcher(suffix=value[1:], ignore_case=ignore_case)
    if value.endswith("*"):
        return string_pb2.StringMatcher(prefix=prefix + value[:-1], ignore_case=ignore_case)
    return string_pb2.StringMatcher(exact=prefix + value, ignore_case=ignore_case)


def _regex(pattern: str) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))


def _header(name: str, value: str, ignore_case: bool = False) -> rc.HeaderMatcher:
    if value == "*":
        return rc.HeaderMatcher(name=name, present_match=True)
    return rc.HeaderMatcher(name=name, string_match=string_match(value, ignore_case=ignore_case))


def _host(value: str) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(header=_header(":authority", value, ignore_case=True))


def _method(value: str) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(header=_header(":method", value))


def _path(value: str) -> rbac_pb2.Permission:
    """`{*}`/`{**}` templates by Envoy's uri_template matcher; otherwise the path without its query."""
    if is_path_template(value):
        template = "/".join({"{*}": "*", "{**}": "**"}.get(s, s) for s in value.split("/"))
        config = uri_template.UriTemplateMatchConfig(path_template=template)
        return rbac_pb2.Permission(
            uri_template=extension_pb2.TypedExtensionConfig(name="uri-template", typed_config=pack(config))
        )
    return rbac_pb2.Permission(url_path=path_pb2.PathMatcher(path=string_match(value)))


def _port(value: str, target: Target) -> rbac_pb2.Permission:
    # Istio's ports are the container's; the listener here is on the service port, in front of it.
    port = int(value)
    return rbac_pb2.Permission(destination_port=target.port if port == target.app_port else port)


def _destination_ip(value: str) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(destination_ip=_cidr(value))


def _sni(value: str) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(requested_server_name=string_match(value))


def _envoy_filter(key: str, value: str) -> rbac_pb2.Permission:
    """`experimental.envoy.filters.<f>[<k>]`: the dynamic metadata filter <f> left under <k>; a
    value written `[v]` matches an element of a list."""
    filter_name, _, rest = key.removeprefix("experimental.").partition("[")
    field = rest[:-1]
    if value.startswith("[") and value.endswith("]"):
        matcher = value_pb2.ValueMatcher(
            list_match=value_pb2.ListMatcher(one_of=value_pb2.ValueMatcher(string_match=string_match(value[1:-1])))
        )
    else:
        matcher = value_pb2.ValueMatcher(string_match=string_match(value))
    return rbac_pb2.Permission(metadata=_metadata(filter_name, [field], matcher))


def _principal(value: str) -> rbac_pb2.Principal:
    """A peer identity from its verified certificate, written without `spiffe://`."""
    return rbac_pb2.Principal(
        authenticated=rbac_pb2.Principal.Authenticated(principal_name=string_match(value, prefix="spiffe://"))
    )


def _namespace(value: str) -> rbac_pb2.Principal:
    pattern = ".*".join(quote_meta(part) for part in value.split("*"))
    return rbac_pb2.Principal(
        authenticated=rbac_pb2.Principal.Authenticated(principal_name=_regex(f".*/ns/{pattern}/.*"))
    )


def _source_ip(value: str) -> rbac_pb2.Principal:
    return rbac_pb2.Principal(direct_remote_ip=_cidr(value))


def _remote_ip(value: str) -> rbac_pb2.Principal:
    return rbac_pb2.Principal(remote_ip=_cidr(value))


def _cidr(value: str) -> address_pb2.CidrRange:
    network = ipaddress.ip_network(value, strict=False)
    return address_pb2.CidrRange(address_prefix=str(network.network_address), prefix_len={"value": network.prefixlen})


def _request_principal(value: str, target: Target) -> rbac_pb2.Principal:
    """`<iss>/<sub>` of a verified token: for each issuer the workload verifies, a match on the
    `sub` jwt_authn stored under that issuer. With no issuers, no request has a principal."""
    ids = []
    for issuer in target.issuers:
        sub = _sub_matcher(value, issuer)
        if sub is not None:
            ids.append(
                rbac_pb2.Principal(
                    metadata=_metadata(JWT_METADATA, [issuer, "sub"], value_pb2.ValueMatcher(string_match=sub))
                )
            )
    return _any_of(ids)


def _sub_matcher(value: str, issuer: str) -> string_pb2.StringMatcher | None:
    """What `sub` must be for `<issuer>/<sub>` to match Istio's wildcard `value`; None: it cannot."""
    head = issuer + "/"
    if value == "*":
        return _regex(".+")
    if value.startswith("*"):
        tail = value[1:]
        # `<issuer>/<sub>` ends with tail: sub ends with it, or sub is the part of it after a split
        # point where the rest of tail ends `<issuer>/`.
        options = [f".*{quote_meta(tail)}"] + [
            quote_meta(tail[i:]) for i in range(1, len(tail) + 1) if head.endswith(tail[:i])
        ]
        return _regex("|".join(f"(?:{o})" if o else "(?:.*)" for o in options))
    if value.endswith("*"):
        start = value[:-1]
        if start.startswith(head):
            return string_pb2.StringMatcher(prefix=start[len(head) :]) if len(start) > len(head) else _regex(".*")
        return _regex(".*") if head.startswith(start) else None
    return string_pb2.StringMatcher(exact=value[len(head) :]) if value.startswith(head) else None


def _claim(path: list[str], value: str, target: Target) -> rbac_pb2.Principal:
    """A claim of a verified token, under any issuer the workload verifies; a list claim (aud,
    groups, the split `scope`) matches when one element does."""
    match = string_match(value)
    either = value_pb2.ValueMatcher(
        or_match=value_pb2.OrMatcher(
            value_matchers=[
                value_pb2.ValueMatcher(string_match=match),
                value_pb2.ValueMatcher(
                    list_match=value_pb2.ListMatcher(one_of=value_pb2.ValueMatcher(string_match=match))
                ),
            ]
        )
    )
    return _any_of(
        [rbac_pb2.Principal(metadata=_metadata(JWT_METADATA, [issuer, *path], either)) for issuer in target.issuers]
    )


def _any_of(ids: list[rbac_pb2.Principal]) -> rbac_pb2.Principal:
    if not ids:
        return rbac_pb2.Principal(not_id=rbac_pb2.Principal(any=True))
    return ids[0] if len(ids) == 1 else rbac_pb2.Principal(or_ids=rbac_pb2.Principal.Set(ids=ids))


def _metadata(filter_name: str, path: list[str], value: value_pb2.ValueMatcher) -> metadata_pb2.MetadataMatcher:
    segments = [metadata_pb2.MetadataMatcher.PathSegment(key=k) for k in path]
    return metadata_pb2.MetadataMatcher(filter=filter_name, path=segments, value=value)
