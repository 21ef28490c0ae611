"""Why a request is allowed or denied: Envoy's RBAC semantics, evaluated in Python on the very
RBAC configs the translator sends to the sidecar (`authz.rbac_configs`), so `lattice authz check`
answers from the same compiled policy that Envoy enforces, not from a second reading of the YAML.

Pure: a `Request` (what the destination sidecar would know about it) and the ordered RBAC stages
in, a `Decision` out. Envoy's order is kept: every stage runs in filter order; an enforced DENY
stage that matches denies; an enforced ALLOW stage denies unless one of its policies matches;
shadow (dry-run) stages are evaluated and reported, never enforced.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from envoy.config.core.v3 import address_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.path.match.uri_template.v3 import uri_template_match_pb2
from envoy.type.matcher.v3 import metadata_pb2, string_pb2, value_pb2


class Unexplainable(ValueError):
    """An RBAC construct this evaluator does not model (it would rather say so than guess)."""


@dataclass(frozen=True)
class Request:
    """A request as the destination sidecar sees it."""

    method: str = "GET"
    path: str = "/"  # may carry a query; RBAC path matchers see it without
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    host: str = ""
    peer_uri: str | None = None  # the verified client certificate's URI SAN; None over plaintext
    source_ip: str = "127.0.0.1"
    destination_ip: str = "127.0.0.1"
    destination_port: int = 0
    sni: str = ""
    metadata: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # dynamic metadata by filter

    def header(self, name: str) -> str | None:
        if name == ":method":
            return self.method
        if name == ":path":
            return self.path
        if name in (":authority", "host"):
            return self.host or self.headers.get("host")
        return self.headers.get(name)

    @property
    def path_only(self) -> str:
        return self.path.split("?", 1)[0]


@dataclass(frozen=True)
class StageResult:
    action: str  # ALLOW, DENY, LOG
    shadow: bool
    matched: tuple[str, ...]  # names of the policies that matched, in Envoy's (sorted) order

    @property
    def denies(self) -> bool:
        return (self.action == "DENY" and bool(self.matched)) or (self.action == "ALLOW" and not self.matched)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # one line: which policy and rule decided, or why nothing did
    stages: tuple[StageResult, ...]
    external: str = ""  # a CUSTOM policy matched: this external authorizer decides too (not called here)

    @property
    def dry_run(self) -> tuple[StageResult, ...]:
        return tuple(s for s in self.stages if s.shadow)


_ACTIONS = {rbac_pb2.RBAC.ALLOW: "ALLOW", rbac_pb2.RBAC.DENY: "DENY", rbac_pb2.RBAC.LOG: "LOG"}
_CUSTOM_PREFIX = "istio-ext-authz-"


def decide(stages: list[tuple[str, rbac_pb2.RBAC, bool]], request: Request) -> Decision:
    """Run `stages` ((label, RBAC, shadow) in filter order) on `request`, as Envoy would.

    A `CUSTOM` stage only marks the requests its external authorizer is asked about; the others
    deny when they must (an enforced DENY that matches, an enforced ALLOW that does not)."""
    results, verdict, external = [], None, ""
    for label, config, shadow in stages:
        matched = tuple(name for name in sorted(config.policies) if _policy(config.policies[name], request))
        if label == "CUSTOM":
            results.append(StageResult("CUSTOM", False, matched))
            external = _provider(matched[0]) if matched else ""
            continue
        result = StageResult(_ACTIONS[config.action], shadow, matched)
        results.append(result)
        if verdict is None and not shadow and result.denies:
            verdict = _denial(result)
    if verdict is not None:
        return Decision(False, verdict, tuple(results), external)
    allowing = next((r for r in results if not r.shadow and r.action == "ALLOW"), None)
    reason = (
        f"allowed by {allowing.matched[0]}"
        if allowing
        else "allowed: no ALLOW policy applies to this workload, and no DENY policy matched"
    )
    if external:
        reason = f"the external authorizer {external!r} decides (CUSTOM policy); if it allows: {reason}"
    return Decision(True, reason, tuple(results), external)


def _provider(policy_name: str) -> str:
    rest = policy_name.removeprefix(_CUSTOM_PREFIX)
    return rest.split("-ns[", 1)[0] if rest != policy_name else policy_name


def _denial(result: StageResult) -> str:
    if result.action == "DENY":
        return f"denied by {result.matched[0]}"
    return "denied: ALLOW policies apply to this workload and none of their rules matched"


def _policy(policy: rbac_pb2.Policy, r: Request) -> bool:
    if policy.HasField("condition") or policy.HasField("checked_condition"):
        raise Unexplainable("a CEL condition")
    return any(_permission(p, r) for p in policy.permissions) and any(_principal(p, r) for p in policy.principals)


def _permission(p: rbac_pb2.Permission, r: Request) -> bool:
    kind = p.WhichOneof("rule")
    if kind == "any":
        return p.any
    if kind == "and_rules":
        return all(_permission(x, r) for x in p.and_rules.rules)
    if kind == "or_rules":
        return any(_permission(x, r) for x in p.or_rules.rules)
    if kind == "not_rule":
        return not _permission(p.not_rule, r)
    if kind == "header":
        return _header(p.header, r)
    if kind == "url_path":
        return _string(p.url_path.path, r.path_only)
    if kind == "destination_ip":
        return _cidr(p.destination_ip, r.destination_ip)
    if kind == "destination_port":
        return p.destination_port == r.destination_port
    if kind == "destination_port_range":
        return p.destination_port_range.start <= r.destination_port < p.destination_port_range.end
    if kind == "metadata":
        return _metadata(p.metadata, r)
    if kind == "requested_server_name":
        return _string(p.requested_server_name, r.sni)
    if kind == "uri_template":
        return _uri_template(p.uri_template, r.path_only)
    raise Unexplainable(f"RBAC permission {kind!r}")


def _principal(p: rbac_pb2.Principal, r: Request) -> bool:
    kind = p.WhichOneof("identifier")
    if kind == "any":
        return p.any
    if kind == "and_ids":
        return all(_principal(x, r) for x in p.and_ids.ids)
    if kind == "or_ids":
        return any(_principal(x, r) for x in p.or_ids.ids)
    if kind == "not_id":
        return not _principal(p.not_id, r)
    if kind == "authenticated":
        # Envoy: the URI SAN of a verified peer certificate (no certificate, no match).
        if r.peer_uri is None:
            return False
        return not p.authenticated.HasField("principal_name") or _string(p.authenticated.principal_name, r.peer_uri)
    if kind in ("direct_remote_ip", "source_ip", "remote_ip"):
        return _cidr(getattr(p, kind), r.source_ip)
    if kind == "header":
        return _header(p.header, r)
    if kind == "url_path":
        return _string(p.url_path.path, r.path_only)
    if kind == "metadata":
        return _metadata(p.metadata, r)
    raise Unexplainable(f"RBAC principal {kind!r}")


def _header(m: rc.HeaderMatcher, r: Request) -> bool:
    value = r.header(m.name.lower())
    kind = m.WhichOneof("header_match_specifier")
    if value is None and m.treat_missing_header_as_empty:
        value = ""
    if kind == "present_match":
        return (value is not None) == m.present_match
    if value is None:
        return False  # Envoy: a missing header matches nothing, inverted or not
    if kind == "string_match":
        hit = _string(m.string_match, value)
    elif kind == "exact_match":
        hit = value == m.exact_match
    elif kind == "prefix_match":
        hit = value.startswith(m.prefix_match)
    elif kind == "suffix_match":
        hit = value.endswith(m.suffix_match)
    elif kind == "contains_match":
        hit = m.contains_match in value
    elif kind == "safe_regex_match":
        hit = re.fullmatch(m.safe_regex_match.regex, value) is not None
    else:
        raise Unexplainable(f"header match {kind!r}")
    return hit != m.invert_match


def _string(m: string_pb2.StringMatcher, value: str) -> bool:
    kind = m.WhichOneof("match_pattern")
    if kind == "safe_regex":
        return re.fullmatch(m.safe_regex.regex, value) is not None
    fold = (lambda x: x.lower()) if m.ignore_case else (lambda x: x)
    value, pattern = fold(value), fold(getattr(m, kind, "") if kind else "")
    if kind == "exact":
        return value == pattern
    if kind == "prefix":
        return value.startswith(pattern)
    if kind == "suffix":
        return value.endswith(pattern)
    if kind == "contains":
        return pattern in value
    raise Unexplainable(f"string match {kind!r}")


def _cidr(c: address_pb2.CidrRange, ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(
            f"{c.address_prefix}/{_prefix_len(c)}",
            strict=False,
        )
    except ValueError:
        return False


def _metadata(m: metadata_pb2.MetadataMatcher, r: Request) -> bool:
    value: Any = r.metadata.get(m.filter)
    for segment in m.path:
        value = value.get(segment.key) if isinstance(value, Mapping) else None
    return _value(m.value, value) != m.invert


def _value(m: value_pb2.ValueMatcher, value: Any) -> bool:
    kind = m.WhichOneof("match_pattern")
    if kind == "present_match":
        return (value is not None) == m.present_match
    if value is None:
        return False
    if kind == "string_match":
        return isinstance(value, str) and _string(m.string_match, value)
    if kind == "bool_match":
        return value is m.bool_match
    if kind == "list_match":
        return isinstance(value, list) and any(_value(m.list_match.one_of, v) for v in value)
    if kind == "or_match":
        return any(_value(x, value) for x in m.or_match.value_matchers)
    if kind == "double_match":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value == m.double_match.exact
    raise Unexplainable(f"metadata value match {kind!r}")


def _uri_template(config, path: str) -> bool:
    template = uri_template_match_pb2.UriTemplateMatchConfig()
    if not config.typed_config.Unpack(template):
        raise Unexplainable(f"uri_template extension {config.name!r}")
    return re.fullmatch(template_regex(template.path_template), path) is not None


def template_regex(template: str) -> str:
    """Envoy's URI template as a regex: `{*}` (or `{name}`) is one path segment, `{**}` (or
    `{name=**}`) any number of them, everything else literal."""
    out = []
    for part in re.split(r"(\{[^}]*\})", template):
        if part in ("{**}",) or (part.startswith("{") and part.endswith("=**}")):
            out.append(r"[^?#]*")
        elif part.startswith("{") and part.endswith("}"):
            out.append(r"[^/?#]+")
        else:
            out.append(re.escape(part))
    return "".join(out)


def _prefix_len(cidr) -> int:
    """A CIDR range's length; a whole address when it gives none."""
    return cidr.prefix_len.value if cidr.HasField("prefix_len") else 32 if "." in cidr.address_prefix else 128
