"""MeshConfig's path policy and trusted proxies, read as Istio writes them; bad values named by field."""

from __future__ import annotations

import pytest

from lattice.api.errors import ValidationError
from lattice.api.mesh_config import parse_mesh_config
from lattice.mesh.http_policy import HttpPolicy, http_policy


def test_unset_is_lattice_strict_default_and_no_trusted_proxy():
    assert http_policy(parse_mesh_config("", "mesh.yaml")) == HttpPolicy("DEFAULT", 0)


def test_istio_spellings():
    text = """
pathNormalization: {normalization: MERGE_SLASHES}
defaultConfig: {gatewayTopology: {numTrustedProxies: 2}}
"""
    assert http_policy(parse_mesh_config(text, "mesh.yaml")) == HttpPolicy("MERGE_SLASHES", 2)


@pytest.mark.parametrize(
    "text, field",
    [
        ("pathNormalization: {normalization: STRICTEST}", "pathNormalization.normalization"),
        (
            "defaultConfig: {gatewayTopology: {numTrustedProxies: -1}}",
            "defaultConfig.gatewayTopology.numTrustedProxies",
        ),
    ],
)
def test_bad_values_are_named(text, field):
    with pytest.raises(ValidationError) as e:
        parse_mesh_config(text, "mesh.yaml")
    assert field in str(e.value)
