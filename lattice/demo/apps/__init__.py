"""Bookinfo-shaped demo services that run inside the mesh.

Parts: `common` (HTTP server base, JSON/HTML replies, the outbound `fetch`),
and one module per service — `productpage`, `details`, `reviews`, `ratings` —
each runnable as `python -m lattice.demo.apps.<name>` with `PORT` set.

Rules: standard library only, so the demo runs anywhere Python does and the
mesh, not a framework, is what the user is looking at. Every outbound call
goes through the sidecar named by `HTTP_PROXY`, never directly, and carries
the tracing/routing headers of the request that caused it — without that,
header-based routing (`end-user: jason` → reviews v2) cannot work.
"""
