"""The sidecar agent: everything `lattice run` does next to an app.

Parts:
- `address`   — a loopback address of the workload's own (127.0.x.y), leased with a file lock.
- `bootstrap` — Envoy's bootstrap: node identity, admin on a unix socket, ADS to the agent.
- `envoy`     — starts and supervises Envoy (hot restart when it is replaced, an immediate new epoch
                when it dies) and talks to its admin socket.
- `relay`     — xDS relay: Envoy <-> agent <-> control plane, keeping the last config Envoy ACKed
                so a restarted Envoy gets config even while the control plane is down.
- `control`   — registration, heartbeats and deregistration with the control plane.
- `http`      — the agent's own port: readiness, config dump, stats.
- `access_log` — Envoy's access log stream (gRPC): one `Request` per request or TCP event, both ends named.
- `metrics`   — Istio's standard metrics counted from that stream, as Prometheus text.
- `live`      — the last five minutes per second (`lattice stat/top/edges`) and the tap fan-out.
- `observer`  — ties stream, metrics, window and tap together; reads the workload's metric rules.
- `traces`    — OTLP spans from Envoy, queued (bounded, never waiting) and forwarded to the control plane.
- `handover`  — an in-place upgrade: the agent re-executes itself and adopts the app and Envoy.
- `drain`     — the graceful stop: callers stop choosing this endpoint (and confirm it), Envoy
                drains its inbound listener, open requests finish, then the app is stopped.
- `sidecar`   — `Sidecar`: the lifecycle that ties these together and runs the app.
- `launch`    — the agent's own process: `lattice run` hands it the parsed options (cli/entry.py
                forks the parser, so the agent imports while the command line is parsed).
- `phases`    — when each step of the start ended (`--log-level info`: one `started in` line).

Start-up runs side by side what does not wait on each other: Envoy starts (its bootstrap needs no
certificate) while the key, the CSR and the enrolment run; the xDS stream opens while the
registration is made. Rules: the app starts only after Envoy holds its config; when the app exits, the sidecar stops
and `lattice run` exits with the app's code; a signal drains first (`drain`, bounded by
`--drain-timeout`), then stops app, Envoy and agent, in that order; a second signal stops at once.
SIGUSR1 replaces Envoy by hot restart (`envoy`); SIGHUP re-executes the agent while the app runs
on (`handover`).
App and Envoy run in process groups of their own, so a terminal's Ctrl-C reaches only the agent,
and they die with the agent even if it is killed (PR_SET_PDEATHSIG).
"""
