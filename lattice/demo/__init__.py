"""`lattice demo`: a control plane and Bookinfo in the mesh, with live traffic, on one machine.

Parts:
- `apps`          — the Bookinfo services themselves (productpage, details, reviews, ratings).
- `topology`      — which workloads the demo runs: Istio's Bookinfo names and versions + `loadgen`.
- `processes`     — `Child`: one process the demo started, its log file, and how it is stopped.
- `readiness`     — waiting until every workload is healthy, connected and holds its config.
- `loadgen`       — the traffic client, itself a meshed workload (`python -m lattice.demo.loadgen`).
- `traffic`       — reading each sidecar's inbound counters from its Envoy stats.
- `traffic_table` — turning two readings into rates and success ratios, and into a table.
- `run`           — `run_demo`: start, wait, watch, check, stop.

Rules: every number the demo shows comes from the mesh (Envoy's own stats, the control plane's
status), never from the client, so the table shows what a routing change really did. Every
process the demo starts is its child, in a process group of its own (so a Ctrl-C reaches the demo
alone and it stops them in order: workloads, then the control plane), and dies with the demo
even if the demo is killed (PR_SET_PDEATHSIG).
"""
