"""JwksCache against real HTTP servers on OS-chosen ports: keys fetched, refreshed and kept; every
failure (status, size, content, timeout, refused, unverified TLS) recorded with its reason."""

from __future__ import annotations

import asyncio
import datetime
import json
import secrets
import ssl

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lattice.server.jwks import MAX_JWKS_BYTES, JwksCache
from lattice.store import Store, open_store

KEYS_A = json.dumps({"keys": [{"kty": "RSA", "kid": "a", "n": "sXch", "e": "AQAB"}]})
KEYS_B = json.dumps({"keys": [{"kty": "RSA", "kid": "b", "n": "sXch", "e": "AQAB"}]})


async def _until(condition, timeout: float = 10.0) -> None:
    """Wait for `condition()` on the loop the refresher runs on (a generous bound: a loaded
    machine slows the refreshes, it does not change what they do)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 (the state is the server's counters; nothing to signal)
            await asyncio.sleep(0.01)


class KeyServer:
    """Answers GET /<anything> with `self.answers[path]`: (status, body) or a delay in seconds."""

    def __init__(self) -> None:
        self.answers: dict[str, object] = {}
        self.hits = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        answer = self.answers.get(request.path, (404, "no such key set"))
        if isinstance(answer, float):
            await asyncio.sleep(answer)
            answer = (200, KEYS_A)
        status, body = answer
        return web.Response(status=status, text=body, content_type="application/json")


@pytest.fixture
async def keys():
    server = KeyServer()
    app = web.Application()
    app.router.add_get("/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    yield server
    await runner.cleanup()


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "lattice.db") as opened:
        yield opened


def apply_ra(store: Store, name: str, *uris: str, timeout: str = "2s") -> None:
    rules = [{"issuer": f"issuer-{i}", "jwksUri": uri, "timeout": timeout} for i, uri in enumerate(uris)]
    store.apply(
        [
            (
                "RequestAuthentication",
                "default",
                name,
                "security.istio.io/v1",
                {"name": name, "namespace": "default"},
                {"jwtRules": rules},
            )
        ]
    )


def cache(store: Store, changes: list | None = None, refresh: float = 3600) -> JwksCache:
    return JwksCache(store, on_change=lambda: changes.append(1) if changes is not None else None, refresh=refresh)


async def test_fetches_keys_and_reports_changes_only(store, keys):
    keys.answers["/jwks"] = (200, KEYS_A)
    apply_ra(store, "ra", f"{keys.base}/jwks")
    jwks = cache(store)
    assert await jwks.refresh() is True
    assert (jwks.keys, jwks.errors) == ({f"{keys.base}/jwks": KEYS_A}, {})
    assert await jwks.refresh() is False
    keys.answers["/jwks"] = (200, KEYS_B)
    assert await jwks.refresh() is True and jwks.keys[f"{keys.base}/jwks"] == KEYS_B


async def test_prepare_fetches_only_when_request_authentications_change(store, keys):
    keys.answers["/jwks"] = (200, KEYS_A)
    apply_ra(store, "ra", f"{keys.base}/jwks")
    jwks = cache(store)
    await jwks.prepare()
    await jwks.prepare()
    assert keys.hits == 1
    apply_ra(store, "ra", f"{keys.base}/other")  # the policy now names another URL: the old one is dropped
    await jwks.prepare()
    assert keys.hits == 2 and jwks.keys == {} and "HTTP 404" in jwks.errors[f"{keys.base}/other"]


@pytest.mark.parametrize(
    "answer, reason",
    [
        ((500, "oops"), "HTTP 500"),
        ((200, "<html>not keys</html>"), "is not JSON"),
        ((200, '{"keys": []}'), "non-empty \"keys\" list"),
        ((200, " " * (MAX_JWKS_BYTES + 1)), f"larger than {MAX_JWKS_BYTES} bytes"),
        (1.0, "no answer within 0.3s"),
    ],
)
async def test_a_bad_answer_is_an_error_with_its_reason_and_the_last_good_keys_stay(store, keys, answer, reason):
    uri = f"{keys.base}/jwks"
    keys.answers["/jwks"] = (200, KEYS_A)
    apply_ra(store, "ra", uri, timeout="10s")
    jwks = cache(store)
    await jwks.refresh()
    if isinstance(answer, float):
        # Only the answer that never comes in time meets a short timeout: on a loaded machine a good
        # or a 256 KiB answer can take longer than 0.3 s, and would then fail for the wrong reason.
        apply_ra(store, "ra", uri, timeout="0.3s")
    keys.answers["/jwks"] = answer
    assert await jwks.refresh() is True
    assert reason in jwks.errors[uri] and jwks.keys[uri] == KEYS_A


async def test_nothing_listening_is_an_error(store, unused_tcp_port):
    uri = f"http://127.0.0.1:{unused_tcp_port}/jwks"
    apply_ra(store, "ra", uri)
    jwks = cache(store)
    await jwks.refresh()
    assert jwks.keys == {} and "Cannot connect" in jwks.errors[uri]


async def test_https_is_verified_against_the_system_roots(store, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    app = web.Application()

    async def answer(_: web.Request) -> web.Response:
        return web.Response(text=KEYS_A)

    app.router.add_get("/jwks", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    try:
        uri = f"https://localhost:{site._server.sockets[0].getsockname()[1]}/jwks"
        apply_ra(store, "ra", uri)
        jwks = cache(store)
        await jwks.refresh()
        assert jwks.keys == {} and "certificate verify failed" in jwks.errors[uri]
    finally:
        await runner.cleanup()


async def test_run_refreshes_periodically_and_asks_for_a_push_on_change(store, keys):
    keys.answers["/jwks"] = (200, KEYS_A)
    apply_ra(store, "ra", f"{keys.base}/jwks")
    changes: list = []
    jwks = cache(store, changes, refresh=0.1)
    await jwks.prepare()
    task = asyncio.create_task(jwks.run(), name="jwks-refresh-under-test")
    try:
        await _until(lambda: keys.hits >= 3)  # refreshed twice more after `prepare`...
        assert changes == []  # ...and nothing changed, so no push
        keys.answers["/jwks"] = (200, KEYS_B)
        await _until(lambda: changes)
        assert changes and jwks.keys[f"{keys.base}/jwks"] == KEYS_B
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_restarted_control_plane_serves_the_keys_it_fetched_before(store, keys):
    keys.answers["/jwks"] = (200, KEYS_A)
    apply_ra(store, "ra", f"{keys.base}/jwks")
    await cache(store).prepare()
    assert keys.hits == 1
    again = cache(store)  # a new process on the same store
    await again.prepare()
    assert again.keys == {f"{keys.base}/jwks": KEYS_A} and keys.hits == 1
    assert 3500 < again._next_refresh_in() <= 3600  # and its refresh is due an interval after that fetch


@pytest.mark.slow
async def test_one_replica_fetches_and_another_serves_the_same_keys(etcd_cluster, keys, tmp_path):
    """Two replicas on a real etcd: the one holding the refresh duty fetches; the other takes the
    keys up from the store's watch (asking for a push) without calling the issuer itself."""
    url = etcd_cluster.url(f"jwks-{secrets.token_hex(4)}")
    one, two = open_store(url, tmp_path / "unused.db"), open_store(url, tmp_path / "unused.db")
    try:
        keys.answers["/jwks"] = (200, KEYS_A)
        uri = f"{keys.base}/jwks"
        apply_ra(one, "ra", uri)
        await _until(lambda: two.get("RequestAuthentication", "default", "ra") is not None)
        changes: list = []
        fetcher, follower = cache(one), cache(two, changes)
        following = asyncio.create_task(follower.follow(), name="jwks-follow-under-test")
        try:
            await fetcher.refresh()
            await _until(lambda: follower.keys == {uri: KEYS_A})
            assert changes and keys.hits == 1
            keys.answers["/jwks"] = (200, KEYS_B)  # rotated at the issuer
            await fetcher.refresh()
            await _until(lambda: follower.keys == {uri: KEYS_B})
            await follower.prepare()  # a push on the follower needs nothing fetched
            assert keys.hits == 2
        finally:
            following.cancel()
            with pytest.raises(asyncio.CancelledError):
                await following
    finally:
        one.close()
        two.close()
