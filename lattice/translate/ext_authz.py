"""CUSTOM AuthorizationPolicies: Envoy's ext_authz asking the mesh config's extension provider.

As Istio builds it: an RBAC filter holds the CUSTOM rules as `shadow_rules` (it never denies), and
a match leaves the rule's name, `istio-ext-authz-<provider>-ns[..]-policy[..]-rule[..]`, in the
`istio_ext_authz_shadow_effective_policy_id` metadata; the ext_authz filter after it runs only when
that metadata says so (`filter_enabled_metadata`). So only requests the policies select reach the
authorizer; its 403 (body and the allowed headers) goes back to the client, and when it cannot be
reached the request gets `statusOnError` (403 by default) unless the provider says `failOpen`.

The authorizer (`service`, `port`) is either a mesh service — then the sidecar's own outbound
cluster (mTLS to its sidecar) carries the check — or any other `host:port` the sidecar can reach,
for which `clusters` adds a plaintext cluster of Istio's name, `outbound|<port>||<host>`. On TCP
only a gRPC provider can judge a connection (the network ext_authz filter); see `translate.authz`.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2, http_uri_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2 as http_ext_authz
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac
from envoy.extensions.filters.network.ext_authz.v3 import ext_authz_pb2 as network_ext_authz
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac
from envoy.type.matcher.v3 import metadata_pb2, string_pb2, value_pb2

from lattice.api.mesh_config import ExtAuthzHttp, ExtAuthzProvider, ExtensionProvider
from lattice.mesh import MeshSnapshot, Workload
from lattice.mesh import authz as scoping
from lattice.translate import names
from lattice.translate.names import RBAC_HTTP_FILTER as HTTP_FILTER
from lattice.translate.names import RBAC_NETWORK_FILTER as NETWORK_FILTER
from lattice.translate.names import TCP_STAT_PREFIX
from lattice.translate.protos import duration, external_cluster, pack

HTTP_EXT_AUTHZ = "envoy.filters.http.ext_authz"
NETWORK_EXT_AUTHZ = "envoy.filters.network.ext_authz"
SHADOW_STAT_PREFIX = "istio_ext_authz_"
CONNECT_TIMEOUT = 10.0
CUSTOM_POLICY_PREFIX = "istio-ext-authz"  # CUSTOM rule names start so; ext_authz runs when one matched


def custom_provider(snapshot: MeshSnapshot, proxy: Workload) -> tuple[ExtensionProvider | None, str]:
    """The one extension provider `proxy`'s CUSTOM policies name, or None and why it cannot be used."""
    named = sorted(
        {p.spec.provider.name for p in scoping.by_action(snapshot.authorization_policies_for(proxy), "CUSTOM")}
    )
    if not named:
        return None, ""
    if len(named) > 1:
        return None, f"CUSTOM policies for one workload must name one provider; found {', '.join(named)}"
    # The snapshot holds only authorizer providers (server/config.py); checked here all the same.
    provider = next((e for e in snapshot.extension_providers if e.name == named[0] and e.authorizer is not None), None)
    if provider is None:
        declared = ", ".join(e.name for e in snapshot.extension_providers) or "none"
        return (
            None,
            f"extension provider {named[0]!r} is not declared in the mesh config"
            f" (`lattice server --mesh-config`); declared: {declared}",
        )
    return provider, ""


def http_filters(
    snapshot: MeshSnapshot, proxy: Workload, provider: ExtensionProvider, rules: rbac_pb2.RBAC
) -> list[hcm.HttpFilter]:
    """The marking RBAC filter and the ext_authz filter it enables."""
    marker = http_rbac.RBAC(shadow_rules=rules, shadow_rules_stat_prefix=SHADOW_STAT_PREFIX)
    config = _http_config(provider, authorizer_cluster(snapshot, proxy, provider))
    config.filter_enabled_metadata.CopyFrom(_enabled_by(HTTP_FILTER, provider))
    return [
        hcm.HttpFilter(name="lattice.authz.custom", typed_config=pack(marker)),
        hcm.HttpFilter(name=HTTP_EXT_AUTHZ, typed_config=pack(config)),
    ]


def network_filters(
    snapshot: MeshSnapshot, proxy: Workload, provider: ExtensionProvider, rules: rbac_pb2.RBAC
) -> list[listener_components_pb2.Filter]:
    """The same pair for a TCP chain; only a gRPC provider gets here (`authz._custom`)."""
    marker = network_rbac.RBAC(
        shadow_rules=rules, stat_prefix=TCP_STAT_PREFIX, shadow_rules_stat_prefix=SHADOW_STAT_PREFIX
    )
    grpc = provider.envoy_ext_authz_grpc
    assert grpc is not None, "authz._custom skips TCP for HTTP authorizers"
    config = network_ext_authz.ExtAuthz(
        stat_prefix=TCP_STAT_PREFIX,
        failure_mode_allow=grpc.fail_open,
        transport_api_version=config_source_pb2.V3,
        grpc_service=_grpc_service(grpc, authorizer_cluster(snapshot, proxy, provider)),
        filter_enabled_metadata=_enabled_by(NETWORK_FILTER, provider),
    )
    return [
        listener_components_pb2.Filter(name=NETWORK_FILTER, typed_config=pack(marker)),
        listener_components_pb2.Filter(name=NETWORK_EXT_AUTHZ, typed_config=pack(config)),
    ]


def _authorizer(provider: ExtensionProvider) -> ExtAuthzProvider:
    """The authorizer of a provider `custom_provider` chose (it chooses only providers that have one)."""
    authorizer = provider.authorizer
    assert authorizer is not None, "custom_provider chooses authorizers only"
    return authorizer


def _enabled_by(rbac_filter: str, provider: ExtensionProvider) -> metadata_pb2.MetadataMatcher:
    """Run only when the marking RBAC filter matched one of this provider's rules."""
    key = metadata_pb2.MetadataMatcher.PathSegment(key=f"{SHADOW_STAT_PREFIX}shadow_effective_policy_id")
    prefix = value_pb2.ValueMatcher(
        string_match=string_pb2.StringMatcher(prefix=f"{CUSTOM_POLICY_PREFIX}-{provider.name}-")
    )
    return metadata_pb2.MetadataMatcher(filter=rbac_filter, path=[key], value=prefix)


def _http_config(provider: ExtensionProvider, cluster: str) -> http_ext_authz.ExtAuthz:
    authorizer = _authorizer(provider)
    config = http_ext_authz.ExtAuthz(
        failure_mode_allow=authorizer.fail_open, transport_api_version=config_source_pb2.V3
    )
    if authorizer.status_on_error:
        config.status_on_error.code = int(authorizer.status_on_error)
    if isinstance(authorizer, ExtAuthzHttp):
        config.http_service.CopyFrom(_http_service(authorizer, cluster))
        if authorizer.include_request_headers_in_check:
            config.allowed_headers.CopyFrom(_header_names(authorizer.include_request_headers_in_check))
    else:
        config.grpc_service.CopyFrom(_grpc_service(authorizer, cluster))
    return config


def _http_service(authorizer: ExtAuthzHttp, cluster: str) -> http_ext_authz.HttpService:
    service = http_ext_authz.HttpService(
        path_prefix=authorizer.path_prefix,
        # Envoy requires a URI; the cluster is what it connects to.
        server_uri=http_uri_pb2.HttpUri(
            uri=f"http://{authorizer.host}", cluster=cluster, timeout=duration(authorizer.timeout_seconds)
        ),
    )
    for name, value in sorted(authorizer.include_additional_headers_in_check.items()):
        service.authorization_request.headers_to_add.append(base_pb2.HeaderValue(key=name, value=value))
    response = service.authorization_response
    for field, headers in (
        (response.allowed_upstream_headers, authorizer.headers_to_upstream_on_allow),
        (response.allowed_client_headers, authorizer.headers_to_downstream_on_deny),
        (response.allowed_client_headers_on_success, authorizer.headers_to_downstream_on_allow),
    ):
        if headers:
            field.CopyFrom(_header_names(headers))
    return service


def _grpc_service(authorizer: ExtAuthzProvider, cluster: str) -> grpc_service_pb2.GrpcService:
    # `|` is not valid in an authority; without one Envoy would send the cluster name (Istio's fix).
    grpc = grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=cluster, authority=cluster.replace("|", "_."))
    return grpc_service_pb2.GrpcService(envoy_grpc=grpc, timeout=duration(authorizer.timeout_seconds))


def _header_names(headers: list[str]) -> string_pb2.ListStringMatcher:
    """Header names, any case, with Istio's `*` prefix and suffix wildcards."""
    patterns = []
    for h in headers:
        if h.startswith("*") and len(h) > 1:
            patterns.append(string_pb2.StringMatcher(suffix=h[1:], ignore_case=True))
        elif h.endswith("*") and len(h) > 1:
            patterns.append(string_pb2.StringMatcher(prefix=h[:-1], ignore_case=True))
        else:
            patterns.append(string_pb2.StringMatcher(exact=h, ignore_case=True))
    return string_pb2.ListStringMatcher(patterns=patterns)


# --- where the authorizer is -----------------------------------------------------------------------


def authorizer_cluster(snapshot: MeshSnapshot, proxy: Workload, provider: ExtensionProvider) -> str:
    """The mesh service's outbound cluster, or the one `clusters` adds for another host."""
    authorizer = _authorizer(provider)
    host = authorizer.host.lower()
    for service in snapshot.services_for(proxy):
        if service.port == authorizer.port and host in (
            service.hostname,
            *service.aliases(proxy.namespace, snapshot.domain),
        ):
            return names.outbound_cluster(service.port, None, service.hostname)
    return names.outbound_cluster(authorizer.port, None, host)


def clusters(snapshot: MeshSnapshot, proxy: Workload) -> list[cluster_pb2.Cluster]:
    """A cluster for the workload's authorizer when it is not a mesh service (else none)."""
    provider, _ = custom_provider(snapshot, proxy)
    if provider is None:
        return []
    name = authorizer_cluster(snapshot, proxy, provider)
    if any(
        s.port == _authorizer(provider).port and names.outbound_cluster(s.port, None, s.hostname) == name
        for s in snapshot.services_for(proxy)
    ):
        return []
    return [_external(name, provider)]


def _external(name: str, provider: ExtensionProvider) -> cluster_pb2.Cluster:
    authorizer = _authorizer(provider)  # gRPC authorizers need HTTP/2
    return external_cluster(
        name,
        authorizer.host,
        authorizer.port,
        http2=provider.envoy_ext_authz_grpc is not None,
        connect_timeout=CONNECT_TIMEOUT,
    )
