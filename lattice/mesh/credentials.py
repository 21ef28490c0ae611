"""TLS credentials kept by the control plane (`lattice secret create tls`), as gateways name them.

An Istio Gateway server's `tls.credentialName: NAME` names a secret in the namespace of the gateway
proxy that serves it (Istio's rule: the secret lives with the gateway deployment, not with the
Gateway resource). A Gateway API listener's `certificateRefs` name one in the Gateway's namespace
(or another, with a ReferenceGrant); converted to an Istio Gateway, such a reference reads
`kubernetes-gateway://NAMESPACE/NAME`, as Istio writes it.

The snapshot holds the decrypted material of every secret; the translator hands a gateway only
the secrets its own servers name (translate/gateway.py), over SDS on its ADS stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

GATEWAY_API_PREFIX = "kubernetes-gateway://"


@dataclass(frozen=True)
class TlsCredential:
    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    ca_pem: bytes = b""


def credential_key(credential_name: str, proxy_namespace: str) -> tuple[str, str]:
    """(namespace, name) of the secret a server's credentialName names, for a proxy in `proxy_namespace`."""
    if credential_name.startswith(GATEWAY_API_PREFIX):
        namespace, _, name = credential_name.removeprefix(GATEWAY_API_PREFIX).partition("/")
        return namespace, name
    return proxy_namespace, credential_name


def secret_names(namespace: str, name: str) -> tuple[str, str]:
    """The SDS resource names of a secret's certificate and of its client CAs."""
    return f"lattice://{namespace}/{name}", f"lattice://{namespace}/{name}-cacert"


def missing(credentials: Mapping[tuple[str, str], TlsCredential], key: tuple[str, str], needs_ca: bool) -> str | None:
    """Why a server cannot be served with this secret, or None."""
    found = credentials.get(key)
    if found is None:
        return f"no TLS secret {key[1]!r} in namespace {key[0]} (lattice secret create tls {key[1]} -n {key[0]} ...)"
    if needs_ca and not found.ca_pem:
        return (
            f"TLS secret {key[0]}/{key[1]} has no CA for client certificates, which MUTUAL and OPTIONAL_MUTUAL need "
            f"(lattice secret update tls {key[1]} -n {key[0]} --cert ... --key ... --ca CA_FILE)"
        )
    return None


def gateway_problems(gateways, proxies, credentials: Mapping[tuple[str, str], TlsCredential], serves) -> list[str]:
    """A line per (Gateway server, gateway proxy) whose credentialName cannot be served: that server
    is left out of the proxy's listeners until the secret exists (`lattice status` shows this)."""
    out = []
    for gw in gateways:
        for proxy in proxies:
            if proxy.kind != "gateway" or not gw.spec.selects(dict(proxy.labels)) or not serves(proxy, gw):
                continue
            for server in gw.spec.servers:
                if server.tls is None or not server.tls.credential_name:
                    continue
                key = credential_key(server.tls.credential_name, proxy.namespace)
                why = missing(credentials, key, server.tls.mode in ("MUTUAL", "OPTIONAL_MUTUAL"))
                if why:
                    label = server.name or f"port {server.port.number}"
                    out.append(f"Gateway {gw.namespace}/{gw.name} server {label} on {proxy.id}: {why}; not served")
    return out
