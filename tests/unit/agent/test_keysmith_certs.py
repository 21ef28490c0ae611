"""The agent's key work out of its process: the keysmith child makes a key and a CSR the CA signs,
and the agent reads back what it was issued (agent/certs.py) exactly as the cryptography library
reads it, without loading that library in the agent's own process."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives import serialization

from lattice.agent import certs
from lattice.agent.keysmith import Keysmith, KeysmithError
from lattice.identity import CertificateAuthority, SpiffeId, cert_info, fingerprint, new_key
from lattice.identity.tokens import pin_for


def _clock() -> datetime:
    return datetime(2049, 12, 31, 23, 0, tzinfo=timezone.utc)  # leaves then span the UTCTime/Generalized switch


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate("cluster.local", _clock)


async def test_the_keysmith_makes_a_key_and_a_csr_the_ca_signs_and_the_agent_reads_back(ca):
    identity = SpiffeId("cluster.local", "default", "reviews")
    smith = Keysmith()
    await smith.start()
    key, csr = await smith.forge(str(identity))
    assert key.startswith(b"-----BEGIN PRIVATE KEY-----") and serialization.load_pem_private_key(key, None)
    issued = ca.sign(csr, identity, timedelta(hours=24))
    theirs, ours = cert_info(issued.chain_pem), certs.leaf(issued.chain_pem)
    assert ours == certs.Leaf(theirs.spiffe_id, theirs.serial, theirs.not_before, theirs.not_after, theirs.fingerprint)
    assert ours.spiffe_id == str(identity) and ours.not_after.year == 2050  # GeneralizedTime from 2050 on


async def test_a_keysmith_asked_for_something_that_is_no_spiffe_id_says_so():
    with pytest.raises(KeysmithError, match="not a SPIFFE ID"):
        await Keysmith().forge("https://example.com/")


def test_the_join_tokens_pin_is_found_in_a_bundle_read_without_cryptography(ca):
    bundle = ca.to_pem()[0]
    [der] = certs.pem_certificates(bundle)
    assert pin_for(certs.fingerprint(der)) == pin_for(fingerprint(ca.root))
    server = ca.issue_server(new_key(), ["localhost"], timedelta(hours=1))
    assert certs.leaf(server.chain_pem).spiffe_id == ""  # a DNS SAN only
    assert certs.leaf(bundle).spiffe_id == "spiffe://cluster.local"  # the root's trust-domain ID


@pytest.mark.parametrize(
    "pem, reason",
    [
        (b"garbage", "no PEM certificate"),
        (b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n", "not base64"),
        (b"-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n", "not an X.509 certificate"),
        (b"-----BEGIN CERTIFICATE-----\nMIIBAAE=\n-----END CERTIFICATE-----\n", "not an X.509 certificate"),
    ],
)
def test_a_broken_certificate_is_a_value_error_saying_what(pem, reason):
    with pytest.raises(ValueError, match=reason):
        certs.leaf(pem)


def test_the_agent_process_never_imports_cryptography():
    probe = (
        "import sys, lattice.agent.launch, lattice.agent.sidecar; print(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out.strip().replace("'", '"'))
    assert "cryptography" not in loaded, "the agent's process loads cryptography (agent/keysmith.py does the key work)"
