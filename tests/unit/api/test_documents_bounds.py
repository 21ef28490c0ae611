"""YAML input bounds: aliases refused (no billion laughs), nesting depth bounded."""

from __future__ import annotations

import pytest

from lattice.api import ValidationError, parse_documents

VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r, namespace: default}
spec:
  hosts: [reviews]
"""


def test_an_alias_is_refused_with_where_it_is() -> None:
    with pytest.raises(ValidationError, match=r"aliases \(\*name\) are not accepted(.|\n)*line 7"):
        parse_documents(VS + "  gateways: &g [mesh]\n  exportTo: *g\n")


def test_an_anchor_without_alias_is_harmless() -> None:
    assert parse_documents(VS.replace("[reviews]", "&h [reviews]"))[0].spec_dict()["hosts"] == ["reviews"]


def test_nesting_is_bounded() -> None:
    with pytest.raises(ValidationError, match="nested deeper than 64 levels"):
        parse_documents("a: " + "[" * 65 + "]" * 65)
    parse_documents(VS)  # ordinary resources are far from the bound
