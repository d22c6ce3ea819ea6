// Chat: conversations (new, continue, rename, delete), answers streamed token by token from
// /api/chat/query's server-sent events, citations that open their passage, how each answer was
// served, and the agent mode's live steps when the server has it.
"use strict";
(() => {
const { state, $, el, api, headers, readJson, problem, errorText, showError, fmtMs, onShow } = window.Metis;
let controller = null;  // the answer being streamed, to stop it
let agentSupported = null;  // null: not asked yet

// -- conversations -----------------------------------------------------------------------------

function setConversation(id, collection) {
  state.conversationId = id;
  state.conversationCollection = collection;
  $("conversation").textContent = id ? `conversation ${id} in ${collection}` : "new conversation";
  for (const li of $("conversations").children) {
    li.classList.toggle("current", li.dataset.id === id);
    li.querySelector(".open").setAttribute("aria-current", String(li.dataset.id === id));
  }
}

function newConversation() {
  setConversation(null, null);
  $("transcript").replaceChildren($("empty"));
  $("empty").hidden = false;
  showError("ask-error", null);
  $("question").focus();
}

async function loadConversations() {
  const r = await api("GET", "/api/conversations?limit=100");
  if (!r.ok) return;
  $("conversations").replaceChildren(...r.body.items.map(conversationItem));
  $("conversations-empty").hidden = r.body.items.length > 0;
  setConversation(state.conversationId, state.conversationCollection);
}

function conversationItem(c) {
  const title = c.title || "(untitled)";
  return el("li", { "data-id": c.id },
    el("button", { type: "button", class: "open", text: title, title: `${title} · ${c.collection}`,
                   onclick: () => openConversation(c.id) }),
    el("span", { class: "meta muted small", text: `${c.collection} · ${c.messages} messages` }),
    el("span", { class: "actions" },
      el("button", { type: "button", class: "link small rename", text: "Rename",
                     "aria-label": `Rename ${title}`, onclick: () => renameConversation(c) }),
      el("button", { type: "button", class: "link small delete", text: "Delete",
                     "aria-label": `Delete ${title}`, onclick: () => deleteConversation(c) })));
}

async function openConversation(id) {
  const r = await api("GET", `/api/conversations/${encodeURIComponent(id)}`);
  if (!r.ok) { showError("ask-error", r); return; }
  showError("ask-error", null);
  $("transcript").replaceChildren($("empty"));
  $("empty").hidden = true;
  let question = null;
  for (const m of r.body.messages) {
    if (m.role === "user") { question = m.content; continue; }
    const turn = newTurn(question || "");
    turn.answer.textContent = m.content;
    finishTurn(turn, { answer: m.content, citations: m.citations || [] }, { stored: true });
    question = null;
  }
  $("collection").value = r.body.collection;
  setConversation(r.body.id, r.body.collection);
  $("question").focus();
}

async function renameConversation(c) {
  const title = prompt("New name of the conversation", c.title);
  if (title === null || !title.trim()) return;
  const r = await api("PATCH", `/api/conversations/${encodeURIComponent(c.id)}`, { title: title.trim() });
  if (!r.ok) showError("ask-error", r);
  await loadConversations();
}

async function deleteConversation(c) {
  if (!confirm(`Delete the conversation “${c.title || c.id}” and its messages?`)) return;
  const r = await api("DELETE", `/api/conversations/${encodeURIComponent(c.id)}`);
  if (!r.ok) { showError("ask-error", r); return; }
  if (state.conversationId === c.id) newConversation();
  await loadConversations();
}

// -- one turn: question, streamed answer, citations, how it was served ---------------------------

function newTurn(question) {
  const answer = el("div", { class: "answer" });
  const node = el("article", { class: "turn card", "data-state": "streaming" },
    el("p", { class: "question", text: question }), answer);
  $("empty").hidden = true;
  $("transcript").append(node);
  return { node, answer };
}

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

function whyText(c) {
  const parts = [];
  if (typeof c.score === "number") parts.push(`score ${c.score.toFixed(3)}`);
  if (typeof c.threshold === "number") parts.push(`threshold ${c.threshold.toFixed(3)}`);
  if (Array.isArray(c.checks) && c.checks.length) parts.push(`checks: ${c.checks.join(", ")}`);
  return parts.length ? `Why: ${parts.join(" · ")}` : "";
}

function agentText(a) {
  const scores = Object.entries(a.scores || {})
    .filter(([, v]) => typeof v === "number").map(([k, v]) => `${k} ${v.toFixed(2)}`);
  return `Agent: ${a.analysis || "?"} question, ${(a.steps || []).length} steps planned by ` +
         `${a.planner || "?"}, ${a.rounds || 0} refinement rounds` +
         (scores.length ? ` · ${scores.join(", ")}` : "");
}

function where(c) {
  const w = [];
  if (c.page !== null && c.page !== undefined) w.push(`page ${c.page}`);
  if (c.section) w.push(`section “${c.section}”`);
  return w.join(" · ");
}

function citationItem(c) {
  const at = where(c);
  return el("li", { value: String(c.index) },
    el("span", { class: "filename", text: c.folder ? `${c.folder}/${c.filename}` : c.filename }),
    at ? el("span", { class: "where", text: at }) : null,
    el("span", { class: "score", text: `score ${Number(c.score).toFixed(3)}` }),
    el("blockquote", { class: "snippet", text: c.snippet }));
}

function chip(c) {
  return el("button", { type: "button", class: "chip", "data-index": String(c.index),
                        "aria-label": `Source ${c.index}: ${c.filename}`, text: String(c.index),
                        onclick: () => openPassage(c) });
}

// The answer's "[n]" marks become chips that open their passage.
function linkCitations(node, text, citations) {
  const byIndex = new Map(citations.map((c) => [c.index, c]));
  const parts = [];
  let last = 0;
  for (const m of text.matchAll(/\[(\d+)\]/g)) {
    const c = byIndex.get(Number(m[1]));
    if (!c) continue;
    parts.push(text.slice(last, m.index), chip(c));
    last = m.index + m[0].length;
  }
  parts.push(text.slice(last));
  node.replaceChildren(...parts);
}

function finishTurn(turn, answer, opts) {
  const citations = answer.citations || [];
  const t = answer.timings_ms || {};
  const warnings = answer.warnings || [];
  linkCitations(turn.answer, answer.answer, citations);
  const copy = el("button", { type: "button", class: "link small copy", text: "Copy answer",
    onclick: async () => {
      try { await navigator.clipboard.writeText(answer.answer); copy.textContent = "Copied"; }
      catch (_) { copy.textContent = "Copy failed: select the text"; }
    } });
  const add = (...nodes) => turn.node.append(...nodes.filter(Boolean));
  add(
    warnings.length ? el("ul", { class: "warnings" }, ...warnings.map((w) => el("li", { text: w }))) : null,
    citations.length ? el("div", { class: "chips", "aria-label": "Sources" }, ...citations.map(chip)) : null,
    el("h3", { text: citations.length ? "Sources" : "No sources cited" }),
    citations.length ? el("ol", { class: "citations" }, ...citations.map(citationItem)) : null);
  if (!opts.stored) {
    const usage = answer.usage || {};
    const tokens = Object.entries(usage).map(([k, v]) => `${k} ${v}`).join(", ");
    const cost = typeof answer.cost === "number" ? ` · cost ${answer.cost}` : "";
    add(
      el("p", { class: "served", "data-level": (answer.cache && answer.cache.level) || "none",
                text: servedText(answer) }),
      whyText(answer.cache || {}) ? el("p", { class: "why", text: whyText(answer.cache) }) : null,
      answer.agent ? el("p", { class: "why agent-info", text: agentText(answer.agent) }) : null,
      el("p", { class: "timings",
                text: `embed ${fmtMs(t.embed)} · retrieve ${fmtMs(t.retrieve)} · ` +
                      `generate ${fmtMs(t.generate)} · total ${fmtMs(t.total)}` +
                      (tokens ? ` · tokens: ${tokens}` : " · no LLM tokens") + cost }));
  }
  turn.node.append(el("p", { class: "tools" }, copy));
  turn.node.dataset.state = opts.stopped ? "stopped" : "done";
}

// -- passages ----------------------------------------------------------------------------------

async function openPassage(c) {
  $("passage-title").textContent = `[${c.index}] ${c.folder ? `${c.folder}/` : ""}${c.filename}`;
  $("passage-where").textContent = [where(c), `score ${Number(c.score).toFixed(3)}`,
    typeof c.similarity === "number" ? `similarity ${c.similarity.toFixed(3)}` : ""].filter(Boolean).join(" · ");
  $("passage-text").textContent = c.snippet || "";
  $("passage-document").onclick = () => { $("passage").close(); window.Metis.openDocument(c.document_id); };
  $("passage").showModal();
  const r = await api("GET", `/api/documents/${encodeURIComponent(c.document_id)}?chunks=true`);
  if (!r.ok) { $("passage-where").textContent += ` · ${errorText(r)}`; return; }
  const chunk = (r.body.chunks || []).find((x) => x.id === c.chunk_id);
  if (chunk) $("passage-text").textContent = chunk.text;
}

// -- asking ------------------------------------------------------------------------------------

// The collections chosen under "Also search", other than the conversation's own.
function moreCollections(collection) {
  return [...$("more-collections").selectedOptions].map((o) => o.value).filter((n) => n !== collection);
}

function fillMoreCollections(items) {
  const select = $("more-collections");
  const keep = new Set([...select.selectedOptions].map((o) => o.value));
  select.replaceChildren(...items.map((c) => el("option", { value: c.name, text: c.name })));
  for (const o of select.options) o.selected = keep.has(o.value);
}

function queryBody(message, collection) {
  const body = { message, cache: !$("bypass-cache").checked, stream: true };
  const more = moreCollections(collection);
  // Several collections: searched at once, the conversation belongs to the first.
  if (more.length) body.collections = [collection, ...more];
  else body.collection = collection;
  const tags = $("filter-tags").value.split(",").map((t) => t.trim()).filter(Boolean);
  if (tags.length) body.tags = tags;
  if ($("filter-folder").value.trim()) body.folder = $("filter-folder").value.trim();
  if ($("mode").value === "agent") body.mode = "agent";
  if (state.conversationId) body.conversation_id = state.conversationId;
  return body;
}

// Server-sent events from a fetch body: calls onEvent(name, data) for each one as it arrives.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      onEvent(name, data.length ? JSON.parse(data.join("\n")) : null);
    }
  }
}

// The agent's steps as they run. step {id, op, name, status, purpose, error, elapsed_ms} (the
// plan first, then each step's start and its end); tool_call {step, name, arguments};
// tool_result {step, name, error, content, cache_level, elapsed_ms}. A step is one list item:
// its end updates it, and its tool call and result are listed under it.
const STEP_ENDS = new Set(["ok", "error", "timeout", "skipped", "failed"]);

function line(label, text, detail) {
  return el("li", { class: "event" }, el("strong", { text: label }), " ",
    el("span", { text: text.replace(/\s+/g, " ").trim() }),
    detail ? el("code", { text: String(detail).slice(0, 400) }) : null);
}

function stepNode(id) {
  let node = [...$("steps").children].find((li) => li.dataset.step === id);
  if (!node) {
    node = el("li", { class: "step", "data-step": id },
      el("span", { class: "step-head" }), el("ul", { class: "step-events" }));
    $("steps").append(node);
  }
  return node;
}

function showStepEvent(kind, d) {
  d = d && typeof d === "object" ? d : { text: String(d) };
  const ms = typeof d.elapsed_ms === "number" ? ` · ${d.elapsed_ms.toFixed(1)} ms` : "";
  const id = String(d.step || d.id || "?");
  const node = stepNode(id);
  const events = node.querySelector(".step-events");
  if (kind === "step" && d.plan) {  // the plan: what will run
    const steps = Array.isArray(d.plan.steps) ? d.plan.steps : [];
    node.dataset.status = "done";
    node.querySelector(".step-head").textContent =
      `Plan (${d.plan.kind || "?"}, by ${d.plan.planner || "?"}): ${steps.length} steps`;
    events.replaceChildren(...steps.map((s) => line(String(s.id || ""), `${s.name || s.op || ""}` +
      `${s.after && s.after.length ? ` after ${s.after.join(", ")}` : ""}`, s.purpose || "")));
  } else if (kind === "step") {
    node.dataset.status = d.status || "";
    if (d.name || d.op) node.dataset.name = d.name || d.op;
    node.querySelector(".step-head").textContent =
      `${id} ${node.dataset.name || ""} ${d.status || ""}${ms}`.replace(/\s+/g, " ").trim();
    if (d.error) events.append(line("Error", d.error));
    if (STEP_ENDS.has(d.status)) state.agent.ended += 1;
  } else if (kind === "tool_call") {
    state.agent.toolCalls += 1;
    events.append(el("li", { class: "event tool-call" }, el("strong", { text: "Tool call" }), " ",
      el("span", { text: d.name || "a tool" }), el("code", { text: JSON.stringify(d.arguments || {}) })));
  } else {
    const head = `${d.error ? `failed: ${d.error}` : "answered"}${d.cache_level ? ` (cache ${d.cache_level})` : ""}${ms}`;
    events.append(el("li", { class: "event tool-result", "data-error": d.error ? "true" : null },
      el("strong", { text: "Result" }), " ", el("span", { text: head }),
      d.content ? el("code", { text: String(d.content).slice(0, 400) }) : null));
  }
  $("steps-summary").textContent = `${state.agent.ended} steps done · ${state.agent.toolCalls} tool calls`;
}

// The audit report in a sandboxed frame: the server's HTML never runs in the page itself.
async function openAudit(queryId) {
  const r = await fetch(`/api/queries/${encodeURIComponent(queryId)}/audit?format=html`, { headers: headers() });
  if (!r.ok) { showError("ask-error", await readJson(r)); return; }
  $("audit-view-meta").textContent = `query ${queryId}`;
  $("audit-frame").srcdoc = await r.text();
  $("audit-view").showModal();
}

function showAuditLink(queryId) {
  const link = $("audit-link");
  link.hidden = false;
  link.dataset.query = queryId;
  link.onclick = () => openAudit(queryId);
}

async function ask(event) {
  event.preventDefault();
  const message = $("question").value.trim();
  const collection = $("collection").value.trim() || "default";
  if (!message || $("ask-button").disabled) return;
  // A conversation belongs to one collection: asking another one starts a new conversation.
  if (state.conversationId && state.conversationCollection !== collection) setConversation(null, null);
  const body = queryBody(message, collection);
  const agent = body.mode === "agent";
  showError("ask-error", null);
  $("ask-button").disabled = true;
  $("stop-button").hidden = false;
  $("ask-status").textContent = "thinking…";
  if (agent) {
    $("steps").replaceChildren();
    $("steps-summary").textContent = "planning…";
    $("audit-link").hidden = true;
    state.agent = { ended: 0, toolCalls: 0 };
  }
  controller = new AbortController();
  let turn = null;
  let text = "";
  let final = null;
  let failure = null;
  try {
    const h = headers({ "Content-Type": "application/json", Accept: "text/event-stream" });
    const response = await fetch("/api/chat/query", { method: "POST", headers: h, body: JSON.stringify(body),
                                                      signal: controller.signal });
    if (!response.ok) { failure = await readJson(response); return; }
    turn = newTurn(message);
    const textNode = document.createTextNode("");
    turn.answer.append(textNode);
    $("question").value = "";
    await readEvents(response, (name, data) => {
      if (name === "token") {
        text += data.text;
        textNode.data = text;
        if (state.firstToken === null) {
          const received = performance.now();
          requestAnimationFrame(() => { state.firstToken = { received, painted: performance.now() }; });
        }
      } else if (name === "done") final = data;
      else if (name === "error") failure = { ok: false, status: 200, body: data };
      else if (["step", "tool_call", "tool_result"].includes(name) && state.agent) showStepEvent(name, data);
    });
  } catch (err) {
    if (err.name !== "AbortError") failure = problem("page_error", String(err));
  } finally {
    const stopped = controller.signal.aborted;
    controller = null;
    $("ask-button").disabled = false;
    $("stop-button").hidden = true;
    $("ask-status").textContent = stopped ? "stopped" : "";
    if (failure) {
      state.errors += 1;
      if (agent && failure.status === 422 && /mode/.test(failure.body.message)) disableAgent();
      showError("ask-error", failure);
    }
    if (turn && final) {
      state.answers += 1;
      setConversation(final.conversation_id, collection);
      finishTurn(turn, final, {});
      const queryId = final.agent && final.agent.query_id;
      if (queryId) showAuditLink(queryId);
      loadConversations();
    } else if (turn) {
      finishTurn(turn, { answer: text, citations: [] }, { stored: true, stopped });
    }
  }
}

// -- agent mode: offered only when the server's schema has it ------------------------------------

function disableAgent() {
  agentSupported = false;
  $("mode").value = "rag";
  $("mode").querySelector("option[value=agent]").disabled = true;
  $("mode-note").textContent = "Agent mode is not available on this server.";
  $("mode-note").hidden = false;
  $("steps-panel").hidden = true;
}

async function agentAvailable() {
  if (agentSupported !== null) return agentSupported;
  const r = await api("GET", "/openapi.json");
  // Keys in use: the schema is for admins. Offer the mode; a 422 on `mode` takes it back.
  if (r.status === 401 || r.status === 403) return true;
  const op = r.ok && r.body.paths && r.body.paths["/api/chat/query"] && r.body.paths["/api/chat/query"].post;
  let schema = op && op.requestBody ? op.requestBody.content["application/json"].schema : null;
  if (schema && schema.$ref) schema = r.body.components.schemas[schema.$ref.split("/").pop()];
  const props = (schema && schema.properties) || {};
  const mode = props.mode || {};
  const values = mode.enum || (mode.anyOf || []).flatMap((x) => x.enum || (x.const ? [x.const] : []))
    .concat(mode.const ? [mode.const] : []);
  agentSupported = values.includes("agent");
  return agentSupported;
}

async function modeChanged() {
  if ($("mode").value !== "agent") { $("steps-panel").hidden = true; $("mode-note").hidden = true; return; }
  if (!(await agentAvailable())) { disableAgent(); return; }
  $("steps-panel").hidden = false;
  $("mode-note").hidden = true;
}

// -- wiring ------------------------------------------------------------------------------------

$("ask").addEventListener("submit", ask);
$("question").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) ask(e);  // Shift+Enter: a new line
});
$("stop-button").addEventListener("click", () => { if (controller) controller.abort(); });
$("new-conversation").addEventListener("click", newConversation);
$("mode").addEventListener("change", modeChanged);
$("passage-close").addEventListener("click", () => $("passage").close());
$("audit-close").addEventListener("click", () => $("audit-view").close());
document.addEventListener("metis:collections", (e) => fillMoreCollections(e.detail));
onShow.chat = loadConversations;
document.addEventListener("metis:signed-in", loadConversations);
window.Metis.openConversation = openConversation;
})();
