"""Istio's proxy extensions (`extensions.istio.io/v1alpha1`): TrafficExtension and WasmPlugin.

TrafficExtension (Istio 1.30) carries either a Proxy-Wasm module (`wasm`) or inline Lua (`lua`);
WasmPlugin is its older, Wasm-only form and reads as a TrafficExtension with `wasm` set
(`as_traffic_extension`). Both select workloads as Istio's policies do (`selector` in the
resource's namespace, none for the whole namespace, or the mesh in the root namespace) or attach
by `targetRefs` to a Service's sidecars or a Gateway API Gateway.

Where the filter runs: `phase` (AUTHN, AUTHZ, STATS, or unspecified: just before the router) and
`priority` (higher first within a phase), on the side `match` names (CLIENT: outbound, SERVER:
inbound, optionally only some ports). Modules come from `file://` (a path on the control plane's
host), `http://` (then `sha256` is required: nothing else vouches for the bytes), `https://`, or
`oci://` (an image in a registry, pinned by the image's digest; no scheme means OCI, as in Istio);
the control plane fetches them, checks `sha256`, keeps them by digest and serves them to agents.

Refused with the reason, never ignored: `imagePullSecret` (no pull secrets yet: anonymous pulls
only), `verificationKey` (Istio hides and does not implement it either), NETWORK plugins on the
client side, a HOST environment variable given a value.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lattice.api.networking import IstioSpec
from lattice.api.security import WorkloadSelector

Phase = Literal["UNSPECIFIED", "UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"]
FailStrategy = Literal["FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"]
PluginType = Literal["UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK"]
WorkloadMode = Literal["UNDEFINED", "CLIENT", "SERVER", "CLIENT_AND_SERVER"]
SHA256 = re.compile(r"^[a-f0-9]{64}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_LUA_BYTES = 65536
_SCHEMES = ("oci://", "file://", "http://", "https://")
_OCI = re.compile(r"^oci://[^/]+/[a-z0-9]+(?:[._/-][a-z0-9]+)*(?:[:@].+)?$")
_NETWORK_SERVER_ONLY = (
    "a NETWORK plugin runs on the sidecar's inbound TCP connections only: set match to [{mode: SERVER}]"
)


class PortSelector(IstioSpec):
    number: int = Field(ge=1, le=65535)


class TrafficSelector(IstioSpec):
    """Which traffic passes the filter: a side of the sidecar, optionally some of its ports."""

    mode: WorkloadMode = "CLIENT_AND_SERVER"
    ports: list[PortSelector] = Field(default_factory=list)

    @property
    def sides(self) -> frozenset[str]:
        return (
            frozenset(("CLIENT", "SERVER"))
            if self.mode in ("UNDEFINED", "CLIENT_AND_SERVER")
            else frozenset((self.mode,))
        )


class TargetReference(IstioSpec):
    """A Service (its workloads' sidecars) or a Gateway API Gateway (its gateway proxies)."""

    group: str = ""
    kind: str
    name: str = Field(min_length=1)
    namespace: str | None = None

    @model_validator(mode="after")
    def _supported(self) -> TargetReference:
        if (self.group, self.kind) not in (
            ("", "Service"),
            ("core", "Service"),
            ("gateway.networking.k8s.io", "Gateway"),
        ):
            raise ValueError(
                f"target {self.group or 'core'}/{self.kind} is not supported: an extension attaches to a "
                "Service's sidecars (group: \"\", kind: Service) or to a Gateway "
                "(group: gateway.networking.k8s.io, kind: Gateway)"
            )
        return self

    @property
    def is_service(self) -> bool:
        return self.kind == "Service"


class EnvVar(IstioSpec):
    name: str = Field(min_length=1)
    value: str = ""
    value_from: Literal["INLINE", "HOST"] = "INLINE"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not ENV_NAME.match(v):
            raise ValueError(f"{v!r} is not an environment variable name (letters, digits and '_')")
        return v

    @model_validator(mode="after")
    def _host_has_no_value(self) -> EnvVar:
        if self.value_from == "HOST" and self.value:
            raise ValueError("a HOST variable takes its value from the proxy's environment: leave out value")
        return self


class VmConfig(IstioSpec):
    env: list[EnvVar] = Field(default_factory=list)

    @field_validator("env")
    @classmethod
    def _unique(cls, v: list[EnvVar]) -> list[EnvVar]:
        names = [e.name for e in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} set more than once")
        return v


class WasmConfig(IstioSpec):
    """A Proxy-Wasm module and how to run it (WasmPlugin has the same fields at its top level)."""

    url: str = Field(min_length=1)
    sha256: str = ""
    image_pull_policy: Literal["UNSPECIFIED_POLICY", "IfNotPresent", "Always"] = "UNSPECIFIED_POLICY"
    image_pull_secret: str = ""
    verification_key: str = ""
    plugin_config: dict[str, Any] = Field(default_factory=dict)
    plugin_name: str = Field(default="", max_length=256)
    fail_strategy: FailStrategy = "FAIL_CLOSE"
    vm_config: VmConfig | None = None
    type: PluginType = "UNSPECIFIED_PLUGIN_TYPE"

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if "://" not in v:
            v = f"oci://{v}"  # Istio: no scheme means an OCI image
        if not v.startswith(_SCHEMES):
            raise ValueError(f"{v!r}: the scheme must be oci://, file://, http:// or https://")
        if v.startswith("file://") and not v.removeprefix("file://").startswith("/"):
            raise ValueError(f"{v!r}: a file:// URL needs an absolute path, e.g. file:///opt/filters/plugin.wasm")
        if v.startswith("oci://") and not _OCI.match(v):
            raise ValueError(f"{v!r} is not an image reference: oci://registry[:port]/repository[:tag|@sha256:digest]")
        return v

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, v: str) -> str:
        if v and not SHA256.match(v):
            raise ValueError("must be 64 lower-case hex digits (the module's SHA-256)")
        return v

    @field_validator("image_pull_secret")
    @classmethod
    def _no_pull_secret(cls, v: str) -> str:
        if v:
            raise ValueError(
                "Lattice pulls OCI images anonymously (a registry's bearer challenge included); "
                "it keeps no pull secrets yet: make the repository public to the control plane, or use https://"
            )
        return v

    @field_validator("verification_key")
    @classmethod
    def _no_verification_key(cls, v: str) -> str:
        if v:
            raise ValueError("not implemented (Istio hides this field and does not implement it either); pin sha256")
        return v

    @model_validator(mode="after")
    def _plain_http_is_pinned(self) -> WasmConfig:
        if self.url.startswith("http://") and not self.sha256:
            raise ValueError(
                "a module fetched over plain http:// must be pinned with sha256: nothing else vouches for its bytes"
            )
        return self

    @property
    def network(self) -> bool:
        return self.type == "NETWORK"


class LuaConfig(IstioSpec):
    inline_code: str = Field(min_length=1, max_length=MAX_LUA_BYTES)

    @field_validator("inline_code")
    @classmethod
    def _has_a_callback(cls, v: str) -> str:
        if "envoy_on_request" not in v and "envoy_on_response" not in v:
            raise ValueError("the script must define envoy_on_request(request_handle) and/or envoy_on_response")
        return v


class TrafficExtensionSpec(IstioSpec):
    selector: WorkloadSelector | None = None
    target_refs: list[TargetReference] = Field(default_factory=list, max_length=16)
    phase: Phase = "UNSPECIFIED"
    priority: int = Field(default=0, ge=-(2**31), le=2**31 - 1)
    match: list[TrafficSelector] = Field(default_factory=list)
    wasm: WasmConfig | None = None
    lua: LuaConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TrafficExtensionSpec:
        if (self.wasm is None) == (self.lua is None):
            raise ValueError("set exactly one of wasm or lua")
        if self.selector is not None and self.target_refs:
            raise ValueError("set selector or targetRefs, not both (as in Istio)")
        if (
            self.wasm is not None
            and self.wasm.network
            and any("CLIENT" in m.sides for m in self.match or [TrafficSelector()])
        ):
            raise ValueError(_NETWORK_SERVER_ONLY)
        return self

    @property
    def match_labels(self) -> dict[str, str]:
        return self.selector.match_labels if self.selector else {}

    @property
    def kind_name(self) -> str:
        return "wasm" if self.wasm is not None else "lua"

    @property
    def phase_name(self) -> str:
        return "UNSPECIFIED" if self.phase == "UNSPECIFIED_PHASE" else self.phase


class WasmPluginSpec(WasmConfig):
    """Istio's WasmPlugin: the Wasm-only form of a TrafficExtension, its Wasm fields at the top level."""

    selector: WorkloadSelector | None = None
    target_ref: TargetReference | None = None
    target_refs: list[TargetReference] = Field(default_factory=list, max_length=16)
    phase: Phase = "UNSPECIFIED_PHASE"
    priority: int = Field(default=0, ge=-(2**31), le=2**31 - 1)
    match: list[TrafficSelector] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_way_to_select(self) -> WasmPluginSpec:
        if self.target_ref is not None and self.target_refs:
            raise ValueError("set targetRef or targetRefs, not both")
        if self.selector is not None and (self.target_ref is not None or self.target_refs):
            raise ValueError("set selector or targetRef(s), not both (as in Istio)")
        if self.network and any("CLIENT" in m.sides for m in self.match or [TrafficSelector()]):
            raise ValueError(_NETWORK_SERVER_ONLY)
        return self

    def as_traffic_extension(self) -> TrafficExtensionSpec:
        wasm = WasmConfig.model_validate(self.model_dump(include=set(WasmConfig.model_fields)))
        targets = [self.target_ref] if self.target_ref is not None else list(self.target_refs)
        return TrafficExtensionSpec(
            selector=self.selector,
            target_refs=targets,
            phase=self.phase,
            priority=self.priority,
            match=self.match,
            wasm=wasm,
        )
