"""Suspicious config is flagged where users look: on `lattice apply` and by `lattice analyze`."""

from __future__ import annotations

import json

import pytest

from harness import BACKEND

pytestmark = pytest.mark.slow

CONFIG = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web]
  http:
  - route:
    - {destination: {host: web, subset: v1}, weight: 90}
    - {destination: {host: web, subset: v2}, weight: 20}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"""


def test_apply_warns_and_analyze_agrees(plane, workloads, tmp_path):
    workloads("web", "v1", command=BACKEND)
    analyzed = plane.cli("analyze", "-f", "-", "-o", "json", input=CONFIG)
    findings = json.loads(analyzed.stdout)["findings"]
    messages = {(f["field"], f["message"]) for f in findings}
    assert (
        "spec.subsets[1]",
        "subset 'v2' (labels version=v2) matches no workload of web.default.svc.cluster.local; requests routed "
        "there get 503",
    ) in messages
    assert any(field == "spec.http[0].route" and "add up to 110" in m for field, m in messages)
    # analyze stores nothing
    assert plane.get("/api/v1/resources/virtualservices")["items"] == []
    applied = plane.apply(CONFIG)
    assert "virtualservice.default/web created" in applied.stdout
    assert "matches no workload" in applied.stderr and "add up to 110" in applied.stderr
    # Warnings never block: the rules are stored and served.
    assert [i["metadata"]["name"] for i in plane.get("/api/v1/resources/virtualservices")["items"]] == ["web"]


def test_analyze_offline_and_invalid_input(plane, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(CONFIG.replace("weight: 20", "weight: -5"))
    result = plane.cli("analyze", "--offline", "-f", str(path), check=False)
    assert result.returncode == 1
    assert "spec.http[0].route[1].weight" in result.stdout and "greater than or equal to 0" in result.stdout
    path.write_text(CONFIG)
    result = plane.cli("analyze", "--offline", "-f", str(path))
    assert "add up to 110" in result.stdout and "offline" in result.stdout
