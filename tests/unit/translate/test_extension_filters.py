"""Where TrafficExtensions and WasmPlugins land in the generated config: which proxies, which side
and port, in which order among the mesh's own filters, and what their discovered config holds."""

from __future__ import annotations

import json

from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2
from envoy.extensions.wasm.v3 import wasm_pb2 as wasm_config_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from google.protobuf import wrappers_pb2

from lattice.api import parse_documents
from lattice.mesh import MeshSnapshot, Workload
from lattice.translate import EXTENSION_CONFIG, LISTENER, translate

SHA = "b" * 64
MODULE = "file:///opt/filters/guard.wasm"
LUA = "function envoy_on_request(h) end"


def _workload(service: str, n: int, kind: str = "sidecar", namespace: str = "default", **labels) -> Workload:
    return Workload.from_record(
        {
            "id": f"{service}-{n}.{namespace}",
            "name": service,
            "namespace": namespace,
            "service": service,
            "service_account": service,
            "labels": {"app": service, **labels},
            "address": f"127.0.10.{n}",
            "port": 9080,
            "app_port": 30000 + n,
            "protocol": "http",
            "outbound_port": 15001,
            "agent_port": 15020,
            "healthy": True,
            "kind": kind,
        }
    )


WEB, API, OTHER = _workload("web", 2), _workload("api", 3), _workload("web", 4, namespace="other")


def _ext(name: str, spec: str, kind: str = "TrafficExtension", namespace: str = "default") -> str:
    head = f"apiVersion: extensions.istio.io/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}, namespace: {namespace}}}"
    return f"{head}\nspec:\n{spec}\n---\n"


def _snapshot(*docs: str, modules: dict | None = None) -> MeshSnapshot:
    resources = [r for d in docs for r in parse_documents(d)]
    return MeshSnapshot(
        "t",
        (WEB, API, OTHER),
        traffic_extensions=tuple(r for r in resources if r.kind == "TrafficExtension"),
        wasm_plugins=tuple(r for r in resources if r.kind == "WasmPlugin"),
        authorization_policies=tuple(r for r in resources if r.kind == "AuthorizationPolicy"),
        wasm_modules={(MODULE, ""): SHA} if modules is None else modules,
        created={(r.kind, r.namespace, r.name): float(i) for i, r in enumerate(resources)},
    )


def _filters(snapshot: MeshSnapshot, proxy: Workload, listener: str) -> list[str]:
    for name, message in translate(snapshot, proxy).by_type[LISTENER]:
        if name == listener:
            manager = hcm.HttpConnectionManager()
            message.filter_chains[0].filters[-1].typed_config.Unpack(manager)
            return [f.name for f in manager.http_filters]
    raise AssertionError(f"no listener {listener}")


def _configs(snapshot: MeshSnapshot, proxy: Workload) -> dict:
    return dict(translate(snapshot, proxy).by_type[EXTENSION_CONFIG])


def test_phases_sit_in_front_of_the_mesh_filters_of_their_phase_and_priority_orders_within():
    snapshot = _snapshot(
        _ext("stats-low", f"  phase: STATS\n  priority: 1\n  wasm: {{url: '{MODULE}'}}"),
        _ext("stats-high", f"  phase: STATS\n  priority: 9\n  wasm: {{url: '{MODULE}'}}"),
        _ext("authn", f"  phase: AUTHN\n  lua: {{inlineCode: '{LUA}'}}"),
        _ext("authz", f"  phase: AUTHZ\n  wasm: {{url: '{MODULE}'}}"),
        _ext("last", f"  wasm: {{url: '{MODULE}'}}"),
        """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec: {action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}
---
""",
    )
    names = [n.removeprefix("extension.trafficextension.default.") for n in _filters(snapshot, WEB, "inbound|9080")]
    rbac = names.index("lattice.authz.deny")
    assert names.index("authn") < names.index("authz") < rbac < names.index("stats-high")
    assert names.index("stats-high") < names.index("stats-low") < names.index("last") < len(names) - 1
    assert names[-1] == "envoy.filters.http.router"


def test_selection_by_labels_namespace_root_namespace_and_service_target():
    snapshot = _snapshot(
        _ext("web-only", f"  selector: {{matchLabels: {{app: web}}}}\n  wasm: {{url: '{MODULE}'}}"),
        _ext("namespace-wide", f"  lua: {{inlineCode: '{LUA}'}}"),
        _ext("mesh-wide", f"  lua: {{inlineCode: '{LUA}'}}", namespace="istio-system"),
        _ext("by-service", f"  targetRefs: [{{kind: Service, name: api}}]\n  lua: {{inlineCode: '{LUA}'}}"),
    )

    def names(proxy):
        return sorted(n.split(".")[-1] for n in _configs(snapshot, proxy))

    assert names(WEB) == ["mesh-wide", "namespace-wide", "web-only"]
    assert names(API) == ["by-service", "mesh-wide", "namespace-wide"]
    assert names(OTHER) == ["mesh-wide"]  # another namespace's web: only the root namespace reaches it


def test_sides_and_ports_choose_the_listeners():
    snapshot = _snapshot(
        _ext("server", f"  match: [{{mode: SERVER}}]\n  lua: {{inlineCode: '{LUA}'}}"),
        _ext("client", f"  match: [{{mode: CLIENT}}]\n  lua: {{inlineCode: '{LUA}'}}"),
        _ext("other-port", f"  match: [{{mode: SERVER, ports: [{{number: 8443}}]}}]\n  lua: {{inlineCode: '{LUA}'}}"),
    )
    inbound = _filters(snapshot, WEB, "inbound|9080")
    outbound = _filters(snapshot, WEB, "outbound_http")
    assert any(n.endswith(".server") for n in inbound) and not any(n.endswith(".client") for n in inbound)
    assert any(n.endswith(".client") for n in outbound) and not any(n.endswith(".server") for n in outbound)
    assert not any(n.endswith(".other-port") for n in inbound + outbound)


def test_wasm_config_carries_module_by_digest_plugin_config_env_and_fail_strategy():
    snapshot = _snapshot(
        _ext(
            "guard",
            f"""  wasm:
    url: '{MODULE}'
    pluginName: guard
    pluginConfig: {{b: 2, a: [1]}}
    vmConfig: {{env: [{{name: MODE, value: strict}}, {{name: HOSTNAME, valueFrom: HOST}}]}}""",
        )
    )
    [(name, config)] = _configs(snapshot, WEB).items()
    assert name == "extension.trafficextension.default.guard"
    wasm = wasm_pb2.Wasm()
    config.typed_config.Unpack(wasm)
    plugin = wasm.config
    assert plugin.vm_config.code.local.filename == f"{SHA}.wasm"  # the agent makes it a local path
    assert plugin.vm_config.runtime == "envoy.wasm.runtime.v8" and plugin.root_id == "guard"
    value = wrappers_pb2.StringValue()
    plugin.configuration.Unpack(value)
    assert json.loads(value.value) == {"a": [1], "b": 2}
    assert dict(plugin.vm_config.environment_variables.key_values) == {"MODE": "strict"}
    assert list(plugin.vm_config.environment_variables.host_env_keys) == ["HOSTNAME"]
    # FAIL_CLOSE: after a crash the next request gets a new VM (a trap fails only its own request)
    assert plugin.failure_policy == wasm_config_pb2.FAIL_RELOAD


def test_module_the_control_plane_lacks_fails_closed_or_is_left_out_when_fail_open():
    closed = _snapshot(_ext("guard", f"  wasm: {{url: '{MODULE}'}}"), modules={})
    [(_, config)] = _configs(closed, WEB).items()
    fault = fault_pb2.HTTPFault()
    assert config.typed_config.Unpack(fault) and fault.abort.http_status == 500
    opened = _snapshot(_ext("guard", f"  wasm: {{url: '{MODULE}', failStrategy: FAIL_OPEN}}"), modules={})
    assert _configs(opened, WEB) == {}
    assert not any("guard" in n for n in _filters(opened, WEB, "inbound|9080"))
    assert any("module file:///opt/filters/guard.wasm unavailable" in p for p in closed.conflicts())


def test_fail_open_filter_falls_back_to_a_pass_through_default():
    snapshot = _snapshot(_ext("guard", f"  wasm: {{url: '{MODULE}', failStrategy: FAIL_OPEN}}"))
    for name, message in translate(snapshot, WEB).by_type[LISTENER]:
        if name != "inbound|9080":
            continue
        manager = hcm.HttpConnectionManager()
        message.filter_chains[0].filters[-1].typed_config.Unpack(manager)
        [guard] = [f for f in manager.http_filters if "guard" in f.name]
        assert guard.name.endswith(".fail-open")
        assert guard.config_discovery.default_config.type_url.endswith("filters.http.rbac.v3.RBAC")


def test_wasm_plugin_and_lua_configs():
    snapshot = _snapshot(
        _ext("legacy", f"  url: '{MODULE}'\n  phase: AUTHZ", kind="WasmPlugin"),
        _ext("script", f"  lua: {{inlineCode: '{LUA}'}}"),
    )
    configs = _configs(snapshot, WEB)
    assert set(configs) == {"extension.wasmplugin.default.legacy", "extension.trafficextension.default.script"}
    lua = lua_pb2.Lua()
    configs["extension.trafficextension.default.script"].typed_config.Unpack(lua)
    assert lua.default_source_code.inline_string == LUA
