"""What callers lose when a sidecar's parts die or are replaced under load.

    .venv/bin/python bench/lifecycle.py [--quick] [--rate 50] [--restart-after 1.0] [--json PATH]

A real control plane, one `hot` backend under `lattice run` and a client whose sidecar forwards a
local port to it (`--upstream`), retries off (a VirtualService with `retries: {attempts: 0}`), so
nothing hides a failure. A load generator opens a new connection per request through both
sidecars at `--rate` requests/s. One event per scenario, each on a workload that runs steadily:

- `envoy-killed (server|client)`: SIGKILL to that sidecar's Envoy; the agent starts a new one and
  hands it the listening sockets it kept (agent/hot_parent.py): requests in flight fail, new
  connections wait in the backlog instead of being refused.
- `agent-killed (server|client)`: SIGKILL to `lattice run` itself — Envoy and the app die with it
  (PR_SET_PDEATHSIG) — and, `--restart-after` seconds later (systemd's RestartSec=1 in
  docs/systemd/), a new `lattice run` on the same address, as `Restart=always` would start it.
- `envoy hot restart (server)`: SIGUSR1 (agent/envoy.py); `upgrade in place (server)`: SIGHUP
  (agent/handover.py). Both should lose nothing.

Per scenario: requests sent from the event until traffic flows again plus 2 s, how many failed
(and how: connection refused / reset / 5xx, and a 5xx whose reason is a connection the callee's
sidecar refused), the failure window (first to last failure) and the
time from the event to the first success after the last failure. A table, and JSON to
bench/results/lifecycle.json. Figures on a loaded machine are not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from harness import BACKEND, ControlPlane, Workload, children, wait_for  # noqa: E402
from lattice.agent.address import LEASE_DIR, _try_lock  # noqa: E402
from load import HttpLoad  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

RESULTS = Path(__file__).parent / "results"
NO_RETRIES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hot}
spec:
  hosts: [hot]
  http:
  - route: [{destination: {host: hot}}]
    retries: {attempts: 0}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _envoys(workload: Workload) -> list[int]:
    return [p for p, command in children(workload.process.pid) if "envoy" in command.split(" ", 1)[0]]


def _envoy(workload: Workload) -> int:
    (pid,) = _envoys(workload)
    return pid


def _kind(outcome: str) -> str:
    if outcome.startswith("error"):
        for word in ("refused", "reset", "timed out", "closed", "Remote end"):
            if word in outcome:
                return f"connection {word.lower()}"
        return "connection error"
    code = outcome.split(" ", 1)[0]
    if "connect error: 111" in outcome or "refused" in outcome.lower():  # the caller's sidecar says why
        return f"{code} (refused behind)"
    if "remote connection failure" in outcome:  # it could not connect to the callee's sidecar
        return f"{code} (connect failed behind)"
    if "connection termination" in outcome:  # the callee's sidecar went away mid-request
        return f"{code} (in flight)"
    return code


class Bench:
    def __init__(self, rate: float, restart_after: float) -> None:
        self.rate, self.restart_after = rate, restart_after
        self.plane = ControlPlane(Path(tempfile.mkdtemp(prefix="lattice-bench-lifecycle-")) / "home").start()
        self.plane.apply(NO_RETRIES)
        self.port = _free_port()
        self.server = Workload(self.plane, "hot", command=BACKEND).start()
        self.client = Workload(self.plane, "hot-client", command=BACKEND, extra=("--upstream", f"hot:9080={self.port}"))
        self.client.start()
        wait_for(self.plane.all_synced, 30, what="both proxies synced")
        self.held: int | None = None  # a lease the bench holds for a killed workload's address

    @property
    def url(self) -> str:
        return f"http://{self.client.address}:{self.port}/"

    def release(self) -> None:
        if self.held is not None:
            os.close(self.held)
            self.held = None

    def close(self) -> None:
        self.release()
        for w in (self.client, self.server):
            w.stop()
        self.plane.stop()

    def scenario(self, name: str, event) -> dict:
        load = HttpLoad(self.url, self.rate)
        load.start()
        try:
            wait_for(lambda: len(load.outcomes) > self.rate, 30, what="steady traffic before the event")
            wait_for(lambda: load.failures() == [] or load.outcomes[-1] == "200", 30, what="traffic flowing")
            start, at = len(load.outcomes), time.monotonic()
            event()
            recovered = wait_for(lambda: self._recovered(load, start), 120, interval=0.1, what=f"{name}: traffic again")
            settle = len(load.outcomes)
            wait_for(lambda: len(load.outcomes) > settle + 2 * self.rate, 30, what="two more seconds of traffic")
        finally:
            load.stop()
        outcomes, times = load.outcomes[start:], load.times[start:]
        failed = [(o, t) for o, t in zip(outcomes, times, strict=True) if o != "200"]
        return {
            "scenario": name,
            "requests": len(outcomes),
            "failed": len(failed),
            "how": dict(Counter(_kind(o) for o, _ in failed)),
            "examples": {_kind(o): o[:300] for o, _ in reversed(failed)},  # the first of each kind
            "failure_window_s": round(failed[-1][1] - failed[0][1], 3) if failed else 0.0,
            "recovered_after_s": round(recovered - at, 3) if failed else 0.0,
        }

    def _recovered(self, load: HttpLoad, start: int) -> float | None:
        """The time of the first success after the last failure, once 20 successes in a row show it."""
        outcomes = load.outcomes[start:]
        if len(outcomes) < 20 or set(outcomes[-20:]) != {"200"}:
            return None
        last_failure = max((i for i, o in enumerate(outcomes) if o != "200"), default=-1)
        return load.times[start + last_failure + 1]

    def kill_envoy(self, workload: Workload):
        return lambda: os.kill(_envoy(workload), signal.SIGKILL)

    def kill_agent(self, side: str):
        def event() -> None:
            old = getattr(self, side)
            old.process.send_signal(signal.SIGKILL)
            old.process.wait()
            # The address it had, so the caller's URL stays valid; its lease is held meanwhile so
            # that no other workload on this machine takes the address it just released.
            self.held = _try_lock(LEASE_DIR / old.address)
            time.sleep(self.restart_after)  # the supervisor's restart delay, as systemd's RestartSec
            extra = (*old.extra, "--address", old.address)
            new = Workload(self.plane, old.service, command=old.command, extra=extra).start(wait=False)
            setattr(self, side, new)

        return event

    def signal_agent(self, workload: Workload, sig: int):
        """SIGUSR1 or SIGHUP; the event lasts until the new Envoy serves and the old one has exited,
        so the requests counted cover the whole handover."""

        def event() -> None:
            done = workload.log.read_text().count("envoy hot restarted")
            workload.process.send_signal(sig)
            wait_for(lambda: workload.log.read_text().count("envoy hot restarted") > done, 60, what="the new Envoy")
            wait_for(lambda: len(_envoys(workload)) == 1, 30, what="the old Envoy to exit")

        return event


def measure(quick: bool, rate: float, restart_after: float, only: str = "") -> dict:
    bench = Bench(rate, restart_after)
    results = []
    try:
        scenarios = [
            ("envoy hot restart (server)", lambda: bench.signal_agent(bench.server, signal.SIGUSR1)),
            ("upgrade in place (server)", lambda: bench.signal_agent(bench.server, signal.SIGHUP)),
            ("envoy-killed (server)", lambda: bench.kill_envoy(bench.server)),
            ("envoy-killed (client)", lambda: bench.kill_envoy(bench.client)),
            ("agent-killed (server)", lambda: bench.kill_agent("server")),
            ("agent-killed (client)", lambda: bench.kill_agent("client")),
        ]
        for name, make in scenarios:
            if only and only not in name:
                continue
            results.append(bench.scenario(name, make()))
            for w in (bench.server, bench.client):
                if not w.info:  # restarted by the scenario
                    w.wait_ready()
            bench.release()
            time.sleep(0 if quick else 1)  # the handed-over Envoy exits before the next event (pacing)
    finally:
        bench.close()
    return {"rate_rps": rate, "restart_after_s": restart_after, "retries": 0, "scenarios": results}


def table(result: dict) -> Table:
    t = Table(title=f"Caller loss at {result['rate_rps']:.0f} req/s, a new connection each, retries off")
    for column in ("event", "requests", "failed", "how", "failure window", "traffic again after"):
        t.add_column(column, justify="left" if column in ("event", "how") else "right")
    for s in result["scenarios"]:
        how = ", ".join(f"{k} {v}" for k, v in sorted(s["how"].items())) or "-"
        t.add_row(
            s["scenario"],
            str(s["requests"]),
            str(s["failed"]),
            how,
            f"{s['failure_window_s']:.2f} s",
            f"{s['recovered_after_s']:.2f} s",
        )
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="less pacing between scenarios")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second (default 50)")
    parser.add_argument("--restart-after", type=float, default=1.0, help="seconds before a killed agent is restarted")
    parser.add_argument("--only", default="", help="only the scenarios whose name contains this")
    parser.add_argument("--json", type=Path, default=RESULTS / "lifecycle.json")
    args = parser.parse_args()
    result = measure(args.quick, args.rate, args.restart_after, args.only)
    Console().print(table(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
