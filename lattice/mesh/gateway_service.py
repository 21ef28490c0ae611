"""Gateway proxies as mesh services: a `lattice gateway` is reachable from sidecars at
`<its service>.<its namespace>.svc.<domain>` (`istio-egressgateway.istio-system.svc.cluster.local`
for `lattice gateway --name egressgateway -n istio-system`), as Istio's gateway Deployments are
behind a Kubernetes Service. That is what Istio's egress-gateway pattern routes to: a sidecar's
VirtualService sends `edition.cnn.com` to the egress gateway's service, whose Gateway and
VirtualService send it on.

The service's ports are the Gateway ports its Gateways serve (every server of every Istio Gateway
selecting the proxy); each endpoint is the proxy's address at the local port serving that Gateway
port (`gateway_local_port`). A server terminating ISTIO_MUTUAL takes mesh mTLS (auto mTLS marks
the endpoint for it); the others take what the server serves (plain HTTP, or TLS the client's
DestinationRule originates).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from types import MappingProxyType

from lattice.api import Resource
from lattice.api.gateway import HTTP_PROTOCOLS
from lattice.api.registration import gateway_local_port
from lattice.mesh.hosts import fqdn
from lattice.mesh.service_entry import EntryEndpoint
from lattice.mesh.workload import Service, Workload


def gateway_services(
    workloads: Iterable[Workload], gateways: tuple[Resource, ...], domain: str
) -> tuple[list[Service], dict[str, list[EntryEndpoint]]]:
    """The services (one per Gateway port) and endpoints of every gateway proxy."""
    services: list[Service] = []
    endpoints: dict[str, list[EntryEndpoint]] = defaultdict(list)
    for w in sorted(workloads, key=lambda w: w.id):
        if w.kind != "gateway":
            continue
        host = fqdn(w.service, w.namespace, domain)
        for number, server in sorted(_ports(w, gateways).items()):
            protocol = server.port.protocol.lower() if server.port.protocol in HTTP_PROTOCOLS else "tls"
            services.append(Service(w.service, w.namespace, number, protocol, host))
            endpoints[host].append(
                EntryEndpoint(
                    id=f"{w.id}:{number}",
                    namespace=w.namespace,
                    address=w.address,
                    port=number,
                    target_port=gateway_local_port(number, dict(w.listen)),
                    labels=MappingProxyType(dict(w.labels)),
                    service_account=w.service_account,
                    mesh_tls=server.tls_mode == "ISTIO_MUTUAL",
                    healthy=w.healthy,
                )
            )
    return services, endpoints


def _ports(proxy: Workload, gateways: tuple[Resource, ...]) -> dict:
    """Gateway port -> the first server (oldest Gateway first) that serves it on this proxy."""
    out: dict = {}
    for gw in gateways:
        if gw.spec.selects(dict(proxy.labels)):
            for server in gw.spec.servers:
                out.setdefault(server.port.number, server)
    return out
