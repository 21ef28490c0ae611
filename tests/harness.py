"""Real processes for integration tests: a control plane and workloads under real sidecars.

Everything listens on ports the OS picks (control plane) or on loopback addresses of the
workload's own (sidecars); every process is stopped by the fixture that started it, and dies with
the test process if that is killed (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import rawhttp
from lattice.agent.envoy import die_with_parent
from lattice.api.kinds import KINDS

BIN = Path(sys.executable).parent
LATTICE = str(BIN / "lattice")
# tests/apps/backend.py: answers with what it saw; fails, delays and counts on demand.
BACKEND = [sys.executable, str(Path(__file__).parent / "apps" / "backend.py")]
# Processes the tests start keep compiled modules: without them every `lattice run` compiles the
# whole package again (seconds of CPU each on a loaded two-core machine).
ENV_BASE = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | {
    "GRPC_ENABLE_FORK_SUPPORT": "false",
    "PYTHONUNBUFFERED": "1",
}


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as e:  # noqa: BLE001 - retried until the deadline, then reported
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict | None = None,
    proxy: str | None = None,
    timeout: float = 5.0,
    context=None,
) -> tuple[int, dict, bytes]:
    handlers = [
        urllib.request.ProxyHandler({"http": proxy} if proxy else {}),
        urllib.request.HTTPSHandler(context=context),
    ]
    opener = urllib.request.build_opener(*handlers)
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def proxy_url(log: Path, timeout: float = 10.0) -> str:
    """The outbound proxy URL, credential included, of the sidecar whose output is `log`: read
    from the `proxy.env` it names at start, as a user running an app apart would."""

    def named():
        found = re.findall(r"(/\S+/proxy\.env)", log.read_text(errors="replace"))
        return found and Path(found[-1])  # the latest start's, should the log hold several

    path = wait_for(named, timeout, what=f"the sidecar to name its proxy.env (log {log})")
    line = next(line for line in path.read_text().splitlines() if line.startswith("HTTP_PROXY="))
    return line.split("=", 1)[1]


def proxy_authorization(url: str) -> dict[str, str]:
    """The header a client that does not read proxy URLs must send itself (raw HTTP, gRPC)."""
    parts = urllib.parse.urlsplit(url)
    token = base64.b64encode(f"{parts.username}:{parts.password}".encode()).decode()
    return {"proxy-authorization": f"Basic {token}"}


def stop(process: subprocess.Popen, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int:
    """Ask `process` to stop with `sig`; kill it if it has not within `timeout`."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class ControlPlane:
    def __init__(self, home: Path, *extra: str) -> None:
        self.home = home
        self.extra = extra
        self.api = self.xds = self.agent_api = ""
        self.process: subprocess.Popen | None = None
        self.log = home / "server.log"

    def start(self, api_port: int = 0, xds_port: int = 0, agent_port: int = 0) -> ControlPlane:
        self.home.mkdir(parents=True, exist_ok=True)
        args = [
            LATTICE,
            "server",
            "--home",
            str(self.home),
            "--api-port",
            str(api_port),
            "--xds-port",
            str(xds_port),
            "--agent-port",
            str(agent_port),
            "--debounce",
            "50ms",
            *self.extra,
        ]
        self.process = subprocess.Popen(
            args, env=self.env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, preexec_fn=die_with_parent
        )
        info = wait_for(self._discovery, 20, what=f"control plane to start (log {self.log})")
        self.api, self.xds, self.agent_api = info["api"], info["xds"], info["agent"]
        return self

    def _discovery(self):
        if self.process.poll() is not None:
            raise AssertionError(f"lattice server exited with {self.process.returncode}:\n{self.log.read_text()}")
        path = self.home / "server.json"
        return json.loads(path.read_text()) if path.exists() else None

    @property
    def env(self) -> dict:
        return ENV_BASE | {"LATTICE_HOME": str(self.home)}

    @property
    def ports(self) -> tuple[int, int, int]:
        return int(self.api.rsplit(":", 1)[1]), int(self.xds.rsplit(":", 1)[1]), int(self.agent_api.rsplit(":", 1)[1])

    @property
    def admin(self) -> dict:
        """The admin credential header, as the CLI sends it."""
        return {"Authorization": f"Bearer {(self.home / 'admin-token').read_text().strip()}"}

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        status, _, raw = http(
            method, f"{self.api}{path}", data, self.admin | ({"Content-Type": "application/json"} if data else {})
        )
        return status, json.loads(raw or b"{}")

    def token(
        self,
        service_account: str,
        namespace: str = "default",
        ttl: float = 600,
        uses: int | None = None,
        services: list[str] | None = None,
    ) -> str:
        """A join token for spiffe://cluster.local/ns/<namespace>/sa/<service_account>, to serve
        `services` (default: the service named like the account)."""
        status, body = self.call(
            "POST",
            "/api/v1/tokens",
            {
                "service_account": service_account,
                "namespace": namespace,
                "ttl_seconds": ttl,
                "uses": uses,
                "services": services or [],
            },
        )
        assert status == 200, body
        return body["token"]

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    def cli(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([LATTICE, *args], env=self.env, input=input, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(
                f"lattice {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def apply(self, yaml_text: str) -> subprocess.CompletedProcess:
        return self.cli("apply", "-f", "-", input=yaml_text)

    def get(self, path: str) -> dict:
        status, body = self.call("GET", path)
        assert status == 200, (status, body)
        return body

    def status(self) -> dict:
        return self.get("/api/v1/status")

    def proxy(self, proxy_id: str) -> dict | None:
        return next((p for p in self.status()["proxies"] if p["id"] == proxy_id), None)

    def all_synced(self, ids: list[str] | None = None) -> Synced:
        """Every (chosen) proxy connected and holding what it was sent, with no push pending.
        False-like with what is not, so a wait that times out says which proxy and type."""
        status = self.status()
        proxies = [p for p in status["proxies"] if ids is None or p["id"] in ids]
        behind = [] if proxies else ["no proxy"]
        if status["server"]["push_pending"]:
            behind.append("a push pending")
        for p in proxies:
            if not p["connected"]:
                behind.append(f"{p['id']} disconnected")
            for type_url, t in p["types"].items():
                if t["state"] != "SYNCED":
                    name = type_url.rsplit(".", 1)[-1]
                    behind.append(f"{p['id']} {name} {t['state']} {json.dumps({k: v for k, v in t.items() if v})}")
        return Synced(behind)


class Synced:
    """`ControlPlane.all_synced`'s answer: true when nothing is behind, else what is."""

    def __init__(self, behind: list[str]) -> None:
        self.behind = behind

    def __bool__(self) -> bool:
        return not self.behind

    def __repr__(self) -> str:
        return "synced" if not self.behind else "not synced: " + "; ".join(self.behind)


class Workload:
    """`lattice run --service S --version V -- python -m lattice.demo.apps.<app>` as a user runs it."""

    def __init__(
        self,
        plane: ControlPlane,
        service: str,
        version: str = "v1",
        app: str | None = None,
        command: list[str] | None = None,
        extra: tuple[str, ...] = (),
        token: str | None = None,
        env: dict | None = None,
    ) -> None:
        self.plane = plane
        self.app_env = env or {}
        self.token = token
        self.service, self.version = service, version
        self.command = command or [sys.executable, "-m", f"lattice.demo.apps.{app or service}"]
        self.extra = extra
        self.log = plane.home / f"{service}-{version}-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen | None = None
        self.info: dict = {}

    def start(self, wait: bool = True) -> Workload:
        """Start `lattice run`; with `wait`, return once healthy and synced (see `wait_ready`)."""
        self.__dict__.pop("outbound", None)  # a new sidecar, a new credential
        args = [
            LATTICE,
            "run",
            "--service",
            self.service,
            "--version",
            self.version,
            "--log-level",
            "info",
            *self.extra,
            "--",
            *self.command,
        ]
        token = self.token or self.plane.token(self._service_account(), self._namespace(), services=[self.service])
        env = self.plane.env | {"SERVICE_VERSION": self.version, "LATTICE_TOKEN": token} | self.app_env
        self.process = subprocess.Popen(
            args, env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, preexec_fn=die_with_parent
        )
        return self.wait_ready() if wait else self

    def _service_account(self) -> str:
        extra = list(self.extra)
        return extra[extra.index("--service-account") + 1] if "--service-account" in extra else self.service

    def _namespace(self) -> str:
        extra = list(self.extra)
        for flag in ("-n", "--namespace"):
            if flag in extra:
                return extra[extra.index(flag) + 1]
        return "default"

    def wait_ready(self, timeout: float = 30) -> Workload:
        self.info = wait_for(
            self._ready, timeout, what=f"{self.service}-{self.version} to be healthy and synced (log {self.log})"
        )
        if "--capture" not in self.extra:  # raw clients send the credential the app's clients send
            outbound = self.info.get("local_address") or self.address
            rawhttp.credential(outbound, 15001, self.proxy_headers["proxy-authorization"])
        return self

    def _ready(self):
        if self.process.poll() is not None:
            raise AssertionError(f"lattice run exited with {self.process.returncode}:\n{self.log.read_text()}")
        mine = [
            p
            for p in self.plane.status()["proxies"]
            if p["name"] == f"{self.service}-{self.version}"
            and p["id"].endswith(f".{self._namespace()}")  # ids are <name>-<suffix>.<namespace>
            and p["id"] not in _claimed
        ]
        for p in mine:
            if p["healthy"] and p["connected"] and all(t["state"] == "SYNCED" for t in p["types"].values()):
                _claimed.add(p["id"])
                return p
        return None

    @property
    def id(self) -> str:
        return self.info["id"]

    @property
    def address(self) -> str:
        return self.info["address"]

    @property
    def outbound(self) -> str:
        """Its HTTP_PROXY, as the app has it: `http://lattice:<secret>@<address>:15001`."""
        if "outbound" not in self.__dict__:
            self.__dict__["outbound"] = proxy_url(self.log)
        return self.__dict__["outbound"]

    @property
    def proxy_headers(self) -> dict[str, str]:
        """`Proxy-Authorization` for the outbound listener, for raw HTTP and gRPC clients."""
        return proxy_authorization(self.outbound)

    def call(self, url: str, headers: dict | None = None, timeout: float = 5.0) -> tuple[int, dict, bytes]:
        """A request as this workload's app makes it: through its sidecar's outbound proxy."""
        return http("GET", url, headers=headers, proxy=self.outbound, timeout=timeout)

    def stop(self) -> int:
        return stop(self.process) if self.process else 0


_claimed: set[str] = set()


def drained(server: Workload, timeout: float = 5) -> None:
    """Wait until the server's sidecar has closed connections accepted under its previous inbound
    listener (Envoy drains them for 1 s): a client's pooled connection would still meet the old
    filters (authorization, limits, access logs)."""
    stats = "^listener_manager\\.total_(listeners_warming|listeners_draining|filter_chains_draining)$"
    url = f"http://{server.address}:{server.info['agent_port']}/stats?filter={urllib.parse.quote(stats)}"

    def idle():
        lines = [line for line in http("GET", url)[2].decode().splitlines() if ":" in line]
        return len(lines) == 3 and all(int(line.rsplit(":", 1)[1]) == 0 for line in lines)

    wait_for(idle, timeout, what=f"{server.service}'s sidecar to finish draining its old inbound listener")


def served_by(workload: Workload, url: str, n: int, headers: dict | None = None) -> dict[str, int]:
    """How many of n requests each backend answered (by its `x-served-by` header)."""
    counts: dict[str, int] = {}
    for _ in range(n):
        status, h, _ = workload.call(url, headers)
        key = h.get("x-served-by", f"status {status}") if status == 200 else f"status {status}"
        counts[key] = counts.get(key, 0) + 1
    return counts


@contextlib.contextmanager
def running(plane: ControlPlane, workloads: list[Workload], timeout: float = 15, ready_timeout: float = 30):
    """Start `workloads` at once (startup costs one sidecar, not n), wait until each is ready
    (`ready_timeout` each) and every proxy holds the others' endpoints (`timeout`); stop them all
    on exit, even when one failed to start."""
    for w in workloads:
        w.start(wait=False)
    try:
        ready = [w.wait_ready(ready_timeout) for w in workloads]
        wait_for(plane.all_synced, timeout, what="every proxy to hold the others' endpoints")
        yield ready
    finally:
        for w in workloads:  # all at once: each sidecar drains before it stops (agent/drain.py)
            if w.process is not None and w.process.poll() is None:
                w.process.send_signal(signal.SIGTERM)
        for w in reversed(workloads):
            w.stop()


def start_all(plane: ControlPlane, specs: list[tuple[str, str]]) -> list[Workload]:
    """Start several workloads at once and wait for all: startup costs one sidecar, not n."""
    started = [Workload(plane, service, version).start(wait=False) for service, version in specs]
    ready = [w.wait_ready() for w in started]
    # Each is ready, but the push telling the others that the last one is healthy may be in flight.
    wait_for(plane.all_synced, 10, what="every proxy to hold the endpoints of the new workloads")
    return ready


def reset_config(plane: ControlPlane, synced=None) -> None:
    """Delete every stored resource, of every kind, and wait until all proxies hold that
    (`synced`; by default every connected proxy, and a timeout names those behind)."""
    for kind in sorted(f"{k.plural}.{k.group}" for k in KINDS.values()):
        for item in plane.get(f"/api/v1/resources/{kind}")["items"]:
            plane.call("DELETE", f"/api/v1/resources/{kind}/{item['metadata']['namespace']}/{item['metadata']['name']}")
    if synced is None:

        def synced() -> bool:
            behind = _behind_after_reset(plane)
            if behind != []:
                raise AssertionError(f"behind: {behind}" if behind else "a push is pending")
            return True

    wait_for(synced, 10, what="proxies to sync after reset")


def _behind_after_reset(plane: ControlPlane) -> list[str] | None:
    """Connected proxies not yet holding what they were sent, as "id: type=state" (None: a push is
    pending). Only connected ones: on a control plane that test modules share, a workload an
    earlier module killed stays listed, disconnected, until its registration expires."""
    status = plane.status()
    if status["server"]["push_pending"]:
        return None
    return [
        f"{p['id']}: " + ",".join(f"{t}={v['state']}" for t, v in p["types"].items() if v["state"] != "SYNCED")
        for p in status["proxies"]
        if p["connected"] and any(v["state"] != "SYNCED" for v in p["types"].values())
    ]


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the direct children of `pid`, read from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            out.append((int(entry.name), cmdline))
    return out


def child_pid(workload: Workload, needle: str) -> int:
    found = [pid for pid, cmd in children(workload.process.pid) if needle in cmd]
    assert len(found) == 1, (
        f"expected one child matching {needle!r} under {workload.process.pid}: {children(workload.process.pid)}"
    )
    return found[0]


class Enrolled:
    """A workload identity obtained the way an agent does (join token, CSR, TLS), for tests that
    play the agent themselves: key, chain and bundle on disk, and calls to the agents' API."""

    def __init__(
        self,
        plane: ControlPlane,
        service_account: str,
        proxy_id: str,
        directory: Path,
        namespace: str = "default",
        services: list[str] | None = None,
    ) -> None:
        from lattice.identity import SpiffeId, key_pem, make_csr, new_key

        directory.mkdir(parents=True, exist_ok=True)
        self.plane, self.proxy_id, self.dir = plane, proxy_id, directory
        self.bundle_file = directory / "bundle.pem"
        self.bundle_file.write_text(
            json.loads(http("GET", f"{plane.agent_api}/agent/v1/bundle", context=_unverified())[2])["bundle"]
        )
        key = new_key()
        csr = make_csr(key, SpiffeId("cluster.local", namespace, service_account))
        token = plane.token(service_account, namespace, services=services)
        self.token_id = token.split(".")[1]
        status, body = self.agent_call(
            "POST",
            "/agent/v1/certificate",
            {"csr": csr.decode(), "proxy_id": proxy_id},
            {"Authorization": f"Bearer {token}"},
            client_cert=False,
        )
        assert status == 200, body
        self.cert_file, self.key_file = directory / "cert.pem", directory / "key.pem"
        self.cert_file.write_text(body["chain"])
        self.key_file.write_bytes(key_pem(key))

    def context(self, client_cert: bool = True):
        import ssl

        context = ssl.create_default_context(cafile=str(self.bundle_file))
        context.check_hostname = False  # the control plane's name is checked by agents, not here
        if client_cert:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def agent_call(
        self, method: str, path: str, body: dict | None = None, headers: dict | None = None, client_cert: bool = True
    ) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        status, _, raw = http(
            method,
            f"{self.plane.agent_api}{path}",
            data,
            {"Content-Type": "application/json", **(headers or {})},
            context=self.context(client_cert),
        )
        return status, json.loads(raw or b"{}")

    def register(self, record: dict) -> None:
        status, body = self.agent_call("PUT", f"/agent/v1/workloads/{self.proxy_id}", record)
        assert status == 200, body


def _unverified():
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
