"""PeerAuthentication validation: Istio's own examples parse; bad modes, ports and fields are named."""

from __future__ import annotations

import pytest

from lattice.api import ValidationError, kind_for, parse_documents

PA = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: pa, namespace: foo}\nspec:\n"

# The examples from Istio's PeerAuthentication reference.
MESH_STRICT = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: STRICT
"""
NAMESPACE_PERMISSIVE = """\
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
  namespace: foo
spec:
  mtls:
    mode: PERMISSIVE
"""
WORKLOAD_PORTS = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: foo
spec:
  selector:
    matchLabels:
      app: finance
  mtls:
    mode: STRICT
  portLevelMtls:
    8080:
      mode: DISABLE
"""


def _errors(text: str) -> list[str]:
    with pytest.raises(ValidationError) as e:
        parse_documents(text, "f.yaml")
    return [str(x) for x in e.value.errors]


def test_mesh_wide_strict():
    (r,) = parse_documents(MESH_STRICT)
    assert (r.kind, r.namespace, r.spec.mtls.mode, r.spec.selector) == (
        "PeerAuthentication",
        "istio-system",
        "STRICT",
        None,
    )


def test_namespace_permissive_in_v1beta1():
    (r,) = parse_documents(NAMESPACE_PERMISSIVE)
    assert (r.api_version, r.spec.mtls.mode, r.spec.match_labels) == ("security.istio.io/v1beta1", "PERMISSIVE", {})


def test_workload_selector_and_port_level_mtls():
    (r,) = parse_documents(WORKLOAD_PORTS)
    assert r.spec.match_labels == {"app": "finance"}
    assert r.spec.port_level_mtls[8080].mode == "DISABLE"
    assert r.to_dict()["spec"] == {
        "selector": {"matchLabels": {"app": "finance"}},
        "mtls": {"mode": "STRICT"},
        "portLevelMtls": {8080: {"mode": "DISABLE"}},
    }


def test_port_keys_may_be_strings_and_unset_modes_are_allowed():
    (r,) = parse_documents(
        PA + "  selector: {matchLabels: {app: a}}\n  portLevelMtls: {'9080': {}, 8080: {mode: UNSET}}\n"
    )
    assert {p: m.mode for p, m in r.spec.port_level_mtls.items()} == {9080: "UNSET", 8080: "UNSET"}


def test_empty_spec_means_unset():
    (r,) = parse_documents(PA + "  {}\n")
    assert r.spec.mtls is None and r.spec.port_level_mtls == {}


def test_kind_names():
    assert (
        kind_for("pa").kind
        == kind_for("peerauthentications").kind
        == kind_for("PeerAuthentication").kind
        == "PeerAuthentication"
    )


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("  mtls: {mode: strict}\n", "spec.mtls.mode: Input should be 'UNSET', 'DISABLE', 'PERMISSIVE' or 'STRICT'"),
        (
            "  portLevelMtls: {8080: {mode: DISABLE}}\n",
            "spec.portLevelMtls: portLevelMtls requires a workload selector",
        ),
        (
            "  selector: {matchLabels: {}}\n  portLevelMtls: {8080: {mode: DISABLE}}\n",
            "spec.portLevelMtls: portLevelMtls requires a workload selector",
        ),
        (
            "  selector: {matchLabels: {app: a}}\n  portLevelMtls: {0: {mode: DISABLE}}\n",
            "spec.portLevelMtls: keys must be port numbers 1..65535; got 0",
        ),
        (
            "  selector: {matchLabels: {app: a}}\n  portLevelMtls: {70000: {mode: DISABLE}}\n",
            "spec.portLevelMtls: keys must be port numbers 1..65535; got 70000",
        ),
        (
            "  selector: {matchLabels: {app: a}}\n  portLevelMtls: {http: {mode: DISABLE}}\n",
            "spec.portLevelMtls: keys must be port numbers 1..65535; got 'http'",
        ),
        (
            "  selector: {matchLabels: {app: a}}\n  portLevelMtls: {8080: null}\n",
            "spec.portLevelMtls: the mTLS setting of port 8080 must not be null",
        ),
        (
            "  selector: {matchLabels: {app: a}}\n  portLevelMtls: {8080: {mode: off}}\n",
            "spec.portLevelMtls[8080].mode: Input should be",
        ),
        ("  mtls: {mode: STRICT}\n  action: ALLOW\n", "spec.action: unknown field"),
        ("  selector: {labels: {app: a}}\n", "spec.selector.labels: unknown field"),
    ],
)
def test_bad_peer_authentication_names_the_field(spec, expected):
    assert any(expected in e for e in _errors(PA + spec)), _errors(PA + spec)


def test_v1alpha1_is_refused():
    assert (
        "is not an apiVersion of PeerAuthentication"
        in _errors(MESH_STRICT.replace("security.istio.io/v1", "security.istio.io/v1alpha1"))[0]
    )
