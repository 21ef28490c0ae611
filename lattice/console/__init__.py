"""The web console: the live mesh in a browser, served by the control plane on its REST port at
`/ui/`, with nothing else to install.

Parts:
- `static/` — the page (`index.html`, `console.js`, `console.css`): plain HTML, SVG and
  JavaScript, no framework and nothing fetched from a CDN, so `pip install` brings all of it and
  a machine with no internet access serves it. The graph is a few dozen SVG elements laid out by
  service; a graph library (cytoscape, 400 KB) would buy layouts a mesh of this size does not need.
- `lattice/server/console.py` — its routes: login, the live graph pushed by server-sent events,
  and the same REST API the CLI reads (`/api/v1/...`), reached with a session cookie.

Login: `lattice dashboard` asks for a one-time ticket (admin credential) and opens
`/ui/login?ticket=...`; the ticket, good once and for a minute, becomes an HttpOnly, SameSite
session cookie. The admin token itself never appears in a URL.
"""
