"""The requests a sidecar remembers one by one, for `lattice why <request-id>`.

Counting (metrics, the live window) keeps no request; explaining one needs its own record: the
route that matched, the cluster and endpoint tried, attempts, response flags and Envoy's response
code details. `RequestRecords` keeps, in bounded rings (memory stays flat at any rate):
- every request that went wrong (status >= 400, or any response flag), always;
- every request, while someone taps this sidecar (so `why` also answers for the ones that went well).
Both rings rely only on what reaches the agent: when the access log stream carries only failed
requests except during a tap, the rings hold exactly the same things as today.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from lattice.agent.access_log import Request
from lattice.agent.live import tap_event

FAILURES_KEPT = 2000
TAPPED_KEPT = 2000


class RequestRecords:
    def __init__(self, tapping: Callable[[], bool], failures: int = FAILURES_KEPT, tapped: int = TAPPED_KEPT) -> None:
        self._tapping = tapping
        self.failures: deque[Request] = deque(maxlen=failures)
        self.tapped: deque[Request] = deque(maxlen=tapped)

    def observe(self, r: Request) -> None:
        if r.protocol == "tcp":
            if r.flags != "-" and r.closed:
                self.failures.append(r)
            return
        if r.unusual:
            self.failures.append(r)
        elif self._tapping():
            self.tapped.append(r)

    def find(self, request_id: str) -> list[dict]:
        """Every record this sidecar holds of the request, oldest first."""
        key = request_key(request_id)
        found = [r for r in (*self.failures, *self.tapped) if request_key(r.request_id) == key]
        return [record(r) for r in sorted(found, key=lambda r: r.start)]

    def recent_failures(self, limit: int = 50) -> list[dict]:
        return [record(r) for r in list(self.failures)[-limit:]]


def request_key(request_id: str) -> str:
    """An id as its requests' records are matched: Envoy writes its trace decision into a UUID's
    version digit (the 15th character: 4, 9, a or b), so the id an app sent and the one the
    sidecars logged may differ there, and only there."""
    if len(request_id) == 36 and request_id[8] == request_id[13] == "-":
        return (request_id[:14] + request_id[15:]).lower()
    return request_id


def record(r: Request) -> dict:
    """A request as `lattice why` reads it: the tap's view plus what decided its fate. Never
    headers, bodies or query strings."""
    return tap_event(r) | {
        "route": r.route,
        "cluster": r.cluster,
        "upstream_host": r.upstream_host,
        "attempts": r.attempts,
        "details": r.details,
        "transport_failure": r.transport_failure,
        "source_app": r.source.app,
        "source_version": r.source.version,
        "destination_app": r.destination.app,
        "destination_version": r.destination.version,
    }
