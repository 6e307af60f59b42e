// Herd's dashboard. Everything it shows comes from the node's HTTP face:
// /herd/v1/status (the herd, a filtered page of targets), /herd/v1/alerts,
// /herd/v1/events, the Prometheus API for charts, and /herd/v1/watch (server-sent
// events, read with fetch so the token goes in a header) for live updates.
// Data is put into the page as text only (never as HTML).
"use strict";

const PAGE_SIZE = 50;
const RANGES = [["15m", 900], ["1h", 3600], ["6h", 21600], ["24h", 86400], ["7d", 604800]];
const DEFAULT_CHARTS = ["herd_cpu_used_pct", "herd_mem_used_pct", "herd_load_1",
                        "herd_disk_used_pct", "herd_net_rx_bytes_per_s"];
const POLL_MS = 10000;

const S = {
  token: null,
  page: 0,
  filter: "",
  state: "",
  selected: null,     // the target whose detail is open
  range: 900,
  charts: new Map(),  // metric name -> { chart, box }
  metrics: [],        // the open target's metric names
  chartsChosen: false, // the user removed a chart: do not bring the defaults back
  events: [],
  live: false,
};

const $ = (id) => document.getElementById(id);

// An element with attributes and children (strings become text nodes).
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function badge(text, cls) { return el("span", { class: "badge " + (cls || text) }, text); }

function ago(ms) {
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 129600) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

function secs(s) {
  if (s === null || s === undefined) return "–";
  if (s < 90) return s.toFixed(s < 10 ? 1 : 0) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return Math.round(s / 3600) + " h";
}

function clock(ms) { return new Date(ms).toLocaleTimeString(); }

// ---------------------------------------------------------------------------
// The API

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function authHeaders() { return S.token ? { Authorization: "Bearer " + S.token } : {}; }

async function api(path, opts) {
  opts = opts || {};
  const r = await fetch(path, Object.assign({}, opts, {
    headers: Object.assign({}, opts.headers || {}, authHeaders()),
  }));
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (r.status === 401) {
    askToken(S.token ? "the node refused this token" : "");
    throw new ApiError(401, "this node needs its API token");
  }
  if (!r.ok) {
    let msg = text;
    if (body && body.error && body.error.message) msg = body.error.message;
    else if (body && typeof body.error === "string") msg = body.error;
    throw new ApiError(r.status, path.split("?")[0] + ": " + msg);
  }
  return body;
}

function showError(e) {
  const bar = $("error-bar");
  if (!e) { bar.hidden = true; return; }
  if (e.status === 401) return;
  bar.textContent = e.message || String(e);
  bar.hidden = false;
}

// Runs `f`, showing its error in the bar (and clearing it on success).
async function guarded(f) {
  try { await f(); showError(null); } catch (e) { showError(e); }
}

// ---------------------------------------------------------------------------
// The token

function loadToken() {
  const m = location.hash.match(/(?:^#|&)token=([^&]*)/);
  if (m) {
    sessionStorage.setItem("herd-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  S.token = sessionStorage.getItem("herd-token");
}

function askToken(why) {
  $("token-form").hidden = false;
  const input = $("token-input");
  input.placeholder = why || "token";
  input.focus();
}

// A link with #token= opened in a tab that already shows the page.
window.addEventListener("hashchange", () => {
  const linked = linkedTarget();
  if (linked) {
    S.page = 0;
    guarded(refreshStatus).then(() => selectTarget(linked));
  }
  if (!/token=/.test(location.hash)) return;
  loadToken();
  $("token-form").hidden = true;
  refreshAll();
});

$("token-form-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const t = $("token-input").value.trim();
  if (!t) return;
  sessionStorage.setItem("herd-token", t);
  S.token = t;
  $("token-input").value = "";
  $("token-form").hidden = true;
  refreshAll();
});

// ---------------------------------------------------------------------------
// The herd and its targets

async function refreshStatus() {
  const q = new URLSearchParams({ offset: S.page * PAGE_SIZE, limit: PAGE_SIZE });
  if (S.filter) q.set("target", S.filter);
  if (S.state) q.set("state", S.state);
  const s = await api("/herd/v1/status?" + q);
  renderHerd(s);
  renderTargets(s);
  if (S.selected) {
    let t = s.targets.find((x) => x.name === S.selected);
    if (!t) {
      const one = await api("/herd/v1/status?" + new URLSearchParams({ target: S.selected }));
      t = one.targets.find((x) => x.name === S.selected);
    }
    renderTargetDetail(t);
  }
}

function renderHerd(s) {
  $("herd-id").textContent = "herd " + (s.herd_id || "(not formed)");
  $("leader").textContent = "leader: " + (s.leader ? "node " + s.leader : "none") +
    " · this node: " + s.node_id;
  const warn = [];
  if (s.quorum_lost && s.quorum_lost.length) warn.push("quorum lost");
  if (s.spec_error) warn.push("spec error: " + s.spec_error);
  if (s.unreachable && s.unreachable.length) warn.push("unreachable: node " + s.unreachable.join(", "));
  $("warnings").textContent = warn.join(" · ");

  const watches = new Map();
  for (const m of s.machines || []) {
    if (!m.watched_by) continue;
    if (!watches.has(m.watched_by)) watches.set(m.watched_by, []);
    watches.get(m.watched_by).push(m.node);
  }
  const body = $("nodes").tBodies[0];
  body.replaceChildren(...s.nodes.map((n) => el("tr", { "data-node": n.id },
    el("td", { title: n.role + (n.voter ? ", voter" : ", learner") },
      String(n.id), n.id === s.leader ? " ★ leader" : "", n.voter ? "" : " (learner)"),
    el("td", {}, n.address),
    el("td", {}, badge(n.alive ? "yes" : "no")),
    el("td", {}, n.lease === null || n.lease === undefined ? "–" : badge(n.lease ? "yes" : "no")),
    el("td", {}, String(n.targets)),
    el("td", {}, (watches.get(n.id) || []).map((x) => "node " + x).join(", ") || "–"))));
}

function checksCell(t) {
  if (!t.checks.length) return "–";
  const bad = t.checks.filter((c) => c.status !== "ok");
  if (!bad.length) return badge(t.checks.length + " ok", "ok");
  const worst = bad.some((c) => c.status === "critical") ? "critical" : bad[0].status;
  return badge(bad.length + " of " + t.checks.length + " " + worst, worst);
}

function upBadge(t) {
  if (t.paused) return badge("paused");
  if (t.up === null) return badge("pending", "unscraped");
  return badge(t.up ? "up" : "down");
}

function renderTargets(s) {
  const p = s.page;
  const st = p.states;
  $("targets-count").textContent = p.total + " in the herd · " + st.up + " up · " + st.down +
    " down · " + st.failing + " failing · " + st.paused + " paused";
  const last = Math.max(0, Math.ceil(p.matched / PAGE_SIZE) - 1);
  if (S.page > last) { S.page = last; }
  $("page-info").textContent = p.matched === 0 ? "no target matches"
    : (p.offset + 1) + "–" + (p.offset + p.count) + " of " + p.matched;
  $("prev").disabled = S.page === 0;
  $("next").disabled = p.offset + p.count >= p.matched;
  const body = $("targets").tBodies[0];
  body.replaceChildren(...s.targets.map((t) => el("tr", {
    "data-target": t.name,
    class: t.name === S.selected ? "selected" : "",
    onclick: () => selectTarget(t.name),
  },
    el("td", {}, t.name),
    el("td", {}, upBadge(t)),
    el("td", {}, t.owner ? "node " + t.owner : "–"),
    el("td", {}, checksCell(t)),
    el("td", {}, t.last_scrape_age_s === null ? "–" : secs(t.last_scrape_age_s) + " ago"),
    el("td", {}, secs(t.interval_s)),
    el("td", { class: "detail" }, t.last_error || (t.paused ? "paused by " + t.paused.by + (t.paused.reason ? ": " + t.paused.reason : "") : "")))));
}

let filterTimer = null;
$("filter").addEventListener("input", () => {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(() => {
    S.filter = $("filter").value.trim();
    S.page = 0;
    guarded(refreshStatus);
  }, 250);
});
$("state").addEventListener("change", () => {
  S.state = $("state").value;
  S.page = 0;
  guarded(refreshStatus);
});
$("prev").addEventListener("click", () => { S.page = Math.max(0, S.page - 1); guarded(refreshStatus); });
$("next").addEventListener("click", () => { S.page += 1; guarded(refreshStatus); });

// ---------------------------------------------------------------------------
// One target: its checks and charts

function selectTarget(name) {
  if (S.selected !== name) {
    S.selected = name;
    for (const { box } of S.charts.values()) box.remove();
    S.charts.clear();
    S.metrics = [];
    S.chartsChosen = false;
  }
  $("target-panel").hidden = false;
  for (const tr of $("targets").tBodies[0].rows) {
    tr.classList.toggle("selected", tr.dataset.target === name);
  }
  guarded(async () => {
    await refreshStatus();
    await loadMetrics();
  });
}

$("close-target").addEventListener("click", () => {
  S.selected = null;
  $("target-panel").hidden = true;
  for (const { box } of S.charts.values()) box.remove();
  S.charts.clear();
});

function renderTargetDetail(t) {
  $("target-title").textContent = S.selected;
  if (!t) {
    $("target-badge").replaceChildren(badge("gone", "unknown"));
    $("target-meta").textContent = "this target is no longer in the fleet";
    $("checks").tBodies[0].replaceChildren();
    return;
  }
  $("target-badge").replaceChildren(upBadge(t));
  $("target-meta").textContent = [
    "via " + t.transport + (t.address && t.address !== t.transport ? " " + t.address : ""),
    "owner: " + (t.owner ? "node " + t.owner : "none"),
    "every " + secs(t.interval_s),
    t.scrapes + " scrapes",
    t.last_error ? "last error: " + t.last_error : "",
  ].filter(Boolean).join(" · ");
  $("pause").hidden = !!t.paused;
  $("resume").hidden = !t.paused;
  $("checks").hidden = t.checks.length === 0;
  $("checks").tBodies[0].replaceChildren(...t.checks.map((c) => el("tr", { "data-check": c.name },
    el("td", {}, c.name),
    el("td", {}, c.kind),
    el("td", {}, badge(c.status)),
    el("td", { class: "detail" }, c.detail),
    el("td", {}, c.ts_ms ? clock(c.ts_ms) : "–"))));
}

$("pause").addEventListener("click", () => guarded(async () => {
  await api("/herd/v1/targets/" + encodeURIComponent(S.selected) +
    "/pause?for=1h&by=dashboard&reason=" + encodeURIComponent("paused from the dashboard"), { method: "POST" });
  await refreshStatus();
}));
$("resume").addEventListener("click", () => guarded(async () => {
  await api("/herd/v1/targets/" + encodeURIComponent(S.selected) + "/resume", { method: "POST" });
  await refreshStatus();
}));

// A PromQL string literal.
function promString(s) { return JSON.stringify(s); }

async function loadMetrics() {
  const name = S.selected;
  const q = new URLSearchParams();
  q.set("match[]", "{target=" + promString(name) + "}");
  const r = await api("/api/v1/label/__name__/values?" + q);
  if (S.selected !== name) return;
  const names = (r.data || []).slice().sort();
  const changed = names.join("\n") !== S.metrics.join("\n");
  S.metrics = names;
  const pick = $("metric-pick");
  if (changed) pick.replaceChildren(el("option", { value: "" }, "add a chart…"),
    ...S.metrics.map((m) => el("option", { value: m }, m)));
  $("charts-note").textContent = S.metrics.length ? "" : "no metric stored for this target yet";
  if (!S.chartsChosen) {
    // The vitals charts, as their metrics appear (CPU needs two scrapes), in order.
    let wanted = DEFAULT_CHARTS.filter((m) => S.metrics.includes(m));
    if (!wanted.length) wanted = S.metrics.slice(0, 4);
    for (const m of wanted) if (!S.charts.has(m)) addChart(m);
    for (const m of wanted) $("charts").append(S.charts.get(m).box);
  }
  await refreshCharts();
}

$("metric-pick").addEventListener("change", () => {
  const m = $("metric-pick").value;
  $("metric-pick").value = "";
  if (m && !S.charts.has(m)) { addChart(m); guarded(refreshCharts); }
});

function addChart(metric) {
  const canvas = el("canvas", { "data-metric": metric });
  const legend = el("div", { class: "legend" });
  const note = el("div", { class: "note" });
  const close = el("button", { type: "button", title: "remove this chart" }, "×");
  const box = el("div", { class: "chart", "data-metric": metric },
    el("div", { class: "title" }, metric, close), canvas, legend, note);
  close.addEventListener("click", () => { box.remove(); S.charts.delete(metric); S.chartsChosen = true; });
  $("charts").append(box);
  S.charts.set(metric, { chart: new window.HerdChart(canvas), box, legend, note });
}

function renderRanges() {
  $("ranges").replaceChildren(...RANGES.map(([label, secs]) => el("button", {
    type: "button",
    class: secs === S.range ? "on" : "",
    "data-range": label,
    onclick: () => { S.range = secs; renderRanges(); guarded(refreshCharts); },
  }, label)));
}

async function refreshCharts() {
  if (!S.selected || S.charts.size === 0) return;
  const name = S.selected;
  const end = Date.now() / 1000;
  const start = end - S.range;
  const step = Math.max(1, Math.ceil(S.range / 300));
  await Promise.all([...S.charts.entries()].map(async ([metric, c]) => {
    const q = new URLSearchParams({
      query: metric + "{target=" + promString(name) + "}",
      start: start.toFixed(3), end: end.toFixed(3), step: String(step),
    });
    const r = await api("/api/v1/query_range?" + q);
    if (S.selected !== name) return;
    const series = (r.data.result || []).map((s) => {
      const labels = Object.entries(s.metric)
        .filter(([k]) => k !== "__name__" && k !== "target")
        .map(([k, v]) => k + "=" + v).join(", ");
      return {
        name: labels || metric,
        points: s.values.map(([t, v]) => [t * 1000, Number(v)]),
      };
    });
    c.chart.set(series, start * 1000, end * 1000, step * 1000);
    c.legend.replaceChildren(...series.map((s, i) => {
      const sw = el("i");
      sw.style.background = window.HerdChart.palette[i % window.HerdChart.palette.length];
      return el("span", {}, sw, s.name);
    }));
    c.note.textContent = (r.warnings || []).join("; ");
  }));
}

// ---------------------------------------------------------------------------
// Alerts and events

async function refreshAlerts() {
  const r = await api("/herd/v1/alerts");
  const open = r.alerts.filter((a) => a.state !== "resolved");
  $("alerts-count").textContent = open.length ? String(open.length) : "";
  const list = $("alerts");
  if (!open.length) {
    list.replaceChildren(el("li", { class: "empty" }, "no alert is firing or pending"));
    return;
  }
  const rank = { firing: 0, pending: 1 };
  open.sort((a, b) => (rank[a.state] ?? 2) - (rank[b.state] ?? 2) || b.since_ms - a.since_ms);
  list.replaceChildren(...open.map((a) => el("li", { "data-alert-id": a.id, "data-rule": a.rule, "data-state": a.state },
    el("div", { class: "row" },
      badge(a.state, a.state === "firing" ? a.severity : a.state),
      el("strong", {}, a.rule), el("span", {}, a.target),
      a.acked_by ? el("span", { class: "muted" }, "acked by " + a.acked_by) : null,
      el("span", { class: "actions" },
        a.acked_by ? null : el("button", { type: "button", class: "ack", onclick: () => ack(a) }, "ack"),
        el("button", { type: "button", class: "silence", onclick: () => silence(a) }, "silence 1h"))),
    el("div", { class: "summary" },
      el("span", { class: "when" }, ago(a.active_since_ms || a.since_ms)),
      a.summary || ("value " + a.value)))));
}

function ack(a) {
  guarded(async () => {
    await api("/herd/v1/alerts/" + encodeURIComponent(a.id) + "/ack?by=dashboard", { method: "POST" });
    await refreshAlerts();
  });
}

function silence(a) {
  const q = new URLSearchParams({
    selector: "target=" + a.target + ",rule=" + a.rule,
    for: "1h", reason: "silenced from the dashboard", by: "dashboard",
  });
  guarded(async () => {
    await api("/herd/v1/silences?" + q, { method: "POST" });
    await refreshAlerts();
  });
}

async function refreshEvents() {
  const r = await api("/herd/v1/events?since=24h&limit=50");
  S.events = r.events.slice().sort((a, b) => b.ts_ms - a.ts_ms).slice(0, 50);
  renderEvents();
}

function renderEvents() {
  const list = $("events");
  if (!S.events.length) {
    list.replaceChildren(el("li", { class: "empty" }, "no event in the last 24 h"));
    return;
  }
  list.replaceChildren(...S.events.map((e) => el("li", { "data-kind": e.kind },
    el("div", { class: "row" }, el("span", { class: "when" }, clock(e.ts_ms)),
      el("strong", {}, e.kind), el("span", {}, e.target)),
    e.message ? el("div", { class: "summary" }, e.message) : null)));
}

// ---------------------------------------------------------------------------
// Live: the herd's changes as server-sent events

const pending = new Map();
function soon(f, ms) {
  if (pending.has(f)) return;
  pending.set(f, setTimeout(() => { pending.delete(f); guarded(f); }, ms || 300));
}

function setLive(on, why) {
  S.live = on;
  const l = $("live");
  l.className = "live " + (on ? "on" : "off");
  l.textContent = on ? "live" : (why || "reconnecting");
}

function onChange(c) {
  switch (c.kind) {
    case "alert":
      soon(refreshAlerts);
      break;
    case "event":
      S.events.unshift({ ts_ms: c.ts_ms, kind: c.what, target: c.target, message: c.message });
      S.events.length = Math.min(S.events.length, 50);
      renderEvents();
      soon(refreshStatus, 500);
      break;
    case "owner":
    case "node":
      soon(refreshStatus);
      break;
    default: // gap, resumed, lagged: something may have been missed
      soon(refreshAll, 500);
  }
}

function onBlock(block) {
  let data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "") + "\n";
  }
  if (!data) return;
  let c;
  try { c = JSON.parse(data); } catch (_) { return; }
  onChange(c);
}

async function watch() {
  for (;;) {
    try {
      const r = await fetch("/herd/v1/watch", { headers: authHeaders() });
      if (r.status === 401) { askToken(""); throw new Error("token"); }
      if (!r.ok) throw new Error("HTTP " + r.status);
      setLive(true);
      soon(refreshAll, 50); // what changed while the stream was down
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          onBlock(buf.slice(0, i));
          buf = buf.slice(i + 2);
        }
      }
    } catch (_) { /* reconnect below */ }
    setLive(false);
    await new Promise((res) => setTimeout(res, 2000));
  }
}

// ---------------------------------------------------------------------------

async function refreshAll() {
  await guarded(() => Promise.all([refreshStatus(), refreshAlerts(), refreshEvents()]));
}

// A link to one target (an Alertmanager alert's generatorURL): #target=NAME
// filters the list by it and opens it.
function linkedTarget() {
  const m = location.hash.match(/(?:^#|&)target=([^&]*)/);
  if (!m) return null;
  const name = decodeURIComponent(m[1]);
  S.filter = name;
  $("filter").value = name;
  return name;
}

function start() {
  const linked = linkedTarget();
  loadToken();
  renderRanges();
  refreshAll().then(() => {
    if (linked) selectTarget(linked);
    document.body.dataset.ready = "1";
  });
  watch();
  setInterval(() => {
    if (document.hidden) return;
    guarded(refreshStatus);
    if (S.selected) guarded(loadMetrics);
  }, POLL_MS);
}

start();
