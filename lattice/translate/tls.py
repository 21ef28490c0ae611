"""TLS between sidecars: the contexts that make every hop mutual TLS, and the client side's choice.

Certificates never appear in generated config. Envoy gets them from its own agent over SDS: the
workload's key and chain as secret `default`, the mesh's trust bundle as `ROOTCA` (Istio's names).
A sidecar whose agent has no certificate yet cannot finish a handshake, so it fails closed.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from lattice.api.destination_rule import ClientTLSSettings
from lattice.mesh import MeshSnapshot, Service
from lattice.translate import policy
from lattice.translate.agent_names import CERT_SECRET, ROOT_SECRET, SDS_CLUSTER
from lattice.translate.protos import pack

TLS_SOCKET = "envoy.transport_sockets.tls"
# Endpoint metadata that marks a destination with a sidecar (Istio's auto mTLS key).
SOCKET_MATCH = "envoy.transport_socket_match"
MESH_TLS_MODE = {"tlsMode": "istio"}
_TLS12, _TLS13 = common_pb2.TlsParameters.TLSv1_2, common_pb2.TlsParameters.TLSv1_3


def _sds(name: str) -> secret_pb2.SdsSecretConfig:
    source = config_source_pb2.ConfigSource(
        resource_api_version=config_source_pb2.V3,
        api_config_source=config_source_pb2.ApiConfigSource(
            api_type=config_source_pb2.ApiConfigSource.GRPC,
            transport_api_version=config_source_pb2.V3,
            grpc_services=[
                grpc_service_pb2.GrpcService(
                    envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=SDS_CLUSTER)
                )
            ],
        ),
    )
    return secret_pb2.SdsSecretConfig(name=name, sds_config=source)


def _mesh_context(peer_sans: list[str] | None, alpn: list[str]) -> tls_pb2.CommonTlsContext:
    """Our certificate, the mesh trust bundle and, when given, the peer identities we accept."""
    matchers = [
        common_pb2.SubjectAltNameMatcher(
            san_type=common_pb2.SubjectAltNameMatcher.URI, matcher=string_pb2.StringMatcher(exact=san)
        )
        for san in peer_sans or ()
    ]
    return tls_pb2.CommonTlsContext(
        tls_params=common_pb2.TlsParameters(tls_minimum_protocol_version=_TLS12, tls_maximum_protocol_version=_TLS13),
        tls_certificate_sds_secret_configs=[_sds(CERT_SECRET)],
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=common_pb2.CertificateValidationContext(match_typed_subject_alt_names=matchers),
            validation_context_sds_secret_config=_sds(ROOT_SECRET),
        ),
        alpn_protocols=alpn,
    )


def inbound_socket() -> base_pb2.TransportSocket:
    """Server side of a hop: the peer must present a certificate from the mesh's trust bundle."""
    context = tls_pb2.DownstreamTlsContext(common_tls_context=_mesh_context(None, ["h2", "http/1.1"]))
    context.require_client_certificate.value = True
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=pack(context))


def mesh_client_socket(peer_sans: list[str], sni: str) -> base_pb2.TransportSocket:
    """Client side of a hop (ISTIO_MUTUAL): present our identity, accept only the destination's."""
    context = tls_pb2.UpstreamTlsContext(common_tls_context=_mesh_context(peer_sans, []), sni=sni)
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=pack(context))


def origination_socket(tls: ClientTLSSettings, sni: str) -> base_pb2.TransportSocket:
    """SIMPLE or MUTUAL: TLS to a destination that terminates TLS itself, with the user's files."""
    validation = common_pb2.CertificateValidationContext(
        match_typed_subject_alt_names=[
            common_pb2.SubjectAltNameMatcher(
                san_type=common_pb2.SubjectAltNameMatcher.DNS, matcher=string_pb2.StringMatcher(exact=san)
            )
            for san in tls.subject_alt_names
        ]
    )
    if tls.ca_certificates:
        validation.trusted_ca.filename = tls.ca_certificates
    elif not tls.insecure_skip_verify:
        validation.system_root_certs.SetInParent()
    if tls.ca_crl:
        validation.crl.filename = tls.ca_crl
    common = tls_pb2.CommonTlsContext(
        tls_params=common_pb2.TlsParameters(tls_minimum_protocol_version=_TLS12, tls_maximum_protocol_version=_TLS13)
    )
    if not tls.insecure_skip_verify:
        common.validation_context.CopyFrom(validation)
    if tls.mode == "MUTUAL":
        certificate = common.tls_certificates.add()
        certificate.certificate_chain.filename = tls.client_certificate
        certificate.private_key.filename = tls.private_key
    context = tls_pb2.UpstreamTlsContext(common_tls_context=common, sni=tls.sni or sni)
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=pack(context))


def client_tls(snapshot: MeshSnapshot, service: Service, subset: str | None) -> ClientTLSSettings | None:
    """The DestinationRule's TLS settings for one cluster, by the precedence every traffic-policy
    field follows (host, its port level, the subset, the subset's port level; see policy.py)."""
    return policy.effective(snapshot, service.hostname, subset, service.port).tls  # the one place precedence lives


def peer_identities(snapshot: MeshSnapshot, service: Service) -> list[str]:
    """The identities a client accepts from the service's endpoints: its workloads' SPIFFE IDs, and
    a ServiceEntry's `subjectAltNames` (Istio verifies both)."""
    identities = {snapshot.identity(w) for w in snapshot.endpoints(service.hostname) if w.service_account}
    return sorted(identities | set(service.subject_alt_names))
