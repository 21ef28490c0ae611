"""The control-plane process: wiring, not logic.

Parts:
- `config`  — `ServerConfig`: where state lives, which ports, timings; `server.json` discovery file.
- `pusher`  — config or registry change -> (at once, or debounced right after a push) -> mesh
              snapshot -> translate (only what the change touched) -> cache, proxy by proxy,
              yielding to the loop as it goes.
- `incremental` — `ProxyTranslations`: the pusher's memory of past translations; a new snapshot
              re-translates only the types whose reads it changed, once per kind of proxy.
- `jwks`    — RequestAuthentication jwksUri keys: fetched, refreshed, handed to each snapshot.
- `secrets` — `lattice secret`: TLS secrets for gateways' credentialName, the key sealed at rest.
- `rest`    — the REST API (aiohttp): apply/get/delete, registry, status, proxy config dumps.
- `metrics` — the control plane's own Prometheus metrics (`/metrics`): pushes, convergence, CSRs, API.
- `observe` — `lattice stat/top/edges/tap`: every agent's live window, asked at once and merged.
- `traces`  — the embedded trace collector: spans agents post, kept in memory, bounded, for `lattice trace`.
- `drain`   — whether every connected proxy holds a stopping workload as draining (heartbeat answers).
- `main`    — `run_server`: gRPC ADS + REST on one asyncio loop, started in order, stopped in reverse.

Rules: one TaskGroup; every task named; a signal stops everything and removes `server.json`.
"""
