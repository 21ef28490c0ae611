"""SDS: the agent hands its Envoy the workload's key, chain and the trust bundle over a unix socket.

Envoy opens one stream per secret name it needs (`default`, `ROOTCA`). Each stream gets the
current secret at once and every new version as the agent renews or the trust bundle changes, so
certificates rotate under live traffic without restarting Envoy. Until the agent holds a
certificate, nothing is answered, and Envoy's TLS listeners and clusters stay unusable: closed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import AsyncIterator

from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from lattice.translate import CERT_SECRET, ROOT_SECRET

log = logging.getLogger("lattice.sds")
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


class SecretServer(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    def __init__(self) -> None:
        self._secrets: dict[str, secret_pb2.Secret] = {}
        self._wakeups: set[asyncio.Event] = set()  # one per open stream

    def update(self, chain_pem: bytes, key_pem: bytes, bundle_pem: bytes, crl_pem: bytes = b"") -> None:
        """Publish new material; every open stream sends what changed. With a CRL, a peer whose
        certificate it lists fails the handshake (only the leaf is checked: the CRLs come from
        the CAs that sign workload certificates)."""
        certificate = secret_pb2.Secret(name=CERT_SECRET)
        certificate.tls_certificate.certificate_chain.inline_bytes = chain_pem
        certificate.tls_certificate.private_key.inline_bytes = key_pem
        roots = secret_pb2.Secret(name=ROOT_SECRET, validation_context=common_pb2.CertificateValidationContext())
        roots.validation_context.trusted_ca.inline_bytes = bundle_pem
        if crl_pem:
            roots.validation_context.crl.inline_bytes = crl_pem
            roots.validation_context.only_verify_leaf_cert_crl = True
        self._secrets = {CERT_SECRET: certificate, ROOT_SECRET: roots}
        for wakeup in self._wakeups:
            wakeup.set()

    async def StreamSecrets(
        self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest], context
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        wakeup = asyncio.Event()
        subscription: list[list[str]] = [[]]  # the names Envoy asks for on this stream
        self._wakeups.add(wakeup)
        reader = asyncio.create_task(self._read(requests, subscription, wakeup))
        sent: dict[str, str] = {}
        try:
            while True:
                await wakeup.wait()
                wakeup.clear()
                response = self._response(subscription[0], sent)
                if response is not None:
                    yield response
        finally:
            self._wakeups.discard(wakeup)
            reader.cancel()

    def _response(self, names: list[str], sent: dict[str, str]) -> discovery_pb2.DiscoveryResponse | None:
        """The subscribed secrets if any changed since last sent; None if nothing to send (or no
        certificate yet: Envoy waits, and its TLS stays closed)."""
        secrets = [self._secrets[n] for n in names if n in self._secrets]
        versions = {s.name: _version(s) for s in secrets}
        if not secrets or all(sent.get(n) == v for n, v in versions.items()):
            return None
        sent.update(versions)
        version = "-".join(versions[s.name] for s in secrets)
        response = discovery_pb2.DiscoveryResponse(version_info=version, type_url=SECRET_TYPE, nonce=version)
        for s in secrets:
            response.resources.add().Pack(s)
        return response

    async def _read(
        self,
        requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
        subscription: list[list[str]],
        wakeup: asyncio.Event,
    ) -> None:
        try:
            async for request in requests:
                if request.HasField("error_detail"):
                    log.error(
                        "envoy rejected secrets %s: %s", list(request.resource_names), request.error_detail.message
                    )
                if list(request.resource_names) != subscription[0]:
                    subscription[0] = list(request.resource_names)
                    wakeup.set()
        except Exception as e:  # Envoy closed the stream
            log.debug("sds stream ended: %s", e)


def _version(secret: secret_pb2.Secret) -> str:
    return hashlib.blake2b(secret.SerializeToString(deterministic=True), digest_size=8).hexdigest()
