// The Metis question page: asks /api/chat/query and shows the answer with its sources, uploads
// documents and follows their ingest tasks. No library and no build step. Data only ever reaches
// the page as text (textContent, Text nodes), never as HTML. window.metisChat exposes what
// happened (tests read it).
"use strict";

const POLL_MS = 400;
const POLL_FAILURES_TOLERATED = 5;
const FINISHED = new Set(["completed", "failed", "cancelled"]);
const state = {
  conversationId: null, conversationCollection: null, answers: 0, errors: 0,
  collections: [], uploads: [],
};
window.metisChat = state;

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// el("li", {class: "x", text: data}, child, "more text"): strings become Text nodes.
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

// One API call, resolved as {ok, status, body}. An unreachable server, or an answer that is not
// the JSON we expect, becomes a body of the API's own {code, message} shape: one way to show it.
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers["X-API-Key"] = key;
  let payload = body;
  if (body !== undefined && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload });
  } catch (err) {
    return { ok: false, status: 0,
             body: { code: "network_error", message: `The server could not be reached: ${err.message}` } };
  }
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

// -- asking ------------------------------------------------------------------------------------

function setConversation(id, collection) {
  state.conversationId = id;
  state.conversationCollection = collection;
  $("conversation").textContent = id ? `conversation ${id} in ${collection}` : "new conversation";
}

function newConversation() {
  setConversation(null, null);
  $("transcript").replaceChildren($("empty"));
  $("empty").hidden = false;
  showError("ask-error", null);
  $("question").focus();
}

async function ask(event) {
  event.preventDefault();
  const message = $("question").value.trim();
  const collection = $("collection").value.trim() || "default";
  if (!message || $("ask-button").disabled) return;
  // A conversation belongs to one collection: asking another one starts a new conversation.
  if (state.conversationId && state.conversationCollection !== collection) setConversation(null, null);
  const body = { message, collection, cache: !$("bypass-cache").checked };
  if (state.conversationId) body.conversation_id = state.conversationId;
  showError("ask-error", null);
  $("ask-button").disabled = true;
  $("ask-status").textContent = "thinking…";
  try {
    const r = await api("POST", "/api/chat/query", body);
    if (!r.ok) {
      state.errors += 1;
      showError("ask-error", r);
      return;
    }
    state.answers += 1;
    setConversation(r.body.conversation_id, collection);
    renderTurn(message, r.body);
    $("question").value = "";
  } catch (err) {  // a bug of ours, or an answer of an unexpected shape: say so, keep the page
    state.errors += 1;
    showError("ask-error", { status: 0, body: { code: "page_error", message: String(err) } });
  } finally {
    $("ask-button").disabled = false;
    $("ask-status").textContent = "";
  }
}

function fmtMs(v) { return `${Number(v || 0).toFixed(1)} ms`; }

function servedText(answer) {
  const c = answer.cache || {};
  const how = answer.mode === "llm" ? `LLM answer${answer.model ? ` (${answer.model})` : ""}`
                                    : "extractive answer";
  const saved = c.saved_ms ? `, saved about ${fmtMs(c.saved_ms)}` : "";
  switch (c.level) {
    case "exact": return `Served from the exact cache${saved} · ${how}`;
    case "semantic": {
      const sim = typeof c.similarity === "number" ? c.similarity.toFixed(3) : "?";
      return `Served from the semantic cache: similarity ${sim} to the earlier question ` +
             `“${c.original_question || ""}”${saved} · ${how}`;
    }
    case "retrieval": return `Sources from the retrieval cache, answer generated now${saved} · ${how}`;
    case "llm": return `Generation from the LLM cache${saved} · ${how}`;
    default: return `Full run, no cache · ${how}`;
  }
}

function citationItem(c) {
  const where = [];
  if (c.page !== null && c.page !== undefined) where.push(`page ${c.page}`);
  if (c.section) where.push(`section “${c.section}”`);
  return el("li", { value: String(c.index) },
    el("span", { class: "filename", text: c.folder ? `${c.folder}/${c.filename}` : c.filename }),
    where.length ? el("span", { class: "where", text: where.join(" · ") }) : null,
    el("span", { class: "score", text: `score ${Number(c.score).toFixed(3)}` }),
    el("blockquote", { class: "snippet", text: c.snippet }));
}

function renderTurn(question, answer) {
  const t = answer.timings_ms || {};
  const citations = answer.citations || [];
  const warnings = answer.warnings || [];
  const turn = el("article", { class: "turn card" },
    el("p", { class: "question", text: question }),
    el("div", { class: "answer", text: answer.answer }),
    warnings.length ? el("ul", { class: "warnings" }, ...warnings.map((w) => el("li", { text: w }))) : null,
    el("h3", { text: citations.length ? "Sources" : "No sources cited" }),
    citations.length ? el("ol", { class: "citations" }, ...citations.map(citationItem)) : null,
    el("p", { class: "served", "data-level": (answer.cache && answer.cache.level) || "none",
              text: servedText(answer) }),
    el("p", { class: "timings",
              text: `embed ${fmtMs(t.embed)} · retrieve ${fmtMs(t.retrieve)} · ` +
                    `generate ${fmtMs(t.generate)} · total ${fmtMs(t.total)}` }));
  $("empty").hidden = true;
  $("transcript").append(turn);
  turn.scrollIntoView({ block: "nearest" });
}

// -- collections -------------------------------------------------------------------------------

// Suggestions only: without them (an empty server, a missing API key) the fields still work.
async function loadCollections() {
  const r = await api("GET", "/api/documents?limit=500");
  if (!r.ok || !Array.isArray(r.body.items)) return;
  const names = [...new Set(r.body.items.map((d) => d.collection).filter(Boolean))].sort();
  state.collections = names;
  $("collections").replaceChildren(...names.map((name) => el("option", { value: name })));
}

// -- uploading ---------------------------------------------------------------------------------

function chunks(n) { return n === 1 ? "1 chunk" : `${n ?? "?"} chunks`; }

function finalText(task, collection) {
  if (task.status === "completed") {
    const res = task.result || {};
    return `${res.status || "done"}: ${chunks(res.chunks)} in ${collection}`;
  }
  if (task.status === "failed" && task.error) return `failed: ${task.error.message} (${task.error.code})`;
  return task.status;
}

async function followTask(taskId, row, collection) {
  const [bar, status] = [row.querySelector("progress"), row.querySelector(".status")];
  let failures = 0;
  for (;;) {
    const r = await api("GET", `/api/tasks/${encodeURIComponent(taskId)}`);
    if (r.ok) {
      failures = 0;
      const task = r.body;
      bar.value = Number(task.progress) || 0;
      if (FINISHED.has(task.status)) {
        row.dataset.status = task.status;
        status.textContent = finalText(task, collection);
        return;
      }
      status.textContent = `${task.status}${task.message ? `: ${task.message}` : ""} ` +
                           `(${Math.round(bar.value)}%)`;
    } else if (r.status === 404 || ++failures >= POLL_FAILURES_TOLERATED) {
      row.dataset.status = "error";
      status.textContent = errorText(r);
      return;
    }
    await sleep(POLL_MS);
  }
}

function trackResult(result, collection) {
  const row = el("li", { "data-status": result.status },
    el("span", { class: "filename", text: result.filename }),
    el("progress", { max: "100", value: "0" }),
    el("span", { class: "status", text: result.status }));
  $("uploads").prepend(row);
  state.uploads.push({ filename: result.filename, row });
  if (result.task_id) return followTask(result.task_id, row, collection);
  row.querySelector("progress").value = 100;
  const status = row.querySelector(".status");
  if (result.status === "duplicate") status.textContent = `already stored in ${collection} (${chunks(result.chunks)})`;
  else if (result.error) status.textContent = `${result.status}: ${result.error.message} (${result.error.code})`;
  return Promise.resolve();
}

async function upload(event) {
  event.preventDefault();
  const files = $("files").files;
  if (!files.length || $("upload-button").disabled) return;
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  form.append("collection", $("upload-collection").value.trim() || "default");
  showError("upload-error", null);
  $("upload-button").disabled = true;
  try {
    const r = await api("POST", "/api/documents", form);
    if (!r.ok) {
      showError("upload-error", r);
      return;
    }
    $("files").value = "";
    $("upload-button").disabled = false;  // the next upload need not wait for these tasks
    await Promise.all((r.body.results || []).map((res) => trackResult(res, r.body.collection)));
    await loadCollections();
  } catch (err) {
    showError("upload-error", { status: 0, body: { code: "page_error", message: String(err) } });
  } finally {
    $("upload-button").disabled = false;
  }
}

// -- wiring ------------------------------------------------------------------------------------

$("ask").addEventListener("submit", ask);
$("question").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) ask(e);  // Shift+Enter: a new line
});
$("new-conversation").addEventListener("click", newConversation);
$("upload").addEventListener("submit", upload);
// The key lasts the browser session, shared with the dashboard (which needs an admin one).
try { $("api-key").value = sessionStorage.getItem("metis.apiKey") || ""; } catch (_) { /* none */ }
$("api-key").addEventListener("change", () => {
  try { sessionStorage.setItem("metis.apiKey", $("api-key").value.trim()); } catch (_) { /* none */ }
  loadCollections();
});
loadCollections();
