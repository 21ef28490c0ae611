"""Istio `security.istio.io` AuthorizationPolicy (v1beta1 and v1 share one schema).

Validation follows Istio's own (`ValidateAuthorizationPolicy`): a `from`, `to` or `when` list that
is present must say something (`from: []`, a source or operation with no field set, a condition
with neither values nor notValues are errors, since Istio refuses them rather than reading them as
"anything"); values are never empty strings; IPs and CIDRs, ports, path templates and condition
keys are checked. Which policies apply to a workload is decided in `lattice.mesh.authz`; what they
compile to, in `lattice.translate.authz`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lattice.api.errors import FieldError
from lattice.api.networking import IstioSpec
from lattice.api.security import WorkloadSelector

Action = Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"]
DRY_RUN = "istio.io/dry-run"
# `when` keys Istio documents, exact or as `prefix[...]`. Other `experimental.*` keys are refused.
CONDITION_KEYS = (
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
)
MAP_KEYS = ("request.headers", "request.auth.claims", "experimental.envoy.filters.")
_IP_KEYS = ("source.ip", "remote.ip", "destination.ip")
_TEMPLATE_LITERAL = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@%]*$")  # RFC 3986 pchar, as Envoy's uri_template wants


def _values(v: list[str]) -> list[str]:
    if any(item == "" for item in v):
        raise ValueError("empty value not allowed")
    return v


def check_ips(v: list[str]) -> list[str]:
    """Each an IP address or a CIDR block, as Istio's ipBlocks accept."""
    for item in v:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR block") from None
    return v


def _ports(v: list[Any]) -> list[str]:
    # Istio's ports are strings; YAML written by hand often has numbers, which mean the same.
    out = [str(p) if isinstance(p, int) and not isinstance(p, bool) else p for p in v]
    for p in out:
        if not isinstance(p, str) or not p.isdigit() or int(p) > 65535:
            raise ValueError(f"{p!r} is not a port number 0..65535")
    return out


def is_path_template(path: str) -> bool:
    return "{*}" in path or "{**}" in path


def check_path_templates(v: list[str]) -> list[str]:
    """Istio's rules for `{*}` (one segment) and `{**}` (the rest): whole segments only, `{**}` last,
    no other braces, and segments Envoy's uri_template matcher accepts as literals."""
    for path in v:
        template = is_path_template(path)
        if template and not path.startswith("/"):
            raise ValueError(f"path template {path!r} must start with '/'")
        seen_any = False
        for segment in path.strip("/").split("/"):
            if segment in ("{*}", "{**}"):
                if seen_any:
                    raise ValueError(f"invalid path {path!r}: {{**}} must be the last operator")
                seen_any = segment == "{**}"
                continue
            if "{" in segment or "}" in segment:
                raise ValueError(f"invalid path {path!r}: '{{' or '}}' beyond a supported template ({{*}} or {{**}})")
            if template and not _TEMPLATE_LITERAL.match(segment):
                raise ValueError(f"invalid path {path!r}: segment {segment!r} is not a valid path literal")
    return v


def bracket_names(text: str) -> list[str]:
    """`[a][b]` as ["a", "b"]; ValueError unless the text is one or more non-empty bracketed names."""
    names = re.findall(r"\[([^\[\]]+)\]", text)
    if not names or "".join(f"[{n}]" for n in names) != text:
        raise ValueError(f"{text!r} is not one or more [name] parts")
    return names


def check_condition_key(key: str) -> str:
    """`key` if Istio documents it; ValueError saying what is accepted otherwise."""
    if key in CONDITION_KEYS:
        return key
    if key.startswith("request.headers"):
        names = bracket_names(key.removeprefix("request.headers"))
        if len(names) != 1:
            raise ValueError(f"{key!r}: give one header name, request.headers[<name>]")
        return key
    if key.startswith("request.auth.claims"):
        bracket_names(key.removeprefix("request.auth.claims"))
        return key
    if key.startswith("experimental.envoy.filters."):
        filter_name, _, rest = key.removeprefix("experimental.").partition("[")
        if not rest or len(bracket_names("[" + rest)) != 1 or filter_name.endswith("."):
            raise ValueError(f"{key!r}: write experimental.envoy.filters.<filter>[<metadata key>]")
        return key
    known = ", ".join(
        [
            *CONDITION_KEYS,
            "request.headers[<name>]",
            "request.auth.claims[<name>]",
            "experimental.envoy.filters.<filter>[<key>]",
        ]
    )
    raise ValueError(f"unknown attribute {key!r}; Istio's conditions are {known}")


class Source(IstioSpec):
    principals: list[str] = Field(default_factory=list)
    not_principals: list[str] = Field(default_factory=list)
    request_principals: list[str] = Field(default_factory=list)
    not_request_principals: list[str] = Field(default_factory=list)
    namespaces: list[str] = Field(default_factory=list)
    not_namespaces: list[str] = Field(default_factory=list)
    ip_blocks: list[str] = Field(default_factory=list)
    not_ip_blocks: list[str] = Field(default_factory=list)
    remote_ip_blocks: list[str] = Field(default_factory=list)
    not_remote_ip_blocks: list[str] = Field(default_factory=list)

    _non_empty = field_validator("*")(_values)
    _ips = field_validator("ip_blocks", "not_ip_blocks", "remote_ip_blocks", "not_remote_ip_blocks")(check_ips)

    @model_validator(mode="after")
    def _says_something(self) -> Source:
        if not any(getattr(self, name) for name in type(self).model_fields):
            raise ValueError(
                "`from.source` must not be empty: set at least one field, or leave `from` out to match any source"
            )
        return self


class Operation(IstioSpec):
    hosts: list[str] = Field(default_factory=list)
    not_hosts: list[str] = Field(default_factory=list)
    ports: list[str] = Field(default_factory=list)
    not_ports: list[str] = Field(default_factory=list)
    methods: list[str] = Field(default_factory=list)
    not_methods: list[str] = Field(default_factory=list)
    paths: list[str] = Field(default_factory=list)
    not_paths: list[str] = Field(default_factory=list)

    _port_numbers = field_validator("ports", "not_ports", mode="before")(_ports)
    _non_empty = field_validator("*")(_values)
    _templates = field_validator("paths", "not_paths")(check_path_templates)

    @model_validator(mode="after")
    def _says_something(self) -> Operation:
        if not any(getattr(self, name) for name in type(self).model_fields):
            raise ValueError(
                "`to.operation` must not be empty: set at least one field, or leave `to` out to match any operation"
            )
        return self


class RuleFrom(IstioSpec):
    source: Source


class RuleTo(IstioSpec):
    operation: Operation


class Condition(IstioSpec):
    key: str
    values: list[str] = Field(default_factory=list)
    not_values: list[str] = Field(default_factory=list)

    _key = field_validator("key")(check_condition_key)
    _non_empty = field_validator("values", "not_values")(_values)

    @model_validator(mode="after")
    def _checked_values(self) -> Condition:
        if not self.values and not self.not_values:
            raise ValueError(f"at least one of `values` or `notValues` must be set for key {self.key}")
        if self.key in _IP_KEYS:
            check_ips(self.values + self.not_values)
        if self.key == "destination.port":
            _ports(self.values + self.not_values)
        return self


class Rule(IstioSpec):
    from_: list[RuleFrom] | None = Field(default=None, alias="from")
    to: list[RuleTo] | None = None
    when: list[Condition] = Field(default_factory=list)

    @field_validator("from_", "to")
    @classmethod
    def _present_means_something(cls, v: list | None, info) -> list | None:
        if v is not None and not v:
            name = "from" if info.field_name == "from_" else "to"
            raise ValueError(f"`{name}` must not be empty; leave it out to match anything")
        return v

    @property
    def sources(self) -> list[Source]:
        return [f.source for f in self.from_ or ()]

    @property
    def operations(self) -> list[Operation]:
        return [t.operation for t in self.to or ()]


class Provider(IstioSpec):
    name: str = Field(min_length=1)


class PolicyTargetReference(IstioSpec):
    group: str = ""
    kind: str
    name: str
    namespace: str | None = None


_NO_TARGET_REFS = (
    "not supported: Istio attaches a policy to a Service or ServiceEntry only on waypoint proxies and "
    "to a Gateway only on Gateway API gateways, none of which Lattice runs; select the workloads with "
    "`selector.matchLabels` instead"
)


class AuthorizationPolicySpec(IstioSpec):
    selector: WorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: list[PolicyTargetReference] = Field(default_factory=list)
    action: Action = "ALLOW"
    provider: Provider | None = None
    rules: list[Rule] = Field(default_factory=list)

    @field_validator("target_ref", "target_refs")
    @classmethod
    def _no_targets(cls, v: Any) -> Any:
        if v:
            raise ValueError(_NO_TARGET_REFS)
        return v

    @model_validator(mode="after")
    def _provider_with_custom(self) -> AuthorizationPolicySpec:
        if self.action == "CUSTOM" and self.provider is None:
            raise ValueError("`provider` must be set when action is CUSTOM")
        if self.action != "CUSTOM" and self.provider is not None:
            raise ValueError("`provider` is only allowed with action CUSTOM")
        return self

    @property
    def match_labels(self) -> dict[str, str]:
        """The selector's labels; empty means every workload of the namespace (or the mesh, in the root namespace)."""
        return self.selector.match_labels if self.selector else {}

    @classmethod
    def metadata_errors(cls, metadata, spec: AuthorizationPolicySpec) -> list[FieldError]:
        """The dry-run annotation must read as a boolean, and CUSTOM policies cannot be dry-run:
        Istio still calls the external authorizer for them and enforces its answer."""
        value = metadata.annotations.get(DRY_RUN)
        if value is None:
            return []
        path = f"metadata.annotations.{DRY_RUN}"
        if value.lower() not in ("true", "false", "1", "0", "t", "f"):
            return [FieldError(path, f"{value!r} is not a boolean; use \"true\" or \"false\"")]
        if is_true(value) and spec is not None and spec.action == "CUSTOM":
            return [
                FieldError(
                    path, "dry-run is not supported for action CUSTOM: the external authorizer would still decide"
                )
            ]
        return []


def is_true(value: str | None) -> bool:
    """Go's strconv.ParseBool truths, which Istio uses for the dry-run annotation."""
    return (value or "").lower() in ("true", "1", "t")


def is_dry_run(metadata) -> bool:
    return is_true(metadata.annotations.get(DRY_RUN))
