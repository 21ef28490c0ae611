"""TrafficExtensions and WasmPlugins as Envoy filters whose config is discovered (ECDS).

A listener names each extension's filter and says where its config comes from; the config itself
is its own xDS resource (`TypedExtensionConfig`, named like the filter). Adding, changing or
removing an extension's code or settings then changes only that resource: Envoy swaps the filter's
config in place, with no listener drained and no connection dropped. (Adding or removing an
extension does change the filter chain, so the listener changes once, as it must.)

- Wasm: Envoy's V8 runtime; the module named by its digest (`<sha256>.wasm`), which the sidecar's
  agent turns into a local file (agent/modules.py); `pluginConfig` as JSON; `vmConfig.env` as the
  VM's environment (HOST: from Envoy's own). One VM per extension and module.
- Fail strategies: FAIL_OPEN skips the plugin after a fatal error; FAIL_CLOSE and FAIL_RELOAD fail
  the requests it cannot serve and start a new VM for the next request after a crash, so a module
  that traps fails only its own requests. A module the control plane could not fetch: FAIL_OPEN
  leaves the filter out, FAIL_CLOSE answers 500 in its place.
- Lua: the inline script; Envoy's Lua filter logs a script's run-time error and lets the request
  through (fail-open, as Istio documents).
Where an extension's filter sits in a chain (in front of the mesh's own filters of its phase) is
said once, with every other filter, in translate/http_filters.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from envoy.config.core.v3 import backoff_pb2, base_pb2, config_source_pb2, extension_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.filters.network.wasm.v3 import wasm_pb2 as network_wasm_pb2
from envoy.extensions.wasm.v3 import wasm_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import wrappers_pb2

from lattice.api.extensions import WasmConfig
from lattice.mesh.extensions import Extension
from lattice.translate.protos import ads, duration, pack

V8 = "envoy.wasm.runtime.v8"
_HTTP_TYPES = tuple(
    f"type.googleapis.com/{m.DESCRIPTOR.full_name}"
    for m in (http_wasm_pb2.Wasm, lua_pb2.Lua, fault_pb2.HTTPFault, http_rbac_pb2.RBAC)
)
_NETWORK_TYPES = tuple(
    f"type.googleapis.com/{m.DESCRIPTOR.full_name}" for m in (network_wasm_pb2.Wasm, network_rbac_pb2.RBAC)
)
_FAILURE = {
    "FAIL_OPEN": wasm_pb2.FAIL_OPEN,
    "FAIL_CLOSE": wasm_pb2.FAIL_RELOAD,
    "FAIL_RELOAD": wasm_pb2.FAIL_RELOAD,
}
Modules = Mapping[tuple[str, str], str]  # (url, pinned sha256) -> digest of the module held


def http_filters(extensions: list[Extension], modules: Modules) -> list[hcm.HttpFilter]:
    """Each extension's HTTP filter, its config to be discovered; none for a FAIL_OPEN module
    the control plane does not hold."""
    return [
        hcm.HttpFilter(name=_name(e), config_discovery=_discovery(e, _HTTP_TYPES, http_rbac_pb2.RBAC()))
        for e in extensions
        if _present(e, modules)
    ]


def network_filters(extensions: list[Extension], modules: Modules) -> list[listener_components_pb2.Filter]:
    return [
        listener_components_pb2.Filter(
            name=e.config_name,
            config_discovery=_discovery(e, _NETWORK_TYPES, network_rbac_pb2.RBAC(stat_prefix="open")),
        )
        for e in extensions
        if _present(e, modules)
    ]


def _fails_open(extension: Extension) -> bool:
    return extension.spec.wasm is not None and extension.spec.wasm.fail_strategy == "FAIL_OPEN"


def _name(extension: Extension) -> str:
    """The filter's name and its discovered config's. A FAIL_OPEN filter's differs: Envoy keeps a
    filter's config (or the default it fell back to) by name, so a change of strategy must not
    inherit the other one's state."""
    return extension.config_name + (".fail-open" if _fails_open(extension) else "")


def _present(extension: Extension, modules: Modules) -> bool:
    wasm = extension.spec.wasm
    return wasm is None or wasm.fail_strategy != "FAIL_OPEN" or (wasm.url, wasm.sha256) in modules


def _discovery(extension: Extension, type_urls: tuple[str, ...], passing) -> config_source_pb2.ExtensionConfigSource:
    """Until Envoy holds the extension's config the listener waits (warming), so no request passes
    a filter meant to check it. A config Envoy refuses (a module that does not load) leaves the
    filter without one, and Envoy answers 500 in its place: FAIL_CLOSE. A FAIL_OPEN extension
    has a default to fall back on instead, an RBAC filter without rules, which lets all through."""
    source = config_source_pb2.ExtensionConfigSource(config_source=ads(), type_urls=type_urls)
    if _fails_open(extension):
        source.default_config.CopyFrom(pack(passing))
    return source


def extension_configs(extensions: Sequence[Extension], modules: Modules) -> list[extension_pb2.TypedExtensionConfig]:
    """The discovered config of each extension's filter."""
    return [
        extension_pb2.TypedExtensionConfig(name=_name(e), typed_config=pack(_config(e, modules)))
        for e in extensions
        if _present(e, modules)
    ]


def _config(extension: Extension, modules: Modules):
    spec = extension.spec
    if spec.lua is not None:
        return lua_pb2.Lua(
            default_source_code=base_pb2.DataSource(inline_string=spec.lua.inline_code),
            stat_prefix=f"{extension.namespace}_{extension.name}".replace("-", "_"),
        )
    assert spec.wasm is not None
    digest = modules.get((spec.wasm.url, spec.wasm.sha256))
    if digest is None:  # FAIL_CLOSE and the module cannot be had: its traffic fails rather than skip it
        if spec.wasm.network:
            return network_rbac_pb2.RBAC(stat_prefix="unavailable", rules=rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW))
        return fault_pb2.HTTPFault(
            abort=fault_pb2.FaultAbort(http_status=500, percentage=percent_pb2.FractionalPercent(numerator=100))
        )
    plugin = _plugin(extension, spec.wasm, digest)
    return network_wasm_pb2.Wasm(config=plugin) if spec.wasm.network else http_wasm_pb2.Wasm(config=plugin)


def _plugin(extension: Extension, wasm: WasmConfig, digest: str) -> wasm_pb2.PluginConfig:
    env = wasm.vm_config.env if wasm.vm_config else []
    return wasm_pb2.PluginConfig(
        name=extension.config_name,
        root_id=wasm.plugin_name,
        configuration=pack(wrappers_pb2.StringValue(value=json.dumps(wasm.plugin_config, sort_keys=True))),
        failure_policy=_FAILURE[wasm.fail_strategy],
        # After a crash the next request gets a new VM almost at once (Envoy's default waits a
        # second, failing every request meanwhile). Not under 10 ms: Envoy 1.40 dies of SIGFPE
        # computing the jitter of a 1 ms backoff.
        reload_config=wasm_pb2.ReloadConfig(
            backoff=backoff_pb2.BackoffStrategy(base_interval=duration(0.01), max_interval=duration(1))
        ),
        vm_config=wasm_pb2.VmConfig(
            vm_id=f"{extension.config_name}.{digest[:12]}",
            runtime=V8,
            code=base_pb2.AsyncDataSource(local=base_pb2.DataSource(filename=f"{digest}.wasm")),
            environment_variables=wasm_pb2.EnvironmentVariables(
                host_env_keys=[e.name for e in env if e.value_from == "HOST"],
                key_values={e.name: e.value for e in env if e.value_from == "INLINE"},
            ),
        ),
    )
