"""Prometheus finds the mesh by itself: `GET /api/v1/sd/prometheus`, in the format of
Prometheus' `http_sd_configs` (a JSON list of target groups).

One group per sidecar (its agent port, path `/stats/prometheus`: Envoy's statistics and Istio's
metrics) and one for the control plane (its REST port, path `/metrics`), each labelled with
namespace, workload, app and version, so one scrape job covers a mesh that changes. Prometheus
asks with the read-only metrics credential (`$LATTICE_HOME/metrics-token`, written by `lattice
server`), which reads this list and nothing else: it cannot apply config or mint join tokens.
"""

from __future__ import annotations

import importlib.metadata

from aiohttp import web

from lattice.mesh import Workload

SD_PATH = "/api/v1/sd/prometheus"
SIDECAR_METRICS_PATH = "/stats/prometheus"
CONTROL_PLANE_METRICS_PATH = "/metrics"


def targets(workloads: tuple[Workload, ...], control_plane: str, root_namespace: str) -> list[dict]:
    """Target groups: the control plane's first, then every registered proxy's, by id."""
    groups = [
        {
            "targets": [control_plane],
            "labels": {
                "__metrics_path__": CONTROL_PLANE_METRICS_PATH,
                "namespace": root_namespace,
                "workload": "lattice-server",
                "app": "lattice-server",
                "version": _version(),
                "role": "control-plane",
            },
        }
    ]
    for w in sorted(workloads, key=lambda w: w.id):
        groups.append(
            {
                "targets": [f"{w.address}:{w.agent_port}"],
                "labels": {
                    "__metrics_path__": SIDECAR_METRICS_PATH,
                    "namespace": w.namespace,
                    "workload": w.name,
                    "app": w.labels.get("app", w.service),
                    "version": w.labels.get("version", "unknown"),
                    "service": w.service,
                    "proxy": w.id,
                    "role": w.kind,
                },
            }
        )
    return groups


def _version() -> str:
    try:
        return importlib.metadata.version("lattice-mesh")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def add_routes(app: web.Application, registry, root_namespace) -> None:
    async def prometheus_sd(request: web.Request) -> web.Response:
        # The address Prometheus reached us on is the one it can scrape us on.
        return web.json_response(targets(registry.workloads(), request.host, root_namespace()))

    app.router.add_get(SD_PATH, prometheus_sd)
