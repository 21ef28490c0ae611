"""Which TrafficExtensions and WasmPlugins a proxy runs, where, and in which order.

- Selection, as Istio's: `selector` labels in the resource's namespace (in the root namespace: any
  namespace's workloads with those labels); no selector, every proxy of the namespace (of the mesh,
  in the root namespace); `targetRefs` to a Service, that Service's sidecars in the resource's
  namespace; to a Gateway API Gateway, the gateway proxies labelled
  `gateway.networking.k8s.io/gateway-name: <name>` in that namespace (Istio's label for a
  Gateway's deployment).
- Placement: a side (CLIENT: the sidecar's outbound listeners and a gateway's; SERVER: its inbound
  listener), optionally some ports (the inbound service port; a gateway's served port).
- Order: by phase (AUTHN, AUTHZ, STATS, then unspecified), then priority, higher first, then
  creation time, name and namespace.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lattice.api import Resource
from lattice.api.extensions import TrafficExtensionSpec, WasmPluginSpec

if TYPE_CHECKING:
    from lattice.mesh.workload import Workload

PHASES = ("AUTHN", "AUTHZ", "STATS", "UNSPECIFIED")
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
CLIENT, SERVER = "CLIENT", "SERVER"


@dataclass(frozen=True)
class Extension:
    """One TrafficExtension (a WasmPlugin read as one), with what orders it among its peers."""

    kind: str  # "TrafficExtension" or "WasmPlugin"
    namespace: str
    name: str
    spec: TrafficExtensionSpec
    created: float

    @property
    def config_name(self) -> str:
        """Its Envoy filter's name, and the name its config is discovered by (ECDS)."""
        return f"extension.{self.kind.lower()}.{self.namespace}.{self.name}"

    @property
    def order(self) -> tuple:
        return (PHASES.index(self.spec.phase_name), -self.spec.priority, self.created, self.name, self.namespace)

    def applies(self, side: str, port: int | None) -> bool:
        """Runs on this side of the proxy, for this port (None: a listener for every port, such as
        the shared outbound listener, which runs only extensions that name no ports)."""
        if not self.spec.match:
            return True
        return any(side in m.sides and (not m.ports or port in {p.number for p in m.ports}) for m in self.spec.match)


def extensions(
    traffic_extensions: Iterable[Resource],
    wasm_plugins: Iterable[Resource],
    created: Mapping[tuple[str, str, str], float],
) -> tuple[Extension, ...]:
    """Every stored extension in its unified form."""
    out = [
        Extension(
            "TrafficExtension", r.namespace, r.name, r.spec, created.get(("TrafficExtension", r.namespace, r.name), 0.0)
        )
        for r in traffic_extensions
    ]
    out += [
        Extension(
            "WasmPlugin",
            r.namespace,
            r.name,
            _as_extension(r.spec),
            created.get(("WasmPlugin", r.namespace, r.name), 0.0),
        )
        for r in wasm_plugins
    ]
    return tuple(sorted(out, key=lambda e: e.order))


def _as_extension(spec: WasmPluginSpec | TrafficExtensionSpec) -> TrafficExtensionSpec:
    return spec.as_traffic_extension() if isinstance(spec, WasmPluginSpec) else spec


def for_proxy(all_extensions: Sequence[Extension], proxy: Workload, root_namespace: str) -> tuple[Extension, ...]:
    """The extensions that select `proxy`, in filter-chain order."""
    return tuple(e for e in all_extensions if _selects(e, proxy, root_namespace))


def _selects(extension: Extension, proxy: Workload, root_namespace: str) -> bool:
    spec = extension.spec
    if spec.target_refs:
        return extension.namespace == proxy.namespace and any(_targets(ref, proxy) for ref in spec.target_refs)
    if extension.namespace not in (proxy.namespace, root_namespace):
        return False
    return all(proxy.labels.get(k) == v for k, v in spec.match_labels.items())


def _targets(ref, proxy: Workload) -> bool:
    if ref.is_service:
        return proxy.kind == "sidecar" and proxy.service == ref.name
    return proxy.kind == "gateway" and proxy.labels.get(GATEWAY_NAME_LABEL) == ref.name


def http_at(selected: Sequence[Extension], side: str, port: int | None, phase: str) -> list[Extension]:
    """The HTTP filters of `phase` to run on `side` for `port`, in order."""
    return [e for e in selected if not _is_network(e) and e.spec.phase_name == phase and e.applies(side, port)]


def network_at(selected: Sequence[Extension], port: int) -> list[Extension]:
    """The NETWORK Wasm filters to run on the inbound TCP connections of `port`, in order."""
    return [e for e in selected if _is_network(e) and e.applies(SERVER, port)]


def _is_network(extension: Extension) -> bool:
    return extension.spec.wasm is not None and extension.spec.wasm.network


def module_problems(
    all_extensions: Sequence[Extension], modules: Mapping[tuple[str, str], str], errors: Mapping[tuple[str, str], str]
) -> list[str]:
    """A line for `lattice status` per extension whose module the control plane cannot hand out."""
    out = []
    for e in all_extensions:
        wasm = e.spec.wasm
        if wasm is None or (wasm.url, wasm.sha256) in modules:
            continue
        why = errors.get((wasm.url, wasm.sha256), "not fetched yet")
        effect = (
            "its traffic passes without it (FAIL_OPEN)" if wasm.fail_strategy == "FAIL_OPEN" else "its requests get 500"
        )
        out.append(f"{e.kind} {e.namespace}/{e.name}: module {wasm.url} unavailable ({why}); {effect}")
    return out
