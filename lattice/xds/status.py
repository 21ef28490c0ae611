"""What each proxy was sent and what it accepted: the data behind `lattice status`."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class TypeStatus:
    sent_version: str = ""
    sent_at: float = 0.0
    acked_version: str = ""
    acked_at: float = 0.0
    nack: str = ""  # Envoy's error text for the last NACK, cleared by the next ACK
    nacked_version: str = ""
    # Responses of this type and what they carried, in all: a delta response carries only the
    # resources that changed, a state-of-the-world one all of the type's.
    responses: int = 0
    resources_sent: int = 0
    bytes_sent: int = 0

    @property
    def state(self) -> str:
        if self.nack:
            return "NACKED"
        if not self.sent_version:
            return "NOT SENT"
        return "SYNCED" if self.acked_version == self.sent_version else "STALE"


@dataclass
class ProxyStatus:
    node_id: str
    protocol: str  # "sotw" | "delta"
    connected_at: float
    connected: bool = True
    types: dict[str, TypeStatus] = field(default_factory=dict)
    pushes: int = 0
    sent_label: str = ""  # the mesh snapshot the newest response came from
    converged_label: str = ""  # the newest snapshot whose every response this proxy ACKed
    seen_label: str = ""  # the newest snapshot its stream answered from, whether or not it changed anything


class XdsEvents(Protocol):
    """What the board reports as it happens (the control plane's metrics). Called on the event
    loop for every response and answer, so each must be cheap and never raise."""

    def sent(self, type_url: str, size: int) -> None: ...

    def rejected(self, type_url: str) -> None: ...

    def converged(self, label: str, connected_at: float, now: float) -> None: ...


class StatusBoard:
    """Updated by ADS streams; read by the REST API. Single event loop, so no locks."""

    def __init__(self, clock=time.time, events: XdsEvents | None = None) -> None:
        self._clock = clock
        self._events = events
        self._proxies: dict[str, ProxyStatus] = {}
        self.convergence_seconds: deque[float] = deque(maxlen=1000)  # sent -> ACK, most recent last

    def connected(self, node_id: str, protocol: str) -> None:
        self._proxies[node_id] = ProxyStatus(node_id, protocol, self._clock())

    def disconnected(self, node_id: str) -> None:
        status = self._proxies.get(node_id)
        if status is not None:
            status.connected = False

    def sent(
        self, node_id: str, type_url: str, version: str, label: str = "", size: int = 0, resources: int = 0
    ) -> None:
        """A response of `resources` resources, `size` bytes of them, built from mesh snapshot `label`."""
        status = self._type(node_id, type_url)
        status.sent_version, status.sent_at = version, self._clock()
        status.responses += 1
        status.resources_sent += resources
        status.bytes_sent += size
        proxy = self._proxies[node_id]
        proxy.pushes += 1
        proxy.sent_label = label or proxy.sent_label
        if self._events is not None:
            self._events.sent(type_url, size)

    def seen(self, node_id: str, label: str) -> None:
        """The proxy's stream has sent whatever snapshot `label` changed for it (maybe nothing)."""
        proxy = self._proxies.get(node_id)
        if proxy is not None:
            proxy.seen_label = label

    def acked(self, node_id: str, type_url: str, version: str) -> None:
        status = self._type(node_id, type_url)
        if status.nack and version == status.acked_version != status.sent_version:
            # A request restating the version it held before the rejection (a subscription change
            # after a NACK, or Envoy asking for what a warming cluster needs) accepts nothing new:
            # the NACK of the newer version stands until a version is accepted.
            return
        if version == status.sent_version and status.acked_version != version and status.sent_at:
            self.convergence_seconds.append(self._clock() - status.sent_at)
        status.acked_version, status.acked_at = version, self._clock()
        status.nack = status.nacked_version = ""
        if self._events is not None:
            self._check_converged(self._proxies[node_id])

    def nacked(self, node_id: str, type_url: str, version: str, message: str) -> None:
        status = self._type(node_id, type_url)
        status.nack, status.nacked_version = message or "rejected without a message", version
        if self._events is not None:
            self._events.rejected(type_url)

    def forget(self, node_id: str) -> None:
        self._proxies.pop(node_id, None)

    def get(self, node_id: str) -> ProxyStatus | None:
        return self._proxies.get(node_id)

    def all(self) -> list[ProxyStatus]:
        return [self._proxies[k] for k in sorted(self._proxies)]

    def stats(self) -> dict:
        """What a metrics scrape reads of the board: per xDS type URL, the connected proxies whose
        last answer to it is a rejection (NACK)."""
        rejecting: dict[str, int] = {}
        for proxy in self._proxies.values():
            if proxy.connected:
                for type_url, status in proxy.types.items():
                    rejecting[type_url] = rejecting.get(type_url, 0) + bool(status.nack)
        return {"rejecting": rejecting}

    def _check_converged(self, proxy: ProxyStatus) -> None:
        """Once per snapshot: when the proxy holds everything it was sent from it."""
        if proxy.sent_label == proxy.converged_label:
            return
        if any(t.nack or t.acked_version != t.sent_version for t in proxy.types.values()):
            return
        proxy.converged_label = proxy.sent_label
        if self._events is not None:
            self._events.converged(proxy.sent_label, proxy.connected_at, self._clock())

    def _type(self, node_id: str, type_url: str) -> TypeStatus:
        proxy = self._proxies.get(node_id)  # (not setdefault: its default would be built on every call)
        if proxy is None:
            proxy = self._proxies[node_id] = ProxyStatus(node_id, "?", self._clock())
        status = proxy.types.get(type_url)
        if status is None:
            status = proxy.types[type_url] = TypeStatus()
        return status
