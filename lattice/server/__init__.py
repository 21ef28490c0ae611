"""The control-plane process: wiring, not logic.

Parts:
- `config`  — `ServerConfig`: where state lives, which ports, timings; `server.json` discovery file.
- `pusher`  — config or registry change -> (debounce) -> mesh snapshot -> translate -> cache.
- `jwks`    — RequestAuthentication jwksUri keys: fetched, refreshed, handed to each snapshot.
- `rest`    — the REST API (aiohttp): apply/get/delete, registry, status, proxy config dumps.
- `main`    — `run_server`: gRPC ADS + REST on one asyncio loop, started in order, stopped in reverse.

Rules: one TaskGroup; every task named; a signal stops everything and removes `server.json`.
"""
