"""Host names as Kubernetes DNS writes them: `reviews` → `reviews.default.svc.cluster.local`."""

from __future__ import annotations


def fqdn(host: str, namespace: str, domain: str = "cluster.local") -> str:
    """The FQDN a host written in `namespace` means (Istio's rule for VirtualService hosts)."""
    host = host.lower().rstrip(".")
    parts = host.split(".")
    if len(parts) == 1:
        return f"{host}.{namespace}.svc.{domain}"
    if len(parts) == 2:
        return f"{host}.svc.{domain}"
    if len(parts) == 3 and parts[2] == "svc":
        return f"{host}.{domain}"
    return host


def host_aliases(name: str, namespace: str, proxy_namespace: str, domain: str = "cluster.local") -> list[str]:
    """Names a client may use for a service; the bare name only from the service's own namespace."""
    names = [f"{name}.{namespace}.svc.{domain}", f"{name}.{namespace}.svc", f"{name}.{namespace}"]
    if namespace == proxy_namespace:
        names.append(name)
    return names
