"""The control plane's CA: its files, the trust bundle, what each proxy holds, and root rotation.

Files under `$LATTICE_HOME/ca/` (keys 0600, directory 0700): `ca.pem` + `ca-key.pem` (the signing
CA, generated on first start unless `--ca-cert/--ca-key` name a plug-in CA), `bundle.pem` (the
roots workloads trust) and `state.json` (bundle version, rotation phase, the next CA during one).

Root rotation never leaves two workloads unable to talk:
1. `distributing`: the new root joins the bundle; signing stays on the old one. Once every
   registered proxy reports holding the new bundle,
2. `switching`: signing moves to the new root and every proxy is told to renew. Once every proxy
   holds a certificate from the new root,
3. the old root leaves the bundle, and the rotation is over.

Revocation: certificates signed under a revoked join token or identity are listed in a CRL, one
per CA that may have signed live certificates (the signing CA, the next one, the one a rotation is
retiring), which agents fetch when a heartbeat says its version changed and hand to Envoy with the
trust bundle. With nothing revoked there is no CRL at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from cryptography import x509

from lattice.identity import (
    CONTROL_PLANE_NAME,
    CertificateAuthority,
    CsrRefused,
    Issued,
    SpiffeId,
    fingerprint,
    new_key,
    trust_bundle_pem,
)
from lattice.identity.ca import ROOT_VALIDITY
from lattice.identity.csr import key_pem
from lattice.server.agent_port import derive_key

log = logging.getLogger("lattice.ca")
# A CRL lists certificates that are still valid; a long next-update keeps sidecars accepting it
# while the control plane is away (an expired CRL would make every handshake fail).
CRL_VALIDITY = timedelta(days=365)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Held:
    """What one proxy holds: from the certificate we signed for it and its heartbeats."""

    identity: str
    serial: str
    not_after: str  # ISO 8601
    root: str  # fingerprint of the root its chain ends at
    bundle_version: int = 0
    not_before: str = ""  # ISO 8601; with not_after, how far into its life the certificate is


class CaManager:
    def stats(self) -> dict:
        """What a metrics scrape reads of the CA: when the signing root expires (Unix seconds)."""
        return {"root_expires_at": self.ca.root.not_valid_after_utc.timestamp()}

    def __init__(
        self,
        home: Path,
        trust_domain: str,
        cert_ttl: timedelta,
        ca_cert: Path | None = None,
        ca_key: Path | None = None,
        clock: Callable[[], datetime] = utc_now,
        root_validity: timedelta = ROOT_VALIDITY,
    ) -> None:
        self.dir = home / "ca"
        self.root_validity = root_validity  # of each root generated here (server/ca_duty.py rotates it)
        self.trust_domain = trust_domain
        self.cert_ttl = cert_ttl
        self.clock = clock
        self.plugged = ca_cert is not None
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if ca_cert is not None:
            self.ca = self._load(ca_cert, ca_key)
        elif (self.dir / "ca.pem").exists():
            self.ca = self._load(self.dir / "ca.pem", self.dir / "ca-key.pem")
        else:
            self.ca = CertificateAuthority.generate(trust_domain, clock, root_validity)
            self._save_ca(self.ca, "ca")
            log.info(
                "generated a new root CA for trust domain %s (sha256 %s)", trust_domain, self.ca.root_fingerprint[:16]
            )
        state = self._read_state()
        self.bundle_version: int = state.get("bundle_version", 1)
        self.phase: str = state.get("phase", "")
        self.next: CertificateAuthority | None = (
            self._load(self.dir / "next.pem", self.dir / "next-key.pem") if self.phase else None
        )
        self.roots: list[x509.Certificate] = self._read_bundle() or [self.ca.root]
        if self.ca.root_fingerprint not in {fingerprint(r) for r in self.roots}:
            self.roots.append(self.ca.root)  # a plug-in CA changed: trust it
            self.bundle_version += 1
        self.previous: CertificateAuthority | None = None  # the CA a rotation is retiring
        self._revoked: list[int] = []  # serials of live certificates whose grant was revoked
        self._crl: bytes | None = None
        self._agent_secret: tuple[str, bytes] | None = None
        self.held: dict[str, Held] = {}  # proxy id -> what it holds
        self.issued = 0
        self.refused: Counter[str] = Counter()  # CSR refusals by reason, and "token" for join tokens
        self._counted: Counter[str] = Counter()  # the part of those the store's totals already hold
        self._totals: dict[str, int] | None = None  # every replica's counts, as the store last said
        self._server: tuple[bytes, bytes, datetime] | None = None
        self._persist()

    # --- signing -------------------------------------------------------------------------

    def sign(self, csr_pem: bytes, identity: SpiffeId, proxy_id: str) -> Issued:
        try:
            issued = self.ca.sign(csr_pem, identity, self.cert_ttl)
        except CsrRefused as e:
            self.refused[e.reason] += 1
            raise
        self.issued += 1
        previous = self.held.get(proxy_id)
        self.held[proxy_id] = Held(
            str(identity),
            f"{issued.serial:x}",
            issued.not_after.isoformat(),
            issued.root_fingerprint,
            previous.bundle_version if previous else 0,
            self.clock().isoformat(),
        )
        return issued

    def server_credentials(self) -> tuple[bytes, bytes]:
        """(chain, key) for the control plane's own TLS endpoints; renewed at half-life."""
        now = self.clock()
        if self._server is None or now >= self._server[2]:
            key = new_key()
            issued = self.ca.issue_server(key, [CONTROL_PLANE_NAME], self.cert_ttl)
            renew_at = now + (issued.not_after - now) / 2
            self._server = (issued.chain_pem, key_pem(key), renew_at)
        return self._server[0], self._server[1]

    @property
    def bundle_pem(self) -> bytes:
        return trust_bundle_pem(self.roots)

    @property
    def root_fingerprint(self) -> str:
        return self.ca.root_fingerprint

    def counters(self) -> dict:
        """Certificates issued and refusals by reason: the store's totals (every replica, every
        restart) plus what this process has not added to them yet; this process's alone until
        the store has answered once."""
        counts = Counter(self._totals or {}) + self.uncounted()
        if self._totals is None:
            counts = self._mine()
        refused = {k.removeprefix("refused:"): n for k, n in counts.items() if k.startswith("refused:") and n}
        return {"issued": counts["issued"], "refused": refused}

    def uncounted(self) -> Counter[str]:
        """What this process counted that the store's totals do not hold yet."""
        return self._mine() - self._counted

    def counted(self, added: Counter[str], totals: dict[str, int]) -> None:
        """`added` is now in the store's totals, which are `totals`."""
        self._counted += added
        self._totals = dict(totals)

    def _mine(self) -> Counter[str]:
        return Counter({"issued": self.issued, **{f"refused:{k}": n for k, n in self.refused.items()}})

    # --- agents' ports ---------------------------------------------------------------------

    def agent_key(self, proxy_id: str) -> str:
        """The credential the agent of `proxy_id` asks for on its port (see server/agent_port.py)."""
        if self._agent_secret is None or self._agent_secret[0] != self.ca.root_fingerprint:
            self._agent_secret = (self.ca.root_fingerprint, self.ca.to_pem()[1])
        return derive_key(self._agent_secret[1], proxy_id)

    # --- revocation ----------------------------------------------------------------------

    def set_revoked(self, serials: list[str]) -> bool:
        """The serials (hex) of live certificates that are revoked; True if that changed."""
        wanted = sorted({int(s, 16) for s in serials})
        if wanted == self._revoked:
            return False
        self._revoked, self._crl = wanted, None
        return True

    @property
    def revoked_count(self) -> int:
        return len(self._revoked)

    @property
    def crl_version(self) -> str:
        """Changes whenever the CRL would; empty while nothing is revoked (and no CRL is sent)."""
        if not self._revoked:
            return ""
        signers = ",".join(c.root_fingerprint + f"{c.signing_cert.serial_number:x}" for c in self._signers())
        listed = ",".join(f"{s:x}" for s in self._revoked)
        return hashlib.sha256(f"{signers};{listed}".encode()).hexdigest()[:16]

    def crl_pem(self) -> bytes:
        if not self._revoked:
            return b""
        if self._crl is None:
            self._crl = b"".join(ca.revocation_list(self._revoked, CRL_VALIDITY) for ca in self._signers())
        return self._crl

    def _signers(self) -> list[CertificateAuthority]:
        return [c for c in (self.ca, self.next, self.previous) if c is not None]

    # --- what proxies hold ---------------------------------------------------------------

    def report(self, proxy_id: str, bundle_version: int, certificate: dict | None) -> dict:
        """A heartbeat's view of what the proxy holds (so a restarted control plane knows it
        too). Answers what the proxy should do next: fetch the bundle, renew."""
        if certificate:
            self.held[proxy_id] = Held(
                str(certificate.get("identity", "")),
                str(certificate.get("serial", "")),
                str(certificate.get("not_after", "")),
                str(certificate.get("root", "")),
                not_before=str(certificate.get("not_before", "")),
            )
        held = self.held.get(proxy_id)
        if held is not None:
            held.bundle_version = bundle_version
        renew = held is not None and held.root != self.ca.root_fingerprint
        return {"bundle_version": self.bundle_version, "renew": renew}

    def forget(self, proxy_id: str) -> None:
        self.held.pop(proxy_id, None)

    # --- root rotation -------------------------------------------------------------------

    def start_rotation(self) -> None:
        if self.plugged:
            raise RotationError(
                "the CA is a plug-in (--ca-cert/--ca-key): rotate it at its source, then restart the server with "
                "the new files"
            )
        if self.phase:
            raise RotationError(f"a root rotation is already in progress ({self.phase}); see `lattice ca show`")
        self.next = CertificateAuthority.generate(self.trust_domain, self.clock, self.root_validity)
        self._crl = None
        self._save_ca(self.next, "next")
        self.roots = [*self.roots, self.next.root]
        self.bundle_version += 1
        self.phase = "distributing"
        self._persist()
        log.info(
            "root rotation: new root %s added to the trust bundle (version %d)",
            self.next.root_fingerprint[:16],
            self.bundle_version,
        )

    def advance(self, proxies: list[str]) -> None:
        """Move the rotation on when every registered proxy has caught up with its phase."""
        if self.phase == "distributing" and self.next is not None and all(self.trusts_bundle(p) for p in proxies):
            self.previous, self.ca, self.next = self.ca, self.next, None
            self._crl = None
            self._save_ca(self.ca, "ca")
            for suffix in ("next.pem", "next-key.pem"):
                (self.dir / suffix).unlink(missing_ok=True)
            self._server = None  # the control plane's own certificate moves to the new root too
            self.phase = "switching"
            self._persist()
            log.info("root rotation: every proxy trusts the new root; signing with it now")
        elif self.phase == "switching" and all(self.trusts_bundle(p) and self.on_signing_root(p) for p in proxies):
            retired = [fingerprint(r)[:16] for r in self.roots if fingerprint(r) != self.ca.root_fingerprint]
            self.roots = [self.ca.root]
            self.bundle_version += 1
            self.phase = ""
            self.previous, self._crl = None, None
            self._persist()
            log.info("root rotation done: retired %s", ", ".join(retired))

    # --- several replicas: the mesh's roots ------------------------------------------------

    def set_mesh_roots(self, recorded: list[dict]) -> bool:
        """Trust the roots the mesh records (the store's ca/roots) besides our own signing root;
        True if the trust bundle changed (its version moves, so agents fetch it)."""
        roots = {fingerprint(self.ca.root): self.ca.root}
        for entry in recorded:
            if entry.get("pem") and entry.get("fingerprint") not in roots:
                try:
                    roots[entry["fingerprint"]] = x509.load_pem_x509_certificate(entry["pem"].encode())
                except ValueError:
                    log.warning("ignoring an unreadable trusted root %s in the store", str(entry["fingerprint"])[:16])
        if [fingerprint(r) for r in self.roots] == list(roots):
            return False
        self.roots = list(roots.values())
        self.bundle_version += 1
        self._persist()
        log.info("trust bundle v%d: %s", self.bundle_version, ", ".join(f[:16] for f in roots))
        return True

    def held_roots(self, proxies: list[str]) -> dict[str, int]:
        """How many of `proxies` hold a certificate from each root (fingerprint -> count)."""
        counts = Counter(self.held[p].root for p in proxies if p in self.held)
        return dict(counts)

    def trusts_bundle(self, proxy_id: str) -> bool:
        held = self.held.get(proxy_id)
        return held is not None and held.bundle_version >= self.bundle_version

    def on_signing_root(self, proxy_id: str) -> bool:
        held = self.held.get(proxy_id)
        return held is not None and held.root == self.ca.root_fingerprint

    def describe(self) -> dict:
        now = self.clock()
        roots = [
            {
                "fingerprint": fingerprint(r),
                "subject": r.subject.rfc4514_string(),
                "not_before": r.not_valid_before_utc.isoformat(),
                "not_after": r.not_valid_after_utc.isoformat(),
                "signing": fingerprint(r) == self.ca.root_fingerprint,
            }
            for r in self.roots
        ]
        signing = self.ca.signing_cert
        return {
            "trust_domain": self.trust_domain,
            "plug_in": self.plugged,
            "cert_ttl_seconds": self.cert_ttl.total_seconds(),
            "bundle_version": self.bundle_version,
            "rotation": self.phase or "none",
            "roots": roots,
            "signing": {
                "subject": signing.subject.rfc4514_string(),
                "not_after": signing.not_valid_after_utc.isoformat(),
                "days_left": round((signing.not_valid_after_utc - now).total_seconds() / 86400, 1),
            },
            **self.counters(),
        }

    # --- files ---------------------------------------------------------------------------

    def _load(self, cert: Path, key: Path | None) -> CertificateAuthority:
        try:
            return CertificateAuthority.load(
                cert.read_bytes(), key.read_bytes() if key else b"", self.trust_domain, self.clock
            )
        except OSError as e:
            raise SystemExit(f"cannot read the CA file {e.filename}: {e.strerror}") from None
        except ValueError as e:
            raise SystemExit(f"cannot use the CA in {cert}: {e}") from None

    def _save_ca(self, ca: CertificateAuthority, stem: str) -> None:
        cert_pem, private = ca.to_pem()
        _write(self.dir / f"{stem}-key.pem", private, 0o600)
        _write(self.dir / f"{stem}.pem", cert_pem, 0o644)

    def _read_state(self) -> dict:
        try:
            return json.loads((self.dir / "state.json").read_text())
        except (OSError, ValueError):
            return {}

    def _read_bundle(self) -> list[x509.Certificate]:
        try:
            return x509.load_pem_x509_certificates((self.dir / "bundle.pem").read_bytes())
        except (OSError, ValueError):
            return []

    def _persist(self) -> None:
        _write(self.dir / "bundle.pem", self.bundle_pem, 0o644)
        _write(
            self.dir / "state.json",
            json.dumps({"bundle_version": self.bundle_version, "phase": self.phase}).encode(),
            0o644,
        )


class RotationError(RuntimeError):
    pass


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomically, and never readable by others even for an instant."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    tmp.replace(path)
