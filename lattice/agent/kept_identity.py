"""A workload identity kept on its host, so a restarted agent re-attests without a join token.

After every certificate the agent gets, it keeps key, certificate chain and trust bundle in
`$LATTICE_HOME/identity/<namespace>/<service-account>/` (directory 0700, file 0600; the key
never leaves the host, as before). A restarted agent — crash, reboot, upgrade — that finds a
certificate there still valid pays its first CSR with it (mTLS to the agents' API, as a renewal),
checking the control plane against the kept bundle, when it has no join token or the control
plane refuses the one it has (spent, expired: 401). A token of another identity is still refused
(403) and stops the agent. The join token is needed again only when the kept certificate is
refused (its root was replaced) or has expired.
Replicas of one identity on one host share the directory: each write replaces its one file,
`identity.json` (key, chain, bundle and the proxy id it was issued to), whole, and any of their
certificates is as good as another. The proxy id lets the control plane carry the grant that
certificate was signed under over to the restarted agent's new proxy id.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from lattice.agent import certs

FILE = "identity.json"


def lattice_home() -> Path:
    return Path(os.environ.get("LATTICE_HOME") or Path.home() / ".lattice")


@dataclass(frozen=True)
class KeptIdentity:
    chain: bytes
    key: bytes
    bundle: bytes
    proxy_id: str  # the proxy the certificate was issued to
    spiffe: str
    not_after: datetime


class IdentityKeeper:
    def __init__(self, namespace: str, service_account: str, home: Path | None = None) -> None:
        self.directory = (home or lattice_home()) / "identity" / namespace / service_account

    def load(self) -> KeptIdentity | None:
        """The kept identity, if there is one whose certificate is still valid."""
        try:
            kept = json.loads((self.directory / FILE).read_text())
            chain, key, bundle = (kept[k].encode() for k in ("chain", "key", "bundle"))
            info = certs.leaf(chain)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        if info.not_after <= datetime.now(timezone.utc):
            return None
        return KeptIdentity(chain, key, bundle, str(kept.get("proxy_id", "")), info.spiffe_id, info.not_after)

    def save(self, chain: bytes, key: bytes, bundle: bytes, proxy_id: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        record = {"chain": chain.decode(), "key": key.decode(), "bundle": bundle.decode(), "proxy_id": proxy_id}
        _replace(self.directory / FILE, json.dumps(record).encode())

    def exists(self) -> bool:
        return self.load() is not None


def _replace(path: Path, data: bytes) -> None:
    """Written aside (0600) and renamed over: a reader sees the old file or the new, never half."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(temporary, path)
