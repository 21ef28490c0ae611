"""Certificates change under live traffic and nobody notices: renewal at half-life, root rotation,
and a control plane that goes away (traffic flows until the certificates expire, then fails closed).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from datetime import datetime, timezone

import pytest

from harness import ControlPlane, Workload, child_pid, start_all, wait_for

pytestmark = pytest.mark.slow

STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"""
URL = "http://ratings:9080/ratings/0"


class Traffic:
    """Steady requests from `client` to ratings in a thread; every status code is kept."""

    def __init__(self, client: Workload, interval: float = 0.05) -> None:
        self.client, self.interval = client, interval
        self.codes: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                code = self.client.call(URL, timeout=5)[0]
            except OSError:
                code = 0
            self.codes.append(code)
            time.sleep(self.interval)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def wait_for_more(self, count: int, timeout: float = 30) -> None:
        """Until `count` more requests have been answered (or failed) from now on."""
        start = len(self.codes)
        wait_for(lambda: len(self.codes) >= start + count, timeout, what=f"{count} more requests")

    @property
    def failed(self) -> list[int]:
        return [c for c in self.codes if c != 200]


def _answer(client: Workload):
    """The client's answer for URL, or None while its sidecar does not take connections yet."""
    try:
        return client.call(URL, timeout=5)
    except OSError:
        return None


def served_certificate(address: str, port: int = 9080) -> dict:
    """Serial and issuer of the certificate a sidecar presents, as `openssl s_client` sees it
    (the handshake itself fails without a client certificate; the server's chain shows first)."""
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"{address}:{port}", "-showcerts"],
        input="",
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    pem = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
    assert pem, f"no certificate presented by {address}:{port}:\n{out}"
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-serial", "-issuer", "-ext", "subjectAltName"],
        input=pem.group(0),
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    return {
        "serial": re.search(r"serial=(\w+)", text).group(1).lower(),
        "issuer": re.search(r"issuer=(.*)", text).group(1).strip(),
        "san": text,
    }


def serials(plane: ControlPlane) -> dict[str, str]:
    return {p["id"]: (p.get("certificate") or {}).get("serial", "") for p in plane.status()["proxies"]}


def test_short_lived_certificates_rotate_under_traffic_without_a_failed_request(tmp_path):
    plane = ControlPlane(tmp_path / "home", "--cert-ttl", "30s").start()
    started = []
    try:
        plane.apply(STRICT)
        client, server = started = start_all(plane, [("productpage", "v1"), ("ratings", "v1")])
        seen: dict[str, set[str]] = {w.id: set() for w in started}
        presented: set[str] = set()
        with Traffic(client) as traffic:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                for proxy_id, serial in serials(plane).items():
                    seen[proxy_id].add(serial)
                presented.add(served_certificate(server.address)["serial"].lstrip("0"))
                time.sleep(2)
        assert len(traffic.codes) > 500
        assert traffic.failed == [], (
            f"{len(traffic.failed)} of {len(traffic.codes)} requests failed: {sorted(set(traffic.failed))}"
        )
        for proxy_id, held in seen.items():
            assert len(held - {""}) >= 3, (
                f"{proxy_id} held {held}: expected the first certificate and at least two renewals"
            )
        # Envoy itself presents the renewed certificates (SDS), not only the agent holding them.
        assert len(presented) >= 3, presented
        assert child_pid(server, "envoy") and child_pid(client, "envoy")  # same Envoys, never restarted
    finally:
        for w in reversed(started):
            w.stop()
        plane.stop()


def test_root_rotation_under_traffic_fails_no_request(tmp_path):
    plane = ControlPlane(tmp_path / "home").start()
    started = []
    try:
        plane.apply(STRICT)
        client, server, other = started = start_all(
            plane, [("productpage", "v1"), ("ratings", "v1"), ("ratings", "v2")]
        )
        before = json.loads(plane.cli("ca", "show", "-o", "json").stdout)
        old_root = before["roots"][0]["fingerprint"]
        old_issuer = served_certificate(server.address)["issuer"]
        envoys = {w.id: child_pid(w, "envoy") for w in started}
        with Traffic(client) as traffic:
            traffic.wait_for_more(20)  # flowing before the rotation starts
            result = plane.cli("ca", "rotate-root", "--timeout", "90s")
            assert "rotation done" in result.stdout, result.stdout + result.stderr
            traffic.wait_for_more(20)  # and after it is done
        assert traffic.failed == [], (
            f"{len(traffic.failed)} of {len(traffic.codes)} requests failed during root rotation"
        )
        after = json.loads(plane.cli("ca", "show", "-o", "json").stdout)
        assert [r["fingerprint"] for r in after["roots"]] != [old_root] and len(after["roots"]) == 1
        assert after["rotation"] == "none"
        # Every sidecar now presents a certificate from the new root, and trusts only it.
        for w in (server, other):
            assert served_certificate(w.address)["issuer"] != old_issuer
        assert all(child_pid(w, "envoy") == pid for w, pid in zip(started, envoys.values(), strict=False))
        # Traffic keeps working on new connections too: restart the client's Envoy.
        os.kill(envoys[client.id], signal.SIGKILL)
        wait_for(lambda: client.call(URL)[0] == 200, 15, what="the restarted Envoy to reach ratings over the new root")
    finally:
        for w in reversed(started):
            w.stop()
        plane.stop()


def test_control_plane_gone_traffic_flows_until_certificates_expire_then_fails_closed(tmp_path):
    plane = ControlPlane(tmp_path / "home", "--cert-ttl", "20s").start()
    started = []
    try:
        plane.apply(STRICT)
        client, server = started = start_all(plane, [("productpage", "v1"), ("ratings", "v1")])
        expires = min(p["certificate"]["expires"] for p in plane.status()["proxies"])
        ports = plane.ports
        plane.stop()
        with Traffic(client) as traffic:
            traffic.wait_for_more(50)  # a few seconds of requests with no control plane
        assert traffic.failed == [], "traffic must flow while the control plane is down"
        # Wait out the certificates, then force fresh handshakes: a new client Envoy.
        wait_for(
            lambda: datetime.now(timezone.utc) > datetime.fromisoformat(expires),
            40,
            interval=0.5,
            what="the certificates to expire",
        )
        envoy = child_pid(client, "envoy")
        os.kill(envoy, signal.SIGKILL)
        wait_for(lambda: child_pid(client, "envoy") != envoy, 10, what="the agent to restart Envoy")
        wait_for(lambda: _answer(client) is not None, 15, what="the new Envoy to take requests")
        answers = [client.call(URL, timeout=5) for _ in range(5)]
        # Refused for the right reason: the mTLS connection to the peer failed (Envoy's 503 says so),
        # not a route or endpoint missing, nor the app answering. With TLS 1.3 a server refusing the
        # client's expired certificate closes the connection during or right after the handshake
        # ("remote connection failure" or "connection termination", depending on which side's
        # bytes cross first); a client refusing the server's reports the TLS error.
        refused = [(status, body.decode(errors="replace")) for status, _, body in answers]
        reasons = ("connection termination", "remote connection failure", "TLS_error")
        assert all(
            status == 503 and "upstream connect error" in text and any(r in text for r in reasons)
            for status, text in refused
        ), refused
        # ... while the peer's sidecar still accepts connections: the handshake is what fails.
        socket.create_connection((server.address, 9080), timeout=5).close()
        # The control plane returns: agents re-attest with their join tokens, traffic recovers.
        plane.start(*ports)
        wait_for(lambda: client.call(URL)[0] == 200, 30, what="traffic to recover once certificates are renewed")
    finally:
        for w in reversed(started):
            w.stop()
        plane.stop()


def _ca_files(directory, name: str) -> tuple[str, str, str]:
    """A plug-in CA as an operator keeps it: (cert file, key file, its root's fingerprint)."""
    from lattice.identity import CertificateAuthority

    ca = CertificateAuthority.generate("cluster.local", lambda: datetime.now(timezone.utc))
    cert_pem, key_pem = ca.to_pem()
    (directory / f"{name}.pem").write_bytes(cert_pem)
    (directory / f"{name}-key.pem").write_bytes(key_pem)
    (directory / f"{name}-key.pem").chmod(0o600)
    return str(directory / f"{name}.pem"), str(directory / f"{name}-key.pem"), ca.root_fingerprint


def test_replicas_rotate_a_plug_in_root_mesh_wide_under_traffic_failing_no_request(etcd_cluster, tmp_path):
    """Two replicas on etcd, both signing under root A; the operator rotates to root B as the README
    says (trust B mesh-wide, restart each replica with B's files, remove A) while traffic flows."""
    old_cert, old_key, old_fp = _ca_files(tmp_path, "old")
    new_cert, new_key, new_fp = _ca_files(tmp_path, "new")
    store = ("--store", etcd_cluster.url(f"rotate-{os.getpid()}-{time.monotonic_ns()}"))
    homes = [tmp_path / f"replica{i}" for i in range(3)]
    for home in homes:
        home.mkdir()
        (home / "admin-token").write_text("rotation-test-admin-token-" + "x" * 20 + "\n")
        (home / "admin-token").chmod(0o600)
    planes = [ControlPlane(h, *store, "--ca-cert", old_cert, "--ca-key", old_key).start() for h in homes[:2]]
    started: list[Workload] = []
    try:
        planes[0].apply(STRICT)
        both = f"{planes[0].agent_api},{planes[1].agent_api}"
        reverse = f"{planes[1].agent_api},{planes[0].agent_api}"
        client = Workload(planes[0], "productpage", extra=("--server", both)).start(wait=False)
        server = Workload(planes[1], "ratings", extra=("--server", reverse)).start(wait=False)
        started = [client.wait_ready(), server.wait_ready()]
        wait_for(lambda: _answer(client) is not None and _answer(client)[0] == 200, 15, what="the first request")
        old_issuer = served_certificate(server.address)["issuer"]

        # A replica on root B is refused while the mesh does not trust B, and says what to do.
        with pytest.raises(AssertionError, match="lattice ca trust add"):
            ControlPlane(homes[2], *store, "--ca-cert", new_cert, "--ca-key", new_key).start()

        with Traffic(client) as traffic:
            added = json.loads(planes[1].cli("ca", "trust", "add", new_cert, "-o", "json").stdout)
            assert added["added"] == new_fp and set(added["roots"]) == {old_fp, new_fp}
            for w in started:  # every agent hands Envoy a bundle with both roots
                wait_for(lambda w=w: "(2 roots)" in w.log.read_text(), 15, what=f"{w.service} to trust both roots")
            refused = planes[0].cli("ca", "trust", "remove", old_fp[:16], check=False)
            assert refused.returncode != 0 and "still sign under it" in refused.stderr + refused.stdout

            for i in (1, 0):  # each replica restarted on root B, on its own ports
                ports = planes[i].ports
                planes[i].stop()
                planes[i] = ControlPlane(homes[i], *store, "--ca-cert", new_cert, "--ca-key", new_key).start(*ports)
            for w in started:  # every sidecar presents a certificate from B
                wait_for(
                    lambda w=w: served_certificate(w.address)["issuer"] != old_issuer,
                    30,
                    interval=0.5,
                    what=f"{w.service} to renew from the new root",
                )
            wait_for(
                lambda: planes[1].cli("ca", "trust", "remove", old_fp[:16], check=False).returncode == 0,
                30,
                interval=0.5,
                what="root A to be removable once nothing uses it",
            )
            for w in started:
                wait_for(lambda w=w: "(1 roots)" in w.log.read_text(), 15, what=f"{w.service} to drop root A")
            sent = len(traffic.codes)
            wait_for(lambda: len(traffic.codes) >= sent + 20, 15, what="traffic after A is gone")
        assert len(traffic.codes) > 100
        assert traffic.failed == [], f"{len(traffic.failed)} of {len(traffic.codes)} requests failed"
        shown = json.loads(planes[0].cli("ca", "show", "-o", "json").stdout)
        assert [r["fingerprint"] for r in shown["roots"]] == [new_fp]
    finally:
        for w in reversed(started):
            w.stop()
        for plane in planes:
            plane.stop()
