"""The workload's identity: its key (made here, never sent), its certificate, the trust bundle.

The key and CSR are made in a short-lived process (agent/keysmith.py), started as soon as a
certificate is wanted so that it works while the bundle is fetched; certificates are read with
agent/certs.py: the agent's own process never loads the cryptography library.

First certificate: fetch the trust bundle, check it holds the root the join token was minted
under (the token's pin), then send a CSR with the token over TLS verified against that bundle.
Renewals are paid with the current certificate, at half-life, or at once when the control plane
asks (root rotation). A failed renewal is retried with backoff while the certificate lasts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import ssl
from ssl import SSLContext
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from lattice.agent import certs
from lattice.agent.keysmith import Keysmith, KeysmithError
from lattice.identity import CONTROL_PLANE_NAME, SpiffeId, parse_token
from lattice.agent.kept_identity import IdentityKeeper, KeptIdentity
from lattice.agent.web_client import Client, ClientError, ClientResponse
from lattice.identity.tokens import pin_for

log = logging.getLogger("lattice.identity")


class IdentityError(RuntimeError):
    pass


class TokenRefused(IdentityError):
    """The control plane refused the credential (401): a spent, expired or unknown join token."""


class Identity:
    def __init__(
        self,
        server: str,
        proxy_id: str,
        namespace: str,
        service_account: str,
        token: str | None,
        run_dir: Path,
        on_change: Callable[[], None] = lambda: None,
        keeper: IdentityKeeper | None = None,
    ) -> None:
        self.keeper = keeper  # kept on the host: a restart re-attests with it (agent/kept_identity.py)
        self.server = server.rstrip("/")
        self.proxy_id = proxy_id
        self.namespace, self.service_account = namespace, service_account
        self.token = token
        self.run_dir = run_dir
        self.on_change = on_change
        self.chain = self.key = self.bundle = b""
        self.bundle_version = 0
        self.agent_key = ""
        self.crl, self.crl_version = b"", ""  # certificates peers must no longer present
        self.spiffe = self.trust_domain = self.root = ""
        self.xds = ""
        self.not_after: datetime | None = None
        self.renew_now = asyncio.Event()
        self._issued_at: datetime | None = None
        self._certificate: dict = {}  # what heartbeats report about the certificate held
        self._ssl: SSLContext | None = None
        self.keysmith = Keysmith()

    # --- what others use ---------------------------------------------------------------------

    def ssl(self) -> SSLContext | bool:
        """Client context for the agent API: our certificate, the server checked against the bundle
        (before the first certificate: True, the system's default verification)."""
        return self._ssl if self._ssl is not None else True

    @property
    def _kept_in(self) -> Path | None:
        return self.keeper.directory if self.keeper is not None else None

    def held(self) -> dict:
        """What we hold, as heartbeats report it (lets the control plane track rotation)."""
        return {"bundle_version": self.bundle_version, "certificate": self._certificate}

    # --- getting and renewing ----------------------------------------------------------------

    async def obtain(self, session: Client) -> None:
        """The first certificate: for the join token; without one, or when the control plane
        refuses it (spent, expired), for the certificate kept on this host if it is still good."""
        await self.keysmith.start()  # the key is made meanwhile
        kept = self.keeper.load() if self.keeper is not None else None
        if self.token and kept is not None:
            try:
                return await self._redeem_token(session)
            except TokenRefused as e:
                log.info("%s; re-attesting with the certificate kept in %s", e, self._kept_in)
        if kept is not None:
            try:
                return await self._reattest(session, kept)
            except (ClientError, IdentityError) as e:
                raise IdentityError(
                    f"the certificate kept in {self._kept_in} was refused ({e}); pass a new join token"
                ) from None
        await self._redeem_token(session)

    async def _redeem_token(self, session: Client) -> None:
        if not self.token:
            raise IdentityError(
                f"no join token for {self._wanted}: pass --token-file or LATTICE_TOKEN (create one with "
                f"`lattice token create --service-account {self.service_account} -n {self.namespace}`)"
            )
        try:
            pin = parse_token(self.token).pin
        except ValueError as e:
            raise IdentityError(f"the join token is malformed: {e}") from None
        bundle = await self._fetch_bundle(session, pin)
        await self._request(session, {"Authorization": f"Bearer {self.token}"}, bundle)

    async def _reattest(self, session: Client, kept: KeptIdentity) -> None:
        """A new certificate paid with the kept one, over TLS checked against the kept bundle."""
        self.trust_domain = SpiffeId.parse(kept.spiffe).trust_domain
        self.chain, self.key = kept.chain, kept.key
        await self._request(session, {}, kept.bundle, reattest_from=kept.proxy_id)
        log.info("re-attested with the certificate kept in %s", self._kept_in)

    async def renew(self, session: Client) -> None:
        """With the certificate we hold; once that has expired (the control plane was away too
        long), only the join token can vouch for us again, if it is still good."""
        if self.not_after is not None and _now() >= self.not_after:
            if not self.token:
                raise IdentityError("the certificate expired and there is no join token to get a new one")
            await self._request(session, {"Authorization": f"Bearer {self.token}"}, self.bundle)
        else:
            await self._request(session, {}, self.bundle)

    async def renew_forever(self, session: Client) -> None:
        while True:
            await self._wait_half_life()
            backoff = 0.5
            while True:
                try:
                    await self.renew(session)
                    break
                except (ClientError, TimeoutError, IdentityError) as e:
                    left = (self.not_after - _now()).total_seconds() if self.not_after is not None else 0.0
                    log.warning(
                        "certificate renewal failed (%s); %.0fs of validity left, retrying in %.1fs", e, left, backoff
                    )
                    await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                    backoff = min(backoff * 2, max(1.0, left / 10))

    async def refresh_bundle(self, session: Client) -> None:
        async with session.get(
            f"{self.server}/agent/v1/bundle", ssl=self.ssl(), server_hostname=CONTROL_PLANE_NAME
        ) as response:
            body = await _json(response, "fetching the trust bundle")
        self._store(self.chain, self.key, body["bundle"].encode(), int(body["bundle_version"]))
        if self.keeper is not None:
            self.keeper.save(self.chain, self.key, self.bundle, self.proxy_id)
        log.info("trust bundle version %d (%d roots)", self.bundle_version, self.bundle.count(b"BEGIN CERTIFICATE"))

    async def refresh_crl(self, session: Client) -> None:
        async with session.get(
            f"{self.server}/agent/v1/crl", ssl=self.ssl(), server_hostname=CONTROL_PLANE_NAME
        ) as response:
            body = await _json(response, "fetching the revocation list")
        crl, version = str(body.get("crl", "")).encode(), str(body.get("crl_version", ""))
        if crl and b"BEGIN X509 CRL" not in crl:
            raise IdentityError("the control plane's revocation list is not a PEM CRL")
        changed = crl != self.crl
        self.crl, self.crl_version = crl, version
        log.info("revocation list version %s (%d CRLs)", version or "none", crl.count(b"BEGIN X509 CRL"))
        if changed:
            self.on_change()

    async def _wait_half_life(self) -> None:
        if self.not_after is None or self._issued_at is None:
            raise IdentityError("there is no certificate to renew yet")
        remaining = (self.not_after - self._issued_at) / 2 - (_now() - self._issued_at)
        try:
            await asyncio.wait_for(self.renew_now.wait(), max(0.0, remaining.total_seconds()))
        except TimeoutError:
            pass
        self.renew_now.clear()

    async def _fetch_bundle(self, session: Client, pin: str) -> bytes:
        """The bundle over unverified TLS (it is public), trusted only if it holds the pinned root."""
        unverified = ssl.create_default_context()
        unverified.check_hostname = False
        unverified.verify_mode = ssl.CERT_NONE
        async with session.get(f"{self.server}/agent/v1/bundle", ssl=unverified) as response:
            body = await _json(response, "fetching the trust bundle")
        bundle = body["bundle"].encode()
        self.trust_domain = body["trust_domain"]
        pins = {pin_for(certs.fingerprint(der)) for der in certs.pem_certificates(bundle)}
        if pin not in pins:
            raise IdentityError(
                f"the control plane at {self.server} does not hold the CA root this join token was made for; is it "
                "the right server? (mint a new token if its root was rotated)"
            )
        return bundle

    async def _request(self, session: Client, headers: dict, bundle: bytes, reattest_from: str = "") -> None:
        try:
            key, csr = await self.keysmith.forge(str(SpiffeId(self.trust_domain, self.namespace, self.service_account)))
        except KeysmithError as e:
            raise IdentityError(str(e)) from None
        context = self._context(bundle, with_client=not headers)
        async with session.post(
            f"{self.server}/agent/v1/certificate",
            json={"csr": csr.decode(), "proxy_id": self.proxy_id}
            | ({"reattest_from": reattest_from} if reattest_from else {}),
            headers=headers,
            ssl=context,
            server_hostname=CONTROL_PLANE_NAME,
        ) as response:
            body = await _json(response, "requesting a certificate")
        self.xds, self.root = body.get("xds", ""), body["root"]
        self.agent_key = str(body.get("agent_key", ""))  # what callers of our port's private endpoints present
        self._store(body["chain"].encode(), key, body["bundle"].encode(), int(body["bundle_version"]))
        if self.keeper is not None:
            self.keeper.save(self.chain, self.key, self.bundle, self.proxy_id)
        info = certs.leaf(self.chain)
        self.spiffe, self.not_after, self._issued_at = info.spiffe_id, info.not_after, _now()
        self._certificate = {
            "identity": info.spiffe_id,
            "serial": info.serial,
            "not_after": info.not_after.isoformat(),
            "not_before": info.not_before.isoformat(),
            "root": self.root,
        }
        log.info("certificate for %s until %s", self.spiffe, info.not_after.isoformat(timespec="seconds"))

    def _store(self, chain: bytes, key: bytes, bundle: bytes, bundle_version: int) -> None:
        changed = (chain, key, bundle) != (self.chain, self.key, self.bundle)
        self.chain, self.key, self.bundle, self.bundle_version = chain, key, bundle, bundle_version
        self._ssl = self._context(bundle, with_client=True)
        if changed:
            self.on_change()

    def _context(self, bundle: bytes, with_client: bool) -> SSLContext:
        context = ssl.create_default_context(cadata=bundle.decode())
        if with_client and self.chain:
            # ssl loads certificates from files only: they live in the agent's 0700 run directory.
            cert_file, key_file = self.run_dir / "cert.pem", self.run_dir / "key.pem"
            _write_private(key_file, self.key)
            cert_file.write_bytes(self.chain)
            context.load_cert_chain(cert_file, key_file)
        return context

    @property
    def _wanted(self) -> str:
        return f"{self.namespace}/{self.service_account}"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


async def _json(response: ClientResponse, what: str) -> dict:
    try:
        body = await response.json(content_type=None)
    except ValueError:
        body = {"error": (await response.text())[:300]}
    if response.status == 401:
        raise TokenRefused(f"{what}: the control plane said 401: {body.get('error', body)}")
    if response.status != 200:
        raise IdentityError(f"{what}: the control plane said {response.status}: {body.get('error', body)}")
    return body


def _now() -> datetime:
    return datetime.now(timezone.utc)
