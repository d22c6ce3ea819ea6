// The Metis performance dashboard: polls /api/metrics/summary and draws line charts on canvas.
// No library and no build step. window.metisDashboard exposes what was drawn (tests read it).
// When the server protects its operator data, the page asks for an operator key and keeps it for
// the browser session (sessionStorage, shared with the question page), like the question page.
"use strict";

const POLL_MS = 2000;
const COLORS = {
  p50: "#2b6cb0", p95: "#e4572e", rps: "#2f855a", cpu: "#805ad5", rss: "#d69e2e",
  exact: "#2b6cb0", semantic: "#38a169", retrieval: "#dd6b20", llm: "#e53e3e",
  embedding: "#805ad5", document: "#718096",
  pending: "#d69e2e", queued: "#d69e2e", running: "#3182ce", succeeded: "#38a169",
  completed: "#38a169", failed: "#e53e3e", cancelled: "#a0aec0", queue_depth: "#1a202c",
};
const FALLBACK = ["#319795", "#b83280", "#4a5568", "#c05621", "#2c7a7b"];
const KEY_ITEM = "metis.apiKey";
const state = { updates: 0, errors: 0, charts: {}, summary: null, signIn: false };
window.metisDashboard = state;

function colorOf(name, i) { return COLORS[name] || FALLBACK[i % FALLBACK.length]; }

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (Math.abs(v) >= 100) return v.toFixed(0);
  if (Math.abs(v) >= 10) return v.toFixed(1);
  return v.toFixed(2).replace(/\.?0+$/, "") || "0";
}

// series: [{name, points: [[t, v|null], ...]}]; opts: {xMin, yMax, unit}
function drawChart(id, series, opts) {
  series = series.map((s) => ({ ...s, points: s.points.filter(([t]) => t >= opts.xMin) }));
  const canvas = document.getElementById(id);
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  // legend first: it wraps onto as many rows as it needs, and the plot starts below it
  const legend = [];
  let lx = 44, ly = 15;
  series.forEach((s, i) => {
    const width = ctx.measureText(s.name).width + 28;
    if (lx + width > w - 10 && lx > 44) { lx = 44; ly += 14; }
    legend.push([s.name, colorOf(s.name, i), lx, ly]);
    lx += width;
  });
  const pad = { l: 44, r: 10, t: ly + 9, b: 20 };
  const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
  let points = 0, top = 0;
  for (const s of series) for (const [, v] of s.points) {
    if (v !== null && v !== undefined) { points += 1; top = Math.max(top, v); }
  }
  const yMax = opts.yMax !== undefined ? opts.yMax : niceMax(top * 1.1);
  const xMin = opts.xMin, xMax = 0;
  const x = (t) => pad.l + ((t - xMin) / (xMax - xMin)) * pw;
  const y = (v) => pad.t + ph - (Math.min(v, yMax) / yMax) * ph;

  ctx.strokeStyle = "#e3e6ec"; ctx.fillStyle = "#6b7385"; ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = (yMax * i) / 4, yy = Math.round(y(v)) + 0.5;
    ctx.beginPath(); ctx.moveTo(pad.l, yy); ctx.lineTo(pad.l + pw, yy); ctx.stroke();
    ctx.textAlign = "right"; ctx.fillText(fmt(v) + (opts.unit || ""), pad.l - 4, yy + 3);
  }
  ctx.textAlign = "center";
  for (let i = 0; i <= 4; i++) {
    const t = xMin + ((xMax - xMin) * i) / 4;
    ctx.fillText(t === 0 ? "now" : `${Math.round(t)}s`, x(t), h - 5);
  }
  ctx.textAlign = "left";
  for (const [name, color, x0, y0] of legend) {
    ctx.fillStyle = color; ctx.fillRect(x0, y0 - 9, 10, 10);
    ctx.fillStyle = "#1d2330"; ctx.fillText(name, x0 + 14, y0);
  }
  // lines; a lone point (no neighbour) is drawn as a dot
  series.forEach((s, i) => {
    ctx.strokeStyle = ctx.fillStyle = colorOf(s.name, i); ctx.lineWidth = 2;
    let open = false;
    ctx.beginPath();
    s.points.forEach(([t, v], j) => {
      if (v === null || v === undefined) { open = false; return; }
      const prev = s.points[j - 1], next = s.points[j + 1];
      const alone = !(prev && prev[1] != null) && !(next && next[1] != null);
      if (alone) { ctx.fillRect(x(t) - 2, y(v) - 2, 4, 4); return; }
      if (open) ctx.lineTo(x(t), y(v)); else { ctx.moveTo(x(t), y(v)); open = true; }
    });
    ctx.stroke();
  });
  if (!points) {
    ctx.fillStyle = "#6b7385"; ctx.textAlign = "center";
    ctx.fillText(opts.empty || "no data yet", pad.l + pw / 2, pad.t + ph / 2);
  }
  canvas.dataset.points = String(points);
  state.charts[id] = { points, series: series.map((s) => s.name) };
}

function setText(id, text) { document.getElementById(id).textContent = text; }

function ms(v) { return v === null || v === undefined ? "–" : `${fmt(v)} ms`; }

function render(d) {
  // The whole window once it is full; until then, zoom on the time the server has been up.
  const first = d.process.series.length ? d.process.series[0].t : 0;
  const xMin = Math.max(-d.window_s, Math.min(-60, Math.floor(first / 10) * 10));
  const r = d.requests;
  setText("t-rps", fmt(r.rps));
  setText("t-p50", ms(r.p50_ms));
  setText("t-p95", ms(r.p95_ms));
  setText("t-p99", ms(r.p99_ms));
  setText("t-err", `${fmt(r.error_ratio * 100)} %`);
  setText("t-cpu", d.process.cpu_percent == null ? "–" : `${fmt(d.process.cpu_percent)} %`);
  setText("t-rss", d.process.rss_mb == null ? "–" : `${fmt(d.process.rss_mb)} MB`);
  setText("t-llm", `${d.llm.calls} · ${d.llm.tokens}`);
  setText("t-cost", d.llm.estimated_cost.toFixed(4));
  setText("t-pool", d.db.pool ? `${d.db.pool.checked_out} / ${d.db.pool.size}` : "–");
  setText("t-slow", String(d.db.slow_queries));

  const rs = r.series;
  drawChart("c-latency", [
    { name: "p50", points: rs.map((p) => [p.t, p.p50_ms]) },
    { name: "p95", points: rs.map((p) => [p.t, p.p95_ms]) },
  ], { xMin, unit: "" });
  drawChart("c-rps", [{ name: "rps", points: rs.map((p) => [p.t, p.rps]) }], { xMin });

  const cs = d.cache.series;
  const levels = Object.keys(d.cache.levels);
  drawChart("c-cache", levels.map((lv) => ({ name: lv, points: cs.map((p) => [p.t, p[lv]]) })),
            { xMin, yMax: 1, empty: d.cache.enabled ? "no cache lookups yet" : "cache disabled" });

  const ts = d.tasks.series;
  const statuses = [...new Set(ts.flatMap((p) => Object.keys(p)).filter((k) => k !== "t"))];
  drawChart("c-tasks", statuses.map((st) => ({ name: st, points: ts.map((p) => [p.t, p[st] ?? null]) })),
            { xMin, empty: d.tasks.connected ? "no task statistics yet" : "task system not connected" });

  const ps = d.process.series;
  drawChart("c-cpu", [{ name: "cpu", points: ps.map((p) => [p.t, p.cpu_percent]) }], { xMin });
  drawChart("c-memory", [{ name: "rss", points: ps.map((p) => [p.t, p.rss_mb]) }], { xMin });

  const stages = document.querySelector("#stages tbody");
  stages.replaceChildren(...Object.entries(d.stages).map(([name, s]) =>
    row([name, s.count, fmt(s.p50_ms), fmt(s.p95_ms)])));
  const cache = document.querySelector("#cache tbody");
  cache.replaceChildren(...Object.entries(d.cache.levels).map(([name, c]) =>
    row([name, c.hits, c.misses, pct(c.hit_ratio), pct(c.window_hit_ratio)])));

  const alerts = document.getElementById("alerts");
  if (!d.alerts.length) {
    alerts.replaceChildren(li("none", "none"));
  } else {
    alerts.replaceChildren(...d.alerts.map((a) => {
      const item = document.createElement("li");
      item.className = a.level;
      const time = document.createElement("time");
      time.textContent = a.at.replace("T", " ").replace("+00:00", "Z");
      const b = document.createElement("b");
      b.textContent = a.level + " ";
      item.append(time, b, document.createTextNode(a.event));
      return item;
    }));
  }
  state.alerts = d.alerts.length;
  const status = document.getElementById("status");
  status.className = "status ok" + (d.firing.length ? " firing" : "");
  status.textContent = (d.firing.length ? `firing: ${d.firing.join(", ")} · ` : "") +
    `updated ${d.generated_at.replace("T", " ").replace("+00:00", "Z")}`;
}

function pct(v) { return v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)} %`; }
function li(cls, text) { const e = document.createElement("li"); e.className = cls; e.textContent = text; return e; }
function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) { const td = document.createElement("td"); td.textContent = String(c); tr.append(td); }
  return tr;
}

function storedKey() {
  try { return sessionStorage.getItem(KEY_ITEM) || ""; } catch (_) { return ""; }
}

// 401/403: the server wants an (operator) key; show the form with the server's own sentence.
function askForKey(message) {
  state.signIn = true;
  document.getElementById("sign-in").hidden = false;
  document.getElementById("sign-in-message").textContent = message;
  const status = document.getElementById("status");
  status.className = "status down";
  status.textContent = "sign in with an operator API key";
}

document.getElementById("sign-in").addEventListener("submit", (e) => {
  e.preventDefault();
  const key = document.getElementById("api-key").value.trim();
  try { sessionStorage.setItem(KEY_ITEM, key); } catch (_) { /* private mode: this page only */ }
  state.key = key;
  document.getElementById("sign-in").hidden = true;
  state.signIn = false;
  clearTimeout(state.timer);
  poll();
});

async function poll() {
  try {
    const key = state.key !== undefined ? state.key : storedKey();
    const headers = key ? { "X-API-Key": key } : {};
    const res = await fetch("/api/metrics/summary", { cache: "no-store", headers });
    if (res.status === 401 || res.status === 403) {
      let message = `HTTP ${res.status}`;
      try { message = (await res.json()).message || message; } catch (_) { /* not JSON */ }
      askForKey(message);
      return;  // no polling until a key is given
    }
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const d = await res.json();
    state.summary = d;
    render(d);
    state.updates += 1;
  } catch (err) {
    state.errors += 1;
    const status = document.getElementById("status");
    status.className = "status down";
    status.textContent = `cannot reach Metis (${err.message}); retrying`;
  }
  if (!state.signIn) state.timer = setTimeout(poll, POLL_MS);
}

poll();
