"""Envoy's own counts of Istio's metrics, read from its admin `/stats` (JSON, detailed histograms).

Envoy counts every request (translate/istio_stats.py); the agent reads the totals, once a second
for the live window and once per Prometheus scrape, and names each *series* (never each request)
the way Istio does. A `Reading` is one such read: counters and histograms (their non-empty
circllhist bins, each at most 10% wide) by stat name and tags.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

from lattice.agent.access_log import UNKNOWN, Peer, caller, endpoint_peer, service_of
from lattice.translate import agent_names as s

STATS_QUERY = {"format": "json", "filter": rf"^{s.PREFIX}\.", "histogram_buckets": "detailed"}
Bins = tuple[tuple[float, float, int], ...]  # (lower bound, width, count)
# `~proto` of a gRPC request: its content-type's first bytes (and "grpc", as a control plane from
# before that spelled it, until its sidecar gets new config).
_GRPC = (s.GRPC_CONTENT_TYPE, "grpc")


@dataclass
class Reading:
    counters: dict[tuple[str, tuple], int] = field(default_factory=dict)  # (stat, tags) -> total
    histograms: dict[tuple[str, tuple], Bins] = field(default_factory=dict)


def parse(body: bytes) -> Reading:
    """Envoy's `/stats?format=json&histogram_buckets=detailed`, our series only."""
    reading = Reading()
    for entry in json.loads(body).get("stats", ()):
        if "histograms" in entry:
            for h in entry["histograms"].get("details", ()):
                key = split_name(h["name"])
                if key is not None:
                    reading.histograms[key] = tuple((b["lower_bound"], b["width"], b["count"]) for b in h["totals"])
        elif "name" in entry:
            key = split_name(entry["name"])
            if key is not None:
                reading.counters[key] = int(entry.get("value", 0))
    return reading


@functools.lru_cache(maxsize=8192)
def split_name(name: str) -> tuple[str, tuple] | None:
    """ "lattice.rq.~r.source.~svc.a.b" -> ("rq", (("r", "source"), ("svc", "a.b")))."""
    if not name.startswith(s.PREFIX + "."):
        return None
    stat, *parts = name[len(s.PREFIX) + 1 :].split("." + s.SEP)
    return stat, tuple(tuple(part.partition(".")[::2]) for part in parts)


@dataclass(frozen=True, slots=True)
class Ends:
    """One series' two ends and what Istio says about the request, in the mesh's terms."""

    reporter: str
    source: Peer
    destination: Peer
    service: str
    mtls: bool
    policy: str  # connection_security_policy
    protocol: str
    code: int
    grpc: str
    flags: str

    @property
    def peer(self) -> Peer:
        return self.destination if self.reporter == "source" else self.source

    @property
    def failed(self) -> bool:
        return self.code >= 500 or self.code == 0 or self.grpc not in ("", "0")


def _value(v: str) -> str:
    return UNKNOWN if v in ("", "-") else v


@functools.lru_cache(maxsize=8192)
def ends(tags: tuple, protocol: str = "") -> Ends:
    """A series' tags (translate/istio_stats.py) as both ends and the response."""
    t = dict(tags)
    reporter = t.get("r", "")
    if reporter == "source":
        source, destination = endpoint_peer(t.get("src", "")), endpoint_peer(t.get("dst", ""))
        service = service_of(t.get("svc", ""))
    else:
        principal = t.get("sp", "")
        source = caller("" if principal == "-" else principal, t.get("src", ""))
        destination, service = endpoint_peer(t.get("dst", "")), _value(t.get("svc", ""))
    policy = t.get("tls", UNKNOWN)
    protocol = protocol or ("grpc" if t.get("proto") in _GRPC else "http")
    code = t.get("code", "0")
    return Ends(
        reporter,
        source,
        destination,
        service,
        policy == "mutual_tls",
        policy,
        protocol,
        int(code) if code.isdigit() else 0,
        t.get("grpc", "") if protocol == "grpc" else "",
        t.get("flags", "") or "-",
    )


def overrides(tags: tuple) -> dict[str, str]:
    """A series' UPSERT tag overrides: label -> value ("unknown" for what the request did not carry)."""
    n = len(s.OVERRIDE)
    return {name[n:]: _value(value) for name, value in tags if name.startswith(s.OVERRIDE)}


def bins_delta(now: Bins, before: Bins | None) -> Bins:
    """What a cumulative histogram gained since `before` (all of it if Envoy reset it)."""
    if not before:
        return now
    old = {lower: count for lower, _, count in before}
    if sum(c for _, _, c in now) < sum(old.values()):
        return now
    return tuple((lower, width, count - old.get(lower, 0)) for lower, width, count in now if count > old.get(lower, 0))


def mid(lower: float, width: float) -> float:
    return lower + width / 2
