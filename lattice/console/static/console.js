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

const enc = encodeURIComponent;
const num = (v, digits = 2) => (v === null || v === undefined ? "-" : v.toFixed(digits));

function linkCell(row, text, href) {
  const td = row.insertCell();
  const a = document.createElement("a");
  a.className = "go";
  a.textContent = text;
  a.href = href;
  td.append(a);
  return td;
}

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

// --- tabs ---
for (const button of document.querySelectorAll("nav button")) {
  button.addEventListener("click", () => {
    if (button.dataset.route) return go(button.dataset.route);
    if (location.hash) history.pushState(null, "", location.pathname + location.search);
    showTab(button.dataset.tab);
  });
}
function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}
function showTab(name) {
  if (!name.endsWith("-page")) refreshing = null;
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
      boxes.push({ name: s.name, namespace: s.nodes[0].namespace, x, y, h: 30 + s.nodes.length * 62 });
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
    g.addEventListener("click", () => go(`#/service/${enc(b.namespace)}/${enc(b.name)}`));
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
    g.addEventListener("click", (ev) => {
      ev.stopPropagation();
      go(`#/workload/${enc(n.id)}`);
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
    linkCell(row, n.id, `#/workload/${enc(n.id)}`);
    linkCell(row, n.service, `#/service/${enc(n.namespace)}/${enc(n.service)}`);
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
  const link = Object.assign(document.createElement("a"), { className: "go waterfall", textContent: "see its waterfall", href: `#/trace/${enc(id)}` });
  out.append(link);
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
$("#trace-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  go(`#/trace/${enc($("#trace-id").value.trim())}`);
});
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
// --- charts: a few SVG lines, no library (see lattice/console/__init__.py) ---
function lineChart(title, points, key, format, max) {
  const W = 320, H = 140, L = 44, R = 8, T = 18, B = 18;
  const svg = el("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, "data-metric": key });
  const values = points.map((p) => p[key]);
  const known = values.filter((v) => v !== null && v !== undefined);
  const top = max ?? Math.max(1e-9, ...known) * 1.15;
  svg.setAttribute("data-points", known.length);
  svg.setAttribute("data-last", known.length ? known[known.length - 1] : "");
  svg.append(el("text", { x: 6, y: 12, class: "title" }, `${title}: ${known.length ? format(known[known.length - 1]) : "-"}`));
  svg.append(el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
  svg.append(el("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
  svg.append(el("text", { x: 4, y: T + 8 }, format(top)));
  svg.append(el("text", { x: 4, y: H - B }, format(0)));
  if (points.length) {
    const span = points.length > 1 ? points.length - 1 : 1;
    const xy = [];
    points.forEach((p, i) => {
      const v = p[key];
      if (v === null || v === undefined) return;
      xy.push(`${(L + ((W - L - R) * i) / span).toFixed(1)},${(H - B - ((H - B - T) * v) / top).toFixed(1)}`);
    });
    svg.append(el("polyline", { points: xy.join(" ") }));
    const ago = Math.round(points[points.length - 1].start - points[0].start);
    svg.append(el("text", { x: L, y: H - 4 }, `-${ago}s`));
    svg.append(el("text", { x: W - R - 24, y: H - 4 }, "now"));
  }
  return svg;
}

function drawCharts(box, points) {
  box.replaceChildren(
    lineChart("requests/s", points, "rps", (v) => v.toFixed(1)),
    lineChart("success", points, "success_rate", pct, 1),
    lineChart("latency p50", points, "p50_ms", ms),
    lineChart("latency p99", points, "p99_ms", ms),
  );
}

function configRows(body, items, withSelects) {
  body.replaceChildren();
  for (const c of items) {
    const row = body.insertRow();
    row.className = "config-row";
    cell(row, c.kind);
    linkCell(row, `${c.namespace}/${c.name}`, `#/config/${enc(c.kind)}/${enc(c.namespace)}/${enc(c.name)}`);
    cell(row, c.role);
    if (withSelects) cell(row, c.workloads.join(", "));
  }
}

function proxyCells(row, p) {
  cell(row, p.sync, "sync sync-" + p.sync).title = Object.entries(p.types).map(([t, v]) => `${t}: ${v}`).join("\n");
  cell(row, p.identity.replace(/^spiffe:\/\//, "") || "none");
  const td = cell(row, p.cert_expires ? `${p.cert_expires} (${expiresIn(p.cert_expires)})` : "-");
  td.className = "cert";
  td.dataset.expires = p.cert_expires;
}

function expiresIn(iso) {
  const left = (Date.parse(iso) - Date.now()) / 1000;
  if (!(left > 0)) return "EXPIRED";
  return left >= 5400 ? `in ${(left / 3600).toFixed(1)}h` : left >= 90 ? `in ${Math.round(left / 60)}m` : `in ${Math.round(left)}s`;
}

let refreshing = null; // the page being kept fresh: a function, or null
async function servicePage(namespace, name) {
  showTab("service-page");
  const me = () => servicePage(namespace, name);
  refreshing = me;
  $("#svc-title").textContent = name;
  const [page, now, series] = await Promise.all([
    getJSON(`/api/v1/console/services/${enc(namespace)}/${enc(name)}`),
    getJSON(`/api/v1/stat?by=service&name=${enc(name)}&namespace=${enc(namespace)}&window=${WINDOW}`),
    getJSON(`/api/v1/console/series?by=service&name=${enc(name)}&namespace=${enc(namespace)}&seconds=120&step=5`),
  ]);
  if (refreshing !== me) return;
  $("#svc-host").textContent = page.host;
  const s = now.items[0];
  const summary = $("#svc-summary tbody");
  summary.replaceChildren();
  const row = summary.insertRow();
  row.dataset.rps = s ? s.rps : 0;
  row.dataset.success = s && s.success_rate !== null ? s.success_rate : "";
  row.dataset.p99 = s && s.latency_ms.p99 !== null ? s.latency_ms.p99 : "";
  cell(row, s ? s.rps.toFixed(2) : "0");
  cell(row, s ? pct(s.success_rate) : "-");
  cell(row, s ? ms(s.latency_ms.p50) : "-");
  cell(row, s ? ms(s.latency_ms.p99) : "-");
  cell(row, s ? pct(s.client.success_rate) : "-");
  drawCharts($("#svc-charts"), series.points);
  const proxies = $("#svc-proxies tbody");
  proxies.replaceChildren();
  for (const p of page.proxies) {
    const r = proxies.insertRow();
    r.className = "proxy-row";
    r.dataset.proxy = p.id;
    linkCell(r, p.id, `#/workload/${enc(p.id)}`);
    cell(r, p.version);
    cell(r, p.address);
    cell(r, p.healthy ? "yes" : "NO", p.healthy ? "" : "bad");
    cell(r, p.connected ? "yes" : "NO", p.connected ? "" : "bad");
    proxyCells(r, p);
  }
  configRows($("#svc-config tbody"), page.config, true);
}

async function workloadPage(id) {
  showTab("workload-page");
  const me = () => workloadPage(id);
  refreshing = me;
  const page = await getJSON(`/api/v1/console/workloads/${enc(id)}?window=${WINDOW}`);
  const p = page.proxy;
  const series = await getJSON(`/api/v1/console/series?by=workload&name=${enc(p.name)}&namespace=${enc(p.namespace)}&seconds=120&step=5`);
  if (refreshing !== me) return;
  $("#wl-title").textContent = p.id;
  const service = $("#wl-service");
  service.replaceChildren("workload ", Object.assign(document.createElement("b"), { textContent: p.name }), " of service ");
  const a = Object.assign(document.createElement("a"), { className: "go", textContent: p.service, href: `#/service/${enc(p.namespace)}/${enc(p.service)}` });
  service.append(a);
  const facts = $("#wl-facts tbody");
  facts.replaceChildren();
  const fact = (label, value, key, cls) => {
    const r = facts.insertRow();
    r.dataset.fact = key;
    const th = document.createElement("th");
    th.textContent = label;
    r.append(th);
    return cell(r, value, cls);
  };
  fact("identity", p.identity || "none (no certificate)", "identity");
  fact("certificate expires", p.cert_expires ? `${p.cert_expires} (${expiresIn(p.cert_expires)})` : "-", "cert").dataset.expires = p.cert_expires;
  fact("config sync", `${p.sync} — ` + Object.entries(p.types).map(([t, v]) => `${t} ${v}`).join(", "), "sync", "sync-" + p.sync);
  for (const [t, e] of Object.entries(p.nacks)) fact(`rejected ${t}`, e, "nack", "bad");
  fact("address", p.address, "address");
  fact("healthy", p.healthy ? "yes" : "NO", "healthy", p.healthy ? "" : "bad");
  fact("labels", Object.entries(page.labels).map(([k, v]) => `${k}=${v}`).join(" "), "labels");
  drawCharts($("#wl-charts"), series.points);
  const t = page.traffic || { inbound: { peers: [], total: {} }, outbound: { peers: [], total: {} } };
  const sides = [["#wl-inbound", t.inbound, false], ["#wl-outbound", t.outbound, true]];
  for (const [table, side, withService] of sides) {
    const body = $(table + " tbody");
    body.replaceChildren();
    for (const r of side.peers) {
      const row = body.insertRow();
      row.className = "traffic-row";
      row.dataset.peer = r.peer;
      row.dataset.rps = r.rps;
      cell(row, r.peer);
      if (withService) cell(row, r.service);
      cell(row, r.mtls ? "yes" : "no");
      cell(row, num(r.rps));
      cell(row, pct(r.success_rate), r.success_rate !== null && r.success_rate < 1 ? "bad" : "");
      cell(row, ms(r.p50_ms));
      cell(row, ms(r.p99_ms));
    }
    const total = body.insertRow();
    total.className = "traffic-total";
    total.dataset.rps = side.total.rps ?? 0;
    cell(total, "all");
    if (withService) cell(total, "");
    cell(total, "");
    cell(total, num(side.total.rps ?? 0));
    cell(total, pct(side.total.success_rate));
    cell(total, ms(side.total.p50_ms));
    cell(total, ms(side.total.p99_ms));
  }
  const failed = $("#wl-failures tbody");
  failed.replaceChildren();
  for (const r of page.failures) {
    const row = failed.insertRow();
    row.className = "failure-row";
    cell(row, new Date(r.time * 1000).toLocaleTimeString());
    cell(row, r.reporter === "destination" ? "in" : "out");
    cell(row, `${r.method} ${r.authority}${r.path}`);
    cell(row, r.status, "bad");
    cell(row, r.flags);
    idCell(row, r.request_id);
  }
  configRows($("#wl-config tbody"), page.config, false);
}

async function configPage(focus, again) {
  showTab("config-page");
  const me = () => configPage(focus, true);
  if (!again) refreshing = me;
  else if (refreshing === null) return;
  const [page, reach] = await Promise.all([getJSON("/api/v1/console/config"), getJSON("/api/v1/console/reach")]);
  if (!again && refreshing !== me) return;
  const body = $("#cfg-resources tbody");
  const opened = new Set([...body.querySelectorAll("details[open]")].map((d) => d.closest("tr").dataset.key));
  body.replaceChildren();
  for (const r of page.items) {
    const row = body.insertRow();
    const key = `${r.kind}/${r.namespace}/${r.name}`;
    row.className = "resource-row" + (focus === key ? " selected" : "") + (r.findings.length ? " warned" : "");
    row.dataset.key = key;
    cell(row, r.kind);
    const named = cell(row, `${r.namespace}/${r.name}`);
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = "spec";
    const pre = document.createElement("pre");
    pre.textContent = JSON.stringify(r.spec, null, 2);
    details.append(summary, pre);
    details.open = opened.has(key);
    named.append(details);
    cell(row, r.revision);
    const warnings = cell(row, "", r.findings.length ? "bad findings" : "findings");
    for (const f of r.findings) {
      const p = document.createElement("div");
      p.className = "finding";
      p.textContent = `${f.level}: ${f.field ? f.field + ": " : ""}${f.message}`;
      warnings.append(p);
    }
    if (!r.findings.length) warnings.textContent = "none";
    cell(row, r.decides.join(", ") || "-");
    if (focus === key && !again) row.scrollIntoView();
  }
  const other = $("#cfg-other");
  other.replaceChildren();
  for (const f of page.other_findings) {
    const li = document.createElement("li");
    li.textContent = `${f.resource}: ${f.field ? f.field + ": " : ""}${f.message}`;
    other.append(li);
  }
  const table = $("#reach");
  table.replaceChildren();
  const head = table.createTHead().insertRow();
  const corner = document.createElement("th");
  corner.textContent = "caller ↓  callee →";
  head.append(corner);
  for (const d of reach.destinations) {
    const th = document.createElement("th");
    th.textContent = d.service;
    head.append(th);
  }
  const rows = table.createTBody();
  for (const r of reach.rows) {
    const row = rows.insertRow();
    row.className = "reach-row";
    row.dataset.source = r.source;
    const th = document.createElement("th");
    th.textContent = r.source;
    th.title = r.identity || "plaintext, no certificate";
    row.append(th);
    for (const c of r.cells) {
      const td = cell(row, c.decision, "reach-" + c.decision);
      td.dataset.destination = c.destination;
      td.dataset.decision = c.decision;
      td.title = c.reason;
    }
  }
}

async function tracePage(id) {
  showTab("trace");
  refreshing = null;
  $("#trace-id").value = id;
  const svg = $("#waterfall");
  const summary = $("#waterfall-summary");
  summary.textContent = "asking every sidecar and the trace store…";
  svg.replaceChildren();
  const w = await getJSON(`/api/v1/console/waterfall/${enc(id)}`);
  if (!w.rows.length) {
    summary.textContent = `Nothing remembers request ${id}: sidecars keep failed requests (and all while tapped), the trace store sampled ones.`;
    return;
  }
  const sidecars = w.rows.filter((r) => r.source === "sidecar").length;
  summary.textContent = `request ${w.request_id}: ${w.total_ms.toFixed(1)} ms, ${sidecars} sidecar record(s)` +
    (w.trace_id ? `, ${w.rows.length - sidecars} span(s) of trace ${w.trace_id}` : ", not sampled for tracing");
  const W = 1100, LABEL = 520, ROW = 24, scale = (W - LABEL - 90) / Math.max(w.total_ms, 0.001);
  svg.setAttribute("viewBox", `0 0 ${W} ${w.rows.length * ROW + 10}`);
  svg.setAttribute("height", w.rows.length * ROW + 10);
  w.rows.forEach((r, i) => {
    const y = 5 + i * ROW;
    const g = el("g", {
      class: `span-row ${r.source}` + (r.error ? " error" : ""),
      "data-source": r.source, "data-proxy": r.proxy, "data-side": r.side, "data-status": r.status,
      "data-offset": r.offset_ms, "data-duration": r.duration_ms,
    });
    g.append(el("line", { x1: 0, y1: y + ROW - 2, x2: W, y2: y + ROW - 2, class: "grid" }));
    const flags = r.flags && r.flags !== "-" ? ` ${r.flags}` : "";
    g.append(el("text", { x: 6, y: y + 15 }, `${r.proxy} ${r.side}: ${r.label} → ${r.status || "-"}${flags}`));
    const x = LABEL + r.offset_ms * scale;
    g.append(el("rect", { class: "bar", x, y: y + 4, width: Math.max(2, r.duration_ms * scale), height: ROW - 10, rx: 2 }));
    g.append(el("text", { x: x + Math.max(2, r.duration_ms * scale) + 4, y: y + 15 }, ms(r.duration_ms)));
    svg.append(g);
  });
}

function failed(where) {
  return (e) => {
    const box = $(where);
    box.textContent = "";
    box.append(Object.assign(document.createElement("p"), { className: "error", textContent: String(e.message || e) }));
  };
}

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "service" && parts.length === 3) return servicePage(parts[1], parts[2]).catch(failed("#svc-charts"));
  if (parts[0] === "workload" && parts.length === 2) return workloadPage(parts[1]).catch(failed("#wl-charts"));
  if (parts[0] === "trace" && parts.length === 2) return tracePage(parts[1]).catch(failed("#waterfall-summary"));
  if (parts[0] === "config") return configPage(parts.slice(1).join("/")).catch(failed("#cfg-other"));
  showTab("graph");
}
window.addEventListener("hashchange", route);
setInterval(() => refreshing && refreshing().catch(() => {}), 5000);
for (const w of document.querySelectorAll(".win")) w.textContent = WINDOW;
followGraph();
route();
