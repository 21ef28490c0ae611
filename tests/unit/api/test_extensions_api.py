"""TrafficExtension and WasmPlugin validation: Istio's fields accepted, what Lattice cannot honour
refused with the field's path and the reason."""

from __future__ import annotations

import pytest

from lattice.api import ValidationError, parse_documents
from lattice.api.extensions import TrafficExtensionSpec, WasmPluginSpec

SHA = "a" * 64


def _doc(kind: str, spec: str) -> str:
    head = f"apiVersion: extensions.istio.io/v1alpha1\nkind: {kind}\nmetadata: {{name: x, namespace: default}}"
    return f"{head}\nspec:\n{spec}"


def _errors(kind: str, spec: str) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as e:
        parse_documents(_doc(kind, spec))
    return [(f.path, f.message) for f in e.value.errors]


def test_istio_openid_example_is_accepted_as_written():
    [r] = parse_documents(
        _doc(
            "TrafficExtension",
            """  selector: {matchLabels: {istio: ingressgateway}}
  phase: AUTHN
  priority: 1000
  match: [{mode: SERVER, ports: [{number: 8080}]}]
  wasm:
    url: file:///opt/filters/openid.wasm
    sha256: 1ef0c9a92b0420cf25f7fe5d481b231464bc88f486ca3b9c83ed5cc21d2f6210
    pluginName: openid
    failStrategy: FAIL_OPEN
    pluginConfig: {openid_server: authn, openid_realm: ingress, nested: {a: [1, 2]}}
    vmConfig: {env: [{name: POD_NAME, valueFrom: HOST}, {name: TRUST_DOMAIN, value: cluster.local}]}
""",
        )
    )
    spec: TrafficExtensionSpec = r.spec
    assert (spec.phase_name, spec.priority, spec.wasm.fail_strategy) == ("AUTHN", 1000, "FAIL_OPEN")
    assert spec.wasm.plugin_config["nested"] == {"a": [1, 2]}
    assert spec.match[0].sides == {"SERVER"} and spec.match[0].ports[0].number == 8080


def test_wasm_plugin_reads_as_a_traffic_extension():
    [r] = parse_documents(
        _doc(
            "WasmPlugin",
            f"""  targetRefs: [{{kind: Service, group: "", name: reviews}}]
  url: https://example.com/filter.wasm
  sha256: {SHA}
  phase: AUTHZ
  priority: 10
  pluginConfig: {{k: v}}
  type: HTTP
""",
        )
    )
    spec: WasmPluginSpec = r.spec
    unified = spec.as_traffic_extension()
    assert unified.phase_name == "AUTHZ" and unified.priority == 10
    assert unified.wasm.url == "https://example.com/filter.wasm" and unified.wasm.plugin_config == {"k": "v"}
    assert unified.target_refs[0].name == "reviews" and unified.target_refs[0].is_service


@pytest.mark.parametrize(
    ("kind", "spec", "path", "reason"),
    [
        ("TrafficExtension", "  wasm: {url: oci://registry}", "spec.wasm.url", "not an image reference"),
        ("TrafficExtension", "  wasm: {url: oci://registry/UPPER:v1}", "spec.wasm.url", "not an image reference"),
        ("TrafficExtension", "  wasm: {url: ftp://h/x.wasm}", "spec.wasm.url", "scheme"),
        ("TrafficExtension", "  wasm: {url: file://relative.wasm}", "spec.wasm.url", "absolute path"),
        ("TrafficExtension", "  wasm: {url: http://h/x.wasm}", "spec.wasm", "pinned with sha256"),
        ("TrafficExtension", "  wasm: {url: file:///x.wasm, sha256: ABC}", "spec.wasm.sha256", "64 lower-case hex"),
        (
            "TrafficExtension",
            "  wasm: {url: oci://r/x, imagePullSecret: s}",
            "spec.wasm.imagePullSecret",
            "pull secrets",
        ),
        (
            "TrafficExtension",
            "  wasm: {url: file:///x.wasm, verificationKey: k}",
            "spec.wasm.verificationKey",
            "not implemented",
        ),
        (
            "TrafficExtension",
            "  wasm: {url: file:///x.wasm, failStrategy: FAIL_SOMETIMES}",
            "spec.wasm.failStrategy",
            "",
        ),
        ("TrafficExtension", "  lua: {inlineCode: 'print(1)'}", "spec.lua.inlineCode", "envoy_on_request"),
        ("TrafficExtension", "  phase: AUTHN", "spec", "exactly one of wasm or lua"),
        (
            "TrafficExtension",
            "  wasm: {url: file:///x.wasm}\n  lua: {inlineCode: 'function envoy_on_request(h) end'}",
            "spec",
            "exactly one",
        ),
        ("TrafficExtension", "  wasm: {url: file:///x.wasm, type: NETWORK}", "spec", "inbound TCP"),
        (
            "TrafficExtension",
            "  wasm: {url: file:///x.wasm}\n  targetRefs: [{kind: Pod, name: p}]",
            "spec.targetRefs[0]",
            "not supported",
        ),
        (
            "TrafficExtension",
            "  wasm: {url: file:///x.wasm, vmConfig: {env: [{name: A, value: x, valueFrom: HOST}]}}",
            "spec.wasm.vmConfig.env[0]",
            "leave out value",
        ),
        ("TrafficExtension", "  wasm: {url: file:///x.wasm}\n  unknownField: 1", "spec.unknownField", ""),
        ("WasmPlugin", "  url: oci://h", "spec.url", "not an image reference"),
        (
            "WasmPlugin",
            "  url: file:///x.wasm\n  targetRef: {kind: Service, name: a}\n  targetRefs: [{kind: Service, name: b}]",
            "spec",
            "not both",
        ),
    ],
)
def test_what_cannot_be_honoured_is_refused_with_path_and_reason(kind, spec, path, reason):
    errors = _errors(kind, spec)
    assert any(p.startswith(path) and reason in message for p, message in errors), errors


def test_an_image_reference_without_a_scheme_is_oci_as_in_istio():
    [r] = parse_documents(_doc("WasmPlugin", "  url: ghcr.io/example/filter:1.0"))
    assert r.spec.url == "oci://ghcr.io/example/filter:1.0"
