"""The control-plane replicas an agent may talk to, and moving between them.

`lattice run --server https://cp1:15012,https://cp2:15012` (or one DNS name with several
addresses) gives the starting list; each name is resolved to all its addresses, and resolved again
whenever the list has been tried through. The replica in use also tells the agent every replica's
current agent-API and xDS addresses (`GET /agent/v1/replicas`, asked every `FOLLOW_INTERVAL`), so a
replica that came back elsewhere, or one added later, is found without restarting the agent.

When the xDS stream breaks, the agent moves everything (registration, heartbeats, renewals,
traces, modules, xDS) to the next replica after a random delay of up to `RECONNECT_SPREAD`
seconds: a replica that goes away under a thousand proxies sends them to the others spread over
that window, not all in the same instant. Envoy notices nothing: the relay keeps its stream and
its last-good config, and resubscribes upstream with the versions Envoy holds.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import urllib.parse
from dataclasses import dataclass

log = logging.getLogger("lattice.agent.servers")
FOLLOW_INTERVAL = 10.0
RECONNECT_SPREAD = 2.0


@dataclass(frozen=True)
class ControlPlaneAddress:
    agent: str  # https://host:port, the agents' API
    xds: str = ""  # host:port, once learned from the control plane


class ControlPlanes:
    def __init__(self, server: str) -> None:
        self.given = [u.strip().rstrip("/") for u in server.split(",") if u.strip()]
        self.known: list[ControlPlaneAddress] = _resolve_all(self.given)
        self.index = 0

    def __len__(self) -> int:
        return len(self.known)

    @property
    def current(self) -> ControlPlaneAddress:
        return self.known[self.index]

    def advance(self) -> ControlPlaneAddress:
        """The next replica to try; once every one was tried, names are resolved again."""
        self.index += 1
        if self.index >= len(self.known):
            current = self.current_agent_url()
            merged = _merge(_resolve_all(self.given), self.known)
            self.known, self.index = merged, 0
            if len(merged) > 1 and merged[0].agent == current:
                self.index = 1
        return self.current

    def current_agent_url(self) -> str:
        return self.known[min(self.index, len(self.known) - 1)].agent

    def learn(self, replicas: list[dict]) -> None:
        """Every replica as the control plane lists it now; the one in use stays in use."""
        learned = [
            ControlPlaneAddress(str(r["agent"]).rstrip("/"), str(r.get("xds") or ""))
            for r in replicas
            if r.get("agent") and not _unspecified(str(r["agent"]))
        ]
        if not learned:
            return
        current = self.current
        merged = _merge(learned, [current, *self.known])
        self.known = merged
        self.index = next((i for i, a in enumerate(merged) if a.agent == current.agent), 0)
        if merged[self.index].xds == "" and current.xds:
            self.known[self.index] = current

    def set_xds(self, xds: str) -> None:
        self.known[self.index] = ControlPlaneAddress(self.current.agent, xds)

    @staticmethod
    def reconnect_delay() -> float:
        return random.uniform(0, RECONNECT_SPREAD)


def _merge(first: list[ControlPlaneAddress], then: list[ControlPlaneAddress]) -> list[ControlPlaneAddress]:
    """`first` in order, then those of `then` not in it (by agent URL); xDS addresses kept where known."""
    xds = {a.agent: a.xds for a in [*then, *first] if a.xds}
    seen: dict[str, ControlPlaneAddress] = {}
    for a in [*first, *then]:
        seen.setdefault(a.agent, ControlPlaneAddress(a.agent, xds.get(a.agent, "")))
    return list(seen.values())


def _resolve_all(urls: list[str]) -> list[ControlPlaneAddress]:
    """The URLs as given first (the agent starts on the first, as with one server), then each
    further address their names resolve to."""
    out = [ControlPlaneAddress(u) for u in urls]
    for url in urls:
        out.extend(ControlPlaneAddress(u) for u in _resolve(url))
    return _merge(out, [])


def _resolve(url: str) -> list[str]:
    """One URL per address of its host name (an IP address is itself); the name if it resolves to none.
    TLS to the control plane checks its fixed name, not the host's, so addresses are as good as names."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return [url]
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if len(addresses) <= 1:
        return [url]
    return [f"{parts.scheme}://{f'[{a}]' if ':' in a else a}:{port}" for a in addresses]


def _unspecified(url: str) -> bool:
    return (urllib.parse.urlsplit(url).hostname or "") in ("0.0.0.0", "::")


async def follow(planes: ControlPlanes, session, tls, server_hostname: str) -> None:
    """Ask the replica in use for every replica's addresses, now and every FOLLOW_INTERVAL."""
    while True:
        try:
            async with session.get(
                f"{planes.current.agent}/agent/v1/replicas", ssl=tls(), server_hostname=server_hostname
            ) as response:
                if response.status == 200:
                    planes.learn((await response.json()).get("replicas", []))
        except Exception as e:  # an old control plane, or one going away: keep what we know
            log.debug("could not learn the control-plane replicas: %s", e)
        await asyncio.sleep(FOLLOW_INTERVAL)
