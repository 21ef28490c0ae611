// The Lattice console: reads the same REST API as the CLI (/api/v1/...), with the session cookie.
"use strict";

const WINDOW = Math.min(300, Math.max(1, Number(new URLSearchParams(location.search).get("window")) || 10));
const SVG = "http://www.w3.org/2000/svg";
const $ = (selector) => document.querySelector(selector);

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

const pct = (v) => (v === null || v === undefined ? "-" : (v * 100).toFixed(1) + "%");
const ms = (v) => (v === null || v === undefined ? "-" : v < 100 ? v.toFixed(1) + "ms" : v.toFixed(0) + "ms");

// --- tabs ---
for (const button of document.querySelectorAll("nav button")) {
  button.addEventListener("click", () => showTab(button.dataset.tab));
}
function showTab(name) {
  for (const b of document.querySelectorAll("nav button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of document.querySelectorAll(".tab")) s.classList.toggle("active", s.id === name);
}

// --- the graph: columns by call depth, a box per service around its versions ---
function layout(graph) {
  const depth = {};
  const callers = {};
  for (const e of graph.edges) (callers[e.destination] ||= []).push(e.source);
  const known = new Set(graph.nodes.map((n) => n.id));
  const depthOf = (id, seen = new Set()) => {
    if (depth[id] !== undefined) return depth[id];
    if (seen.has(id)) return 0;
    seen.add(id);
    const from = (callers[id] || []).filter((c) => known.has(c) && c !== id);
    depth[id] = from.length ? Math.max(...from.map((c) => depthOf(c, seen))) + 1 : 0;
    return depth[id];
  };
  const services = {};
  for (const n of graph.nodes) {
    const s = (services[n.service] ||= { name: n.service, nodes: [], column: 0 });
    s.nodes.push(n);
    s.column = Math.max(s.column, depthOf(n.id));
  }
  const columns = {};
  for (const s of Object.values(services)) (columns[s.column] ||= []).push(s);
  const place = {};
  const boxes = [];
  for (const [column, list] of Object.entries(columns)) {
    let y = 20;
    for (const s of list.sort((a, b) => a.name.localeCompare(b.name))) {
      const x = 20 + Number(column) * 430;
      boxes.push({ name: s.name, x, y, h: 30 + s.nodes.length * 62 });
      s.nodes.forEach((n, i) => (place[n.id] = { x: x + 12, y: y + 24 + i * 62 }));
      y += 50 + s.nodes.length * 62;
    }
  }
  return { place, boxes };
}

function drawGraph(graph) {
  const svg = $("#mesh");
  svg.replaceChildren();
  const defs = el("defs");
  const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" });
  marker.append(el("path", { d: "M0,0 L10,5 L0,10 z", fill: "#8a96a8" }));
  defs.append(marker);
  svg.append(defs);
  const { place, boxes } = layout(graph);
  svg.setAttribute("height", Math.max(200, ...boxes.map((b) => b.y + b.h + 20)));
  for (const b of boxes) {
    const g = el("g", { class: "service", "data-service": b.name });
    g.append(el("rect", { x: b.x, y: b.y, width: 250, height: b.h, rx: 8 }), el("text", { x: b.x + 10, y: b.y + 16 }, b.name));
    svg.append(g);
  }
  for (const e of graph.edges) {
    const a = place[e.source], b = place[e.destination];
    if (!a || !b) continue;
    const bad = e.success_rate < 1;
    const g = el("g", {
      class: "edge" + (bad ? " errors" : ""),
      "data-source": e.source, "data-destination": e.destination,
      "data-rps": e.rps, "data-success": e.success_rate, "data-p99": e.p99_ms ?? "", "data-mtls": e.mtls,
    });
    const x1 = a.x + 226, y1 = a.y + 22, x2 = b.x, y2 = b.y + 22;
    g.append(el("line", { x1, y1, x2, y2 }));
    const label = `${e.mtls ? "mTLS · " : ""}${e.rps.toFixed(2)} rps · ${pct(e.success_rate)} · ${ms(e.p99_ms)}`;
    g.append(el("text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 6, "text-anchor": "middle" }, label));
    svg.append(g);
  }
  for (const n of graph.nodes) {
    const p = place[n.id];
    const s = n.stat;
    const bad = s && s.success_rate !== null && s.success_rate < 1;
    const g = el("g", {
      class: "node" + (n.healthy ? "" : " unhealthy") + (bad ? " errors" : ""),
      "data-workload": n.id, "data-rps": s ? s.rps : 0, "data-success": s && s.success_rate !== null ? s.success_rate : "",
    });
    g.append(el("rect", { x: p.x, y: p.y, width: 226, height: 48, rx: 6 }));
    g.append(el("text", { x: p.x + 8, y: p.y + 18 }, `${n.id}  (${n.version})`));
    const numbers = s ? `${s.rps.toFixed(2)} rps · ${pct(s.success_rate)} · p99 ${ms(s.latency_ms.p99)}` : "no traffic";
    g.append(el("text", { x: p.x + 8, y: p.y + 36, class: "numbers" }, numbers));
    svg.append(g);
  }
  const body = $("#nodes tbody");
  body.replaceChildren();
  for (const n of graph.nodes) {
    const s = n.stat;
    const row = body.insertRow();
    row.dataset.workload = n.id;
    cell(row, n.id);
    cell(row, n.service);
    cell(row, n.version);
    cell(row, s ? s.rps.toFixed(2) : "-");
    cell(row, s ? pct(s.success_rate) : "-", s && s.success_rate !== null && s.success_rate < 1 ? "bad" : "");
    cell(row, s ? ms(s.latency_ms.p99) : "-");
    cell(row, s ? pct(s.client.success_rate) : "-", s && s.client.success_rate !== null && s.client.success_rate < 1 ? "bad" : "");
  }
  $("#updated").textContent = "updated " + new Date(graph.time * 1000).toLocaleTimeString();
}

function followGraph() {
  $("#window").textContent = WINDOW;
  const events = new EventSource(`/api/v1/graph/stream?window=${WINDOW}`);
  events.addEventListener("graph", (m) => drawGraph(JSON.parse(m.data)));
  events.onerror = () => ($("#updated").textContent = "reconnecting…");
}

// --- tap: the ndjson stream, read as it arrives ---
let tapping = null;
async function tap(name) {
  if (tapping) tapping.abort();
  tapping = new AbortController();
  const response = await fetch(`/api/v1/tap?name=${encodeURIComponent(name)}`, { signal: tapping.signal });
  if (!response.ok) {
    alert((await response.json()).error);
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline).trim();
      buffer = buffer.slice(newline + 1);
      if (line) tapEvent(JSON.parse(line));
    }
  }
}

function tapEvent(e) {
  if (e.tapping || e.protocol === "tcp") return;
  const body = $("#tap-table tbody");
  const row = body.insertRow(0);
  row.className = "tap-row";
  cell(row, new Date(e.time * 1000).toLocaleTimeString());
  cell(row, e.reporter === "destination" ? "in" : "out");
  cell(row, `${e.source.workload} → ${e.destination.workload === "unknown" ? e.service : e.destination.workload}`);
  cell(row, `${e.method} ${e.authority}${e.path}`);
  cell(row, e.status, e.status >= 400 || e.status === 0 ? "bad" : "");
  cell(row, e.flags, e.flags !== "-" ? "bad" : "");
  cell(row, e.duration_ms.toFixed(1));
  idCell(row, e.request_id);
  while (body.rows.length > 200) body.deleteRow(-1);
}

function idCell(row, id) {
  const td = row.insertCell();
  if (!id) return;
  const a = document.createElement("a");
  a.className = "rid";
  a.textContent = id;
  a.addEventListener("click", () => why(id));
  td.append(a);
}

// --- why ---
async function why(id) {
  showTab("why");
  $("#why-id").value = id;
  const out = $("#why-answer");
  out.textContent = "asking every sidecar…";
  const answer = await (await fetch(`/api/v1/why/${encodeURIComponent(id)}`)).json();
  out.replaceChildren();
  const line = (text, cls) => {
    const p = document.createElement("p");
    p.textContent = text;
    if (cls) p.className = cls;
    out.append(p);
  };
  if (answer.error) return line(answer.error, "cause");
  if (!answer.found) return line(`No sidecar remembers request ${id}: sidecars keep failed requests, and all requests while tapped.`);
  line(`request ${answer.request_id}: ${answer.outcome}`);
  const hops = document.createElement("ol");
  for (const h of answer.hops) {
    const li = document.createElement("li");
    li.textContent = h.story;
    hops.append(li);
  }
  out.append(hops);
  const c = answer.cause;
  if (!c) return line("Nothing went wrong on the way, as far as the sidecars saw.");
  line("why: " + c.summary, "cause");
  if (c.flag) line(`${c.flag}: ${c.flag_meaning}`);
  for (const r of c.reasons) line("– " + r);
  if (c.decided_by.length) line("decided by: " + c.decided_by.map((d) => `${d.kind} ${d.namespace}/${d.name}`).join(", "));
  for (const f of c.fixes) line("what to change: " + f, "fix");
}

async function failures() {
  const answer = await (await fetch("/api/v1/failures?limit=50")).json();
  const body = $("#failures tbody");
  body.replaceChildren();
  for (const r of answer.items) {
    const row = body.insertRow();
    cell(row, new Date(r.time * 1000).toLocaleTimeString());
    cell(row, r.proxy);
    cell(row, `${r.method} ${r.authority}${r.path}`);
    cell(row, r.status, "bad");
    cell(row, r.flags);
    idCell(row, r.request_id);
  }
}

$("#tap-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  tap($("#tap-name").value.trim()).catch(() => {});
});
$("#tap-stop").addEventListener("click", () => tapping && tapping.abort());
$("#why-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  why($("#why-id").value.trim());
});
$("#why-recent").addEventListener("click", failures);
$("#authz-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const question = {
    from: $("#authz-from").value.trim(),
    to: $("#authz-to").value.trim(),
    method: $("#authz-method").value.trim() || "GET",
    path: $("#authz-path").value.trim() || "/",
  };
  const response = await fetch("/api/v1/authz/check", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(question),
  });
  const answer = await response.json();
  const body = $("#authz-results tbody");
  body.replaceChildren();
  if (!response.ok) {
    const row = body.insertRow();
    cell(row, "-");
    cell(row, "error", "bad");
    cell(row, answer.error || response.statusText);
    return;
  }
  for (const r of answer.results) {
    const row = body.insertRow();
    row.className = "authz-row";
    cell(row, r.workload);
    cell(row, r.decision, r.decision === "DENY" ? "bad" : "");
    cell(row, r.reason);
  }
});
followGraph();
