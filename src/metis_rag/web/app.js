// The Metis page's core: API calls, sign-in, tabs, collections, and the admin views. chat.js and
// docs.js build on window.Metis. No library and no build step. Data only ever reaches the page
// as text (textContent, Text nodes), never as HTML. window.metisChat exposes what happened
// (tests read it).
"use strict";

const state = {
  conversationId: null, conversationCollection: null, answers: 0, errors: 0,
  collections: [], uploads: [], me: null, firstToken: null, agent: null,
};
window.metisChat = state;

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const KEY_STORE = "metis.apiKey";

// el("li", {class: "x", text: data}, child, "more text"): strings become Text nodes.
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === null || value === undefined) continue;
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

function apiKey() {
  try { return sessionStorage.getItem(KEY_STORE) || ""; } catch (_) { return ""; }
}

function headers(extra) {
  const h = { Accept: "application/json", ...(extra || {}) };
  const key = apiKey();
  if (key) h["X-API-Key"] = key;
  return h;
}

function problem(code, message, status) { return { ok: false, status: status || 0, body: { code, message } }; }

// One API call, resolved as {ok, status, body}. An unreachable server, or an answer that is not
// the JSON we expect, becomes a body of the API's own {code, message} shape: one way to show it.
async function api(method, path, body) {
  const h = headers();
  let payload = body;
  if (body !== undefined && !(body instanceof FormData)) {
    h["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, { method, headers: h, body: payload });
  } catch (err) {
    return problem("network_error", `The server could not be reached: ${err.message}`);
  }
  if (response.status === 204) return { ok: true, status: 204, body: null };
  return readJson(response);
}

async function readJson(response) {
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  if (response.ok && data !== null) return { ok: true, status: response.status, body: data };
  if (data === null || typeof data.message !== "string") {
    data = { code: `http_${response.status}`,
             message: `The server answered ${response.status} ${response.statusText}.`.replace(" .", ".") };
  }
  return { ok: false, status: response.status, body: data };
}

function errorText(r) {
  const where = r.status ? `, HTTP ${r.status}` : "";
  return `${r.body.message} (${r.body.code || "error"}${where})`;
}

function showError(id, r) {
  const box = $(id);
  if (!r) { box.hidden = true; box.textContent = ""; return; }
  box.textContent = errorText(r);
  box.dataset.code = r.body.code || "";
  box.hidden = false;
}

const fmtBytes = (n) => n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KB`
                                              : `${(n / 1048576).toFixed(1)} MB`;
const fmtDate = (s) => { const d = new Date(s); return isNaN(d) ? "" : d.toLocaleString(); };
const fmtMs = (v) => `${Number(v || 0).toFixed(1)} ms`;

// -- tabs --------------------------------------------------------------------------------------

const TABS = ["chat", "docs", "admin"];
const onShow = {};

function showTab(name) {
  for (const t of TABS) {
    const on = t === name;
    $(`tab-${t}`).setAttribute("aria-selected", String(on));
    $(`tab-${t}`).tabIndex = on ? 0 : -1;
    $(`view-${t}`).hidden = !on;
  }
  if (onShow[name]) onShow[name]();
}

function wireTabs() {
  for (const t of TABS) $(`tab-${t}`).addEventListener("click", () => showTab(t));
  document.querySelector(".tabs").addEventListener("keydown", (e) => {
    if (e.key !== "ArrowRight" && e.key !== "ArrowLeft") return;
    const shown = TABS.filter((t) => !$(`tab-${t}`).hidden);
    const at = shown.findIndex((t) => $(`tab-${t}`).getAttribute("aria-selected") === "true");
    const next = shown[(at + (e.key === "ArrowRight" ? 1 : shown.length - 1)) % shown.length];
    showTab(next);
    $(`tab-${next}`).focus();
  });
}

// -- sign-in -----------------------------------------------------------------------------------

async function loadMe() {
  const r = await api("GET", "/api/me");
  state.me = r.ok ? r.body : null;
  const who = $("whoami");
  if (r.ok) {
    who.textContent = r.body.keys_in_use ? `${r.body.tenant} · ${r.body.role}`
                                         : `${r.body.tenant} · ${r.body.role} (no keys in use)`;
    who.dataset.role = r.body.role;
    showError("auth-error", null);
  } else {
    who.textContent = r.status === 404 ? "" : "not signed in";  // 404: a server without /api/me
    who.dataset.role = "";
    if (r.status === 401 || r.status === 403) showError("auth-error", r);
  }
  $("signout-button").hidden = !apiKey();
  if (state.meShownAt === undefined) state.meShownAt = performance.now();
  $("tab-admin").hidden = !(r.ok && r.body.role === "admin");
  document.dispatchEvent(new CustomEvent("metis:signed-in", { detail: state.me }));
  return r.ok;
}

function wireSignIn() {
  $("api-key").value = apiKey();
  $("signin").addEventListener("submit", async (e) => {
    e.preventDefault();
    try { sessionStorage.setItem(KEY_STORE, $("api-key").value.trim()); } catch (_) { /* none */ }
    await loadMe();
  });
  $("signout-button").addEventListener("click", async () => {
    try { sessionStorage.removeItem(KEY_STORE); } catch (_) { /* none */ }
    $("api-key").value = "";
    await loadMe();
  });
}

// -- collections (the suggestions of every collection field) -----------------------------------

async function loadCollections() {
  const r = await api("GET", "/api/collections");
  if (!r.ok || !Array.isArray(r.body.items)) return [];
  state.collections = r.body.items.map((c) => c.name);
  $("collections").replaceChildren(...state.collections.map((name) => el("option", { value: name })));
  document.dispatchEvent(new CustomEvent("metis:collections", { detail: r.body.items }));
  return r.body.items;
}

// -- admin: keys and the audit log --------------------------------------------------------------

const audit = { offset: 0, limit: 50, total: 0 };

async function loadKeys() {
  const r = await api("GET", "/api/keys");
  if (!r.ok) { showError("admin-error", r); return; }
  $("keys").tBodies[0].replaceChildren(...r.body.items.map((k) => el("tr", { "data-id": k.id },
    el("td", { text: k.id }), el("td", { text: k.name }), el("td", { text: k.role }),
    el("td", { text: fmtDate(k.created_at) }), el("td", { text: k.revoked_at ? fmtDate(k.revoked_at) : "" }),
    el("td", {}, k.revoked_at ? null : el("button", {
      type: "button", class: "secondary small", text: "Revoke", "aria-label": `Revoke key ${k.name || k.id}`,
      onclick: async () => {
        if (!confirm(`Revoke key ${k.name || k.id}? Clients using it stop working.`)) return;
        const x = await api("DELETE", `/api/keys/${encodeURIComponent(k.id)}`);
        if (!x.ok) showError("admin-error", x);
        loadKeys();
      } })))));
}

async function loadAudit() {
  const r = await api("GET", `/api/audit?limit=${audit.limit}&offset=${audit.offset}`);
  if (!r.ok) { showError("admin-error", r); return; }
  audit.total = r.body.total;
  $("audit").tBodies[0].replaceChildren(...r.body.items.map((a) => el("tr", { "data-outcome": a.outcome },
    el("td", { text: fmtDate(a.at) }), el("td", { text: a.actor }), el("td", { text: a.action }),
    el("td", { text: a.target }), el("td", { text: a.outcome }), el("td", { text: String(a.status) }))));
  const last = Math.min(audit.offset + audit.limit, audit.total);
  $("audit-info").textContent = audit.total ? `${audit.offset + 1}–${last} of ${audit.total}` : "no entries";
  $("audit-prev").disabled = audit.offset === 0;
  $("audit-next").disabled = last >= audit.total;
}

function wireAdmin() {
  onShow.admin = () => { showError("admin-error", null); loadKeys(); loadAudit(); };
  $("key-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const r = await api("POST", "/api/keys", { role: $("key-role").value, name: $("key-name").value.trim() });
    if (!r.ok) { showError("admin-error", r); return; }
    $("new-key").textContent = `New key (shown once, copy it now): ${r.body.key}`;
    $("new-key").hidden = false;
    $("key-name").value = "";
    await loadKeys();
    loadAudit();
  });
  $("audit-prev").addEventListener("click", () => { audit.offset = Math.max(0, audit.offset - audit.limit); loadAudit(); });
  $("audit-next").addEventListener("click", () => { audit.offset += audit.limit; loadAudit(); });
}

window.Metis = { state, $, el, api, headers, readJson, problem, errorText, showError, sleep,
                 fmtBytes, fmtDate, fmtMs, showTab, onShow, loadCollections, loadMe };

wireTabs();
wireSignIn();
wireAdmin();
// Interactive as soon as the scripts ran; the data arrives after.
state.interactiveAt = performance.now();
document.addEventListener("DOMContentLoaded", () => { loadMe(); loadCollections(); });
