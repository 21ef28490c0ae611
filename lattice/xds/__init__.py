"""xDS serving: a per-proxy snapshot cache and an ADS server that streams what it holds.

Parts:
- `cache`  — `SnapshotCache`: node id -> `ProxySnapshot` (resources serialized once, versioned by
             the hash of their bytes, identical resources and sets of them shared between
             proxies); `Encoder`: a piece many proxies hold is serialized once per push.
- `budget` — `SendBudget`: bytes of responses in flight over all streams, bounded.
- `status` — `StatusBoard`: per proxy and type, what was sent, ACKed or NACKed (with Envoy's text);
             it reports sends, NACKs and convergence to an optional `XdsEvents` (metrics).
- `sotw`, `delta` — one stream's protocol state machine for state-of-the-world and incremental xDS.
- `server` — the gRPC `AggregatedDiscoveryService` binding both to the cache.

Rules: the cache and the server are separate (go-control-plane's split). A watch that cannot be
answered yet stays open; a NACK never removes config from a proxy, it is recorded and shown.
Responses go out in make-before-break order: clusters, endpoints, listeners, routes.
"""

from lattice.xds.cache import ProxySnapshot, SnapshotCache, XdsResource
from lattice.xds.status import StatusBoard

__all__ = ["ProxySnapshot", "SnapshotCache", "StatusBoard", "XdsResource"]
