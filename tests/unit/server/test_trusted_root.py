"""`lattice ca trust add` takes exactly one self-signed CA certificate; anything else is refused
with what is wrong (before anything reaches the store)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from lattice.identity import CertificateAuthority, SpiffeId, make_csr, new_key
from lattice.server.rest import trusted_root


def _now() -> datetime:
    return datetime.now(timezone.utc)


def test_a_root_is_taken() -> None:
    ca = CertificateAuthority.generate("cluster.local", _now)
    assert trusted_root(ca.to_pem()[0].decode()).subject == ca.root.subject


@pytest.mark.parametrize(
    "pem, reason",
    [
        (None, "a PEM certificate is required"),
        ("hello", "a PEM certificate is required"),
    ],
)
def test_not_a_certificate_is_refused(pem, reason) -> None:
    with pytest.raises(ValueError, match=reason):
        trusted_root(pem)


def test_two_roots_and_a_workload_certificate_are_refused() -> None:
    one, two = (CertificateAuthority.generate("cluster.local", _now) for _ in range(2))
    with pytest.raises(ValueError, match="expected one root certificate, got 2"):
        trusted_root((one.to_pem()[0] + two.to_pem()[0]).decode())
    issued = one.sign(
        make_csr(new_key(), SpiffeId("cluster.local", "default", "web")),
        SpiffeId("cluster.local", "default", "web"),
        timedelta(hours=1),
    )
    leaf = issued.chain_pem.decode().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    with pytest.raises(ValueError, match="is not a CA certificate"):
        trusted_root(leaf)
