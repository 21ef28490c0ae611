"""Steady client load for lifecycle tests: every outcome kept, so a test can say which requests failed."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request


class HttpLoad(threading.Thread):
    """About `rate` GET requests a second, each on a new connection (so a listener that is not
    there shows up as connection refused); every outcome is kept, with the time it was seen."""

    def __init__(self, url: str, rate: float = 50) -> None:
        super().__init__(daemon=True)
        self.url, self.interval = url, 1 / rate
        self.outcomes: list[str] = []
        self.times: list[float] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        next_at = time.monotonic()
        while not self.stopping.is_set():
            try:
                with opener.open(self.url, timeout=5) as response:
                    outcome = str(response.status)
            except urllib.error.HTTPError as e:
                outcome = f"{e.code} {e.read()[:300]!r}"  # the proxy's reason, e.g. a connection refused behind it
            except OSError as e:
                outcome = f"error {e}"
            self.outcomes.append(outcome)
            self.times.append(time.monotonic())
            next_at += self.interval
            self.stopping.wait(max(0.0, next_at - time.monotonic()))  # pacing, not synchronization

    def failures(self) -> list[str]:
        return [o for o in self.outcomes if o != "200"]

    def stop(self) -> None:
        self.stopping.set()
        self.join(15)


class ConnectProbe(threading.Thread):
    """TCP connections to one listener, one every `interval` seconds, each closed at once: what a
    caller's connect() meets there ("ok", "refused", or another error), with the time seen."""

    def __init__(self, address: tuple[str, int], interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.address, self.interval = address, interval
        self.outcomes: list[str] = []
        self.times: list[float] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                socket.create_connection(self.address, timeout=2).close()
                outcome = "ok"
            except ConnectionRefusedError:
                outcome = "refused"
            except OSError as e:
                outcome = f"error {e}"
            self.outcomes.append(outcome)
            self.times.append(time.monotonic())
            self.stopping.wait(self.interval)  # pacing, not synchronization

    def refused_between(self, start: float, end: float) -> int:
        return sum(1 for o, t in zip(self.outcomes, self.times, strict=True) if start <= t <= end and o == "refused")

    def stop(self) -> None:
        self.stopping.set()
        self.join(15)
