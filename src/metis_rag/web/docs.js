// Documents: collections with their counts, a table paginated and filtered by the server,
// uploads by drag and drop (one request per file, so each file has its own progress and error),
// replace, delete, retry a failed ingestion, and a document's chunks.
"use strict";
(() => {
const { state, $, el, api, headers, readJson, problem, errorText, showError, sleep, fmtBytes,
        fmtDate, onShow, loadCollections } = window.Metis;
const POLL_MS = 300;
const POLL_FAILURES_TOLERATED = 5;
const PARALLEL_UPLOADS = 3;
const FINISHED = new Set(["completed", "failed", "cancelled"]);
const table = { collection: null, offset: 0, limit: 25, total: 0, loaded: 0, seq: 0 };
window.metisDocs = table;

// -- collections -------------------------------------------------------------------------------

function renderCollections(items) {
  $("collection-list").replaceChildren(
    el("li", {}, el("button", { type: "button", class: "collection", "data-name": "",
      "aria-pressed": String(table.collection === null), text: "All collections",
      onclick: () => selectCollection(null) })),
    ...items.map((c) => el("li", {}, el("button", {
      type: "button", class: "collection", "data-name": c.name,
      "aria-pressed": String(table.collection === c.name), onclick: () => selectCollection(c.name) },
      el("span", { class: "name", text: c.name }),
      el("span", { class: "count muted small",
                   text: `${c.documents} docs · ${c.chunks} chunks · ${fmtBytes(c.size_bytes)}` })))));
  $("collections-empty").hidden = items.length > 0;
}

async function selectCollection(name) {
  table.collection = name;
  table.offset = 0;
  if (name) $("upload-collection").value = name;
  for (const b of $("collection-list").querySelectorAll("button"))
    b.setAttribute("aria-pressed", String((b.dataset.name || null) === name));
  await loadDocuments();  // the rows first; the filters' values after
  loadFacets();
}

// -- facets and the table ----------------------------------------------------------------------

function fillSelect(id, values, label) {
  const select = $(id);
  const keep = select.value;
  select.replaceChildren(el("option", { value: "", text: "any" }),
    ...values.map((f) => el("option", { value: f.value, text: `${label(f.value)} (${f.documents})` })));
  select.value = values.some((f) => f.value === keep) ? keep : "";
}

async function loadFacets() {
  const q = table.collection ? `?collection=${encodeURIComponent(table.collection)}` : "";
  const r = await api("GET", `/api/facets${q}`);
  if (!r.ok) return;
  fillSelect("doc-tag", r.body.tags, (v) => v);
  fillSelect("doc-folder", r.body.folders, (v) => v || "(top level)");
  fillSelect("doc-status", r.body.statuses, (v) => v);
  fillSelect("doc-type", r.body.types, (v) => v);
}

function docQuery() {
  const p = new URLSearchParams({ limit: String(table.limit), offset: String(table.offset) });
  if (table.collection) p.set("collection", table.collection);
  const pairs = [["q", "doc-search"], ["tag", "doc-tag"], ["status", "doc-status"], ["type", "doc-type"]];
  for (const [name, id] of pairs) if ($(id).value.trim()) p.set(name, $(id).value.trim());
  if ($("doc-folder").selectedIndex > 0) p.set("folder", $("doc-folder").value);
  return p.toString();
}

function summaryOf(d) {
  const a = d.analysis;
  if (a && typeof a === "object" && a.summary) return String(a.summary);
  return typeof d.summary === "string" ? d.summary : "";
}

// From the document analysis, when the server has it: kind, language, topics.
function analysisOf(d) {
  // The analysis runs after the document is searchable: say so rather than show nothing.
  if (d.analysis_status === "pending") return "analysis pending…";
  if (d.analysis_status === "failed") return "analysis failed";
  const parts = [];
  if (d.doc_type) parts.push(d.doc_type);
  if (d.language && d.language !== "und") parts.push(d.language);
  if (Array.isArray(d.topics) && d.topics.length) parts.push(`topics: ${d.topics.slice(0, 5).join(", ")}`);
  return parts.join(" · ");
}

function docRow(d) {
  const summary = summaryOf(d);
  const analysis = analysisOf(d);
  return el("tr", { "data-id": d.id, "data-status": d.status },
    el("td", {},
      el("button", { type: "button", class: "link doc-name", text: d.folder ? `${d.folder}/${d.filename}` : d.filename,
                     onclick: () => openDocument(d.id) }),
      d.title && d.title !== d.filename ? el("span", { class: "muted small block", text: d.title }) : null,
      analysis ? el("span", { class: "analysis muted small block", text: analysis }) : null,
      summary ? el("span", { class: "summary small block", text: summary }) : null,
      d.error ? el("span", { class: "error-text small block", text: d.error }) : null),
    el("td", { class: "status", text: d.status }),
    el("td", { text: d.mime }),
    el("td", { class: "num", text: fmtBytes(d.size_bytes) }),
    el("td", { class: "num", text: String(d.chunk_count) }),
    el("td", {}, ...d.tags.map((t) => el("span", { class: "tag", text: t }))),
    el("td", { text: d.folder }),
    el("td", { text: fmtDate(d.created_at) }),
    el("td", { class: "actions" },
      el("button", { type: "button", class: "link small replace", text: "Replace",
                     "aria-label": `Replace ${d.filename}`, onclick: () => replaceDocument(d) }),
      el("button", { type: "button", class: "link small delete", text: "Delete",
                     "aria-label": `Delete ${d.filename}`, onclick: () => deleteDocument(d) })));
}

async function loadDocuments() {
  const seq = ++table.seq;  // a slower older answer must not overwrite a newer one
  const started = performance.now();
  const r = await api("GET", `/api/documents?${docQuery()}`);
  if (seq !== table.seq) return;
  if (!r.ok) { showError("docs-error", r); return; }
  showError("docs-error", null);
  table.total = r.body.total;
  $("documents").tBodies[0].replaceChildren(...r.body.items.map(docRow));
  const last = table.offset + r.body.items.length;
  $("page-info").textContent = table.total ? `${table.offset + 1}–${last} of ${table.total}` : "no documents";
  $("documents-caption").textContent = `Documents${table.collection ? ` in ${table.collection}` : ""}`;
  $("prev-page").disabled = table.offset === 0;
  $("next-page").disabled = last >= table.total;
  // Measured to the next frame: the rows are laid out and about to be painted (bench_web.py).
  requestAnimationFrame(() => { table.lastPageMs = performance.now() - started; table.loaded += 1; });
}

// Ingestions that failed (since before this page was opened, too), each with its Retry.
async function loadFailed() {
  const r = await api("GET", "/api/tasks?status=failed&type=ingest_document&limit=20");
  if (!r.ok) return;
  $("failed-tasks").replaceChildren(...r.body.items.map((task) => {
    const p = task.params || {};
    const row = el("li", { "data-status": "failed", "data-task": task.id },
      el("span", { class: "filename", text: p.filename || task.name }),
      el("span", { class: "muted small", text: p.collection || "" }),
      el("button", { type: "button", class: "link small retry", text: "Retry",
                     "aria-label": `Retry ${p.filename || task.name}` }),
      el("span", { class: "status", text: finalText(task, p.collection) }));
    row.querySelector(".retry").onclick = async () => {
      const x = await api("POST", `/api/tasks/${encodeURIComponent(task.id)}/retry`);
      if (!x.ok) { setRow(row, "error", errorText(x)); return; }
      row.querySelector(".retry").hidden = true;
      setRow(row, "queued", "queued again");
      await followTask(task.id, row, p.collection);
    };
    return row;
  }));
  $("failed-card").hidden = r.body.items.length === 0;
}

// The rows first, the filters' values after them (as when a collection is opened).
function refresh() { loadCollections(); loadDocuments().then(loadFacets); loadFailed(); }

// -- a document and its chunks -------------------------------------------------------------------

async function openDocument(id) {
  const r = await api("GET", `/api/documents/${encodeURIComponent(id)}?chunks=true`);
  if (!r.ok) { showError("docs-error", r); return; }
  const d = r.body;
  $("doc-view-title").textContent = d.folder ? `${d.folder}/${d.filename}` : d.filename;
  $("doc-view-meta").textContent = `${d.collection} · ${d.status} · ${d.mime} · ${fmtBytes(d.size_bytes)} · ` +
    `${d.chunk_count} chunks · uploaded ${fmtDate(d.created_at)}${d.tags.length ? ` · tags ${d.tags.join(", ")}` : ""}`;
  const summary = [analysisOf(d), summaryOf(d)].filter(Boolean).join(" — ");
  $("doc-view-summary").textContent = summary;
  $("doc-view-summary").hidden = !summary;
  $("doc-view-chunks").replaceChildren(...(d.chunks || []).map((c) => {
    const at = [c.page !== null ? `page ${c.page}` : "", c.section ? `section “${c.section}”` : "",
                `${c.token_count} tokens`].filter(Boolean).join(" · ");
    return el("li", { "data-chunk": String(c.id) }, el("span", { class: "muted small", text: at }),
              el("p", { class: "chunk-text", text: c.text }));
  }));
  if (!$("doc-view").open) $("doc-view").showModal();
}

async function deleteDocument(d) {
  if (!confirm(`Delete ${d.filename}? Answers stop citing it.`)) return;
  const r = await api("DELETE", `/api/documents/${encodeURIComponent(d.id)}`);
  if (!r.ok) { showError("docs-error", r); return; }
  refresh();
}

function replaceDocument(d) {
  const input = $("replace-file");
  input.value = "";
  input.onchange = async () => {
    if (!input.files.length) return;
    const form = new FormData();
    form.append("files", input.files[0], input.files[0].name);
    if (d.tags.length) form.append("tags", d.tags.join(","));
    const r = await api("PUT", `/api/documents/${encodeURIComponent(d.id)}`, form);
    if (!r.ok) { showError("docs-error", r); return; }
    // 202 with the ingest_document task that swaps the content in: followed like an upload
    // (the old content is served until it completes; the table refreshes when it does).
    const row = uploadRow({ name: `${d.filename} (replace)` });
    setRow(row, "queued", "queued", 0);
    await followTask(r.body.id, row, d.collection);
  };
  input.click();
}

// -- uploads: one request per file, then its task --------------------------------------------------

function finalText(task, collection) {
  if (task.status === "completed") {
    const res = task.result || {};
    const n = res.chunks;
    return `${res.status || "done"}: ${n === 1 ? "1 chunk" : `${n ?? "?"} chunks`} in ${collection}`;
  }
  if (task.status === "failed" && task.error) return `failed: ${task.error.message} (${task.error.code})`;
  return task.status;
}

function uploadRow(file) {
  const row = el("li", { "data-status": "sending" },
    el("span", { class: "filename", text: file.name }),
    el("progress", { max: "100", value: "0", "aria-label": `${file.name} progress` }),
    el("span", { class: "status", text: "waiting" }),
    el("button", { type: "button", class: "link small retry", text: "Retry", hidden: "" }));
  $("uploads").prepend(row);
  state.uploads.push({ filename: file.name, row });
  return row;
}

function setRow(row, status, text, progress) {
  row.dataset.status = status;
  row.querySelector(".status").textContent = text;
  const bar = row.querySelector("progress");
  if (bar && progress !== undefined) bar.value = progress;
}

// XMLHttpRequest, not fetch: it reports the bytes sent, so a large file shows its progress.
function send(form, onProgress) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/documents");
    for (const [k, v] of Object.entries(headers())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (_) { body = null; }
      if (xhr.status >= 200 && xhr.status < 300 && body) resolve({ ok: true, status: xhr.status, body });
      else if (body && typeof body.message === "string") resolve({ ok: false, status: xhr.status, body });
      else resolve(problem(`http_${xhr.status}`, `The server answered ${xhr.status}.`, xhr.status));
    };
    xhr.onerror = () => resolve(problem("network_error", "The server could not be reached."));
    xhr.send(form);
  });
}

async function followTask(taskId, row, collection) {
  let failures = 0;
  for (;;) {
    const r = await api("GET", `/api/tasks/${encodeURIComponent(taskId)}`);
    if (r.ok) {
      failures = 0;
      const task = r.body;
      const pct = Number(task.progress) || 0;
      if (FINISHED.has(task.status)) {
        setRow(row, task.status, finalText(task, collection), task.status === "completed" ? 100 : pct);
        row.dataset.finishes = String(Number(row.dataset.finishes || 0) + 1);
        const retry = row.querySelector(".retry");
        retry.hidden = task.status === "completed";
        retry.onclick = async () => {
          const x = await api("POST", `/api/tasks/${encodeURIComponent(taskId)}/retry`);
          if (!x.ok) { setRow(row, "error", errorText(x)); return; }
          retry.hidden = true;
          setRow(row, "queued", "queued again", 0);
          await followTask(taskId, row, collection);
        };
        if (task.status === "completed") refresh();
        return;
      }
      setRow(row, task.status, `${task.status}${task.message ? `: ${task.message}` : ""} (${Math.round(pct)}%)`, pct);
    } else if (r.status === 404 || ++failures >= POLL_FAILURES_TOLERATED) {
      setRow(row, "error", errorText(r));
      return;
    }
    await sleep(POLL_MS);
  }
}

async function uploadOne(file, fields) {
  const row = uploadRow(file);
  const form = new FormData();
  form.append("files", file, file.name);
  for (const [k, v] of Object.entries(fields)) if (v) form.append(k, v);
  setRow(row, "sending", "sending (0%)", 0);
  const r = await send(form, (share) => setRow(row, "sending", `sending (${Math.round(share * 100)}%)`));
  if (!r.ok) {  // this file alone is refused: its message is on its row
    setRow(row, "rejected", errorText(r), 100);
    return;
  }
  const result = r.body.results[0];
  if (result.task_id) { setRow(row, "queued", "queued", 0); await followTask(result.task_id, row, r.body.collection); }
  else if (result.status === "duplicate") {
    const n = result.chunks;
    setRow(row, "duplicate", `already stored in ${r.body.collection} (${n === 1 ? "1 chunk" : `${n} chunks`})`, 100);
  } else if (result.error) setRow(row, result.status, `${result.status}: ${result.error.message} (${result.error.code})`, 100);
}

async function uploadFiles(files) {
  if (!files.length) return;
  showError("upload-error", null);
  const fields = { collection: $("upload-collection").value.trim() || "default",
                   tags: $("upload-tags").value.trim(), folder: $("upload-folder").value.trim() };
  const queue = [...files];
  const worker = async () => { while (queue.length) await uploadOne(queue.shift(), fields); };
  await Promise.all(Array.from({ length: Math.min(PARALLEL_UPLOADS, queue.length) }, worker));
  refresh();
}

// -- wiring ------------------------------------------------------------------------------------

$("upload").addEventListener("submit", (e) => {
  e.preventDefault();
  const files = [...$("files").files];
  $("files").value = "";
  if (!files.length) { showError("upload-error", problem("no_files", "Choose or drop files first.")); return; }
  uploadFiles(files);
});
$("files").addEventListener("change", () => { if ($("files").files.length) $("upload").requestSubmit(); });
const zone = $("dropzone");
zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
zone.addEventListener("dragleave", () => zone.classList.remove("over"));
zone.addEventListener("drop", (e) => {
  e.preventDefault();
  zone.classList.remove("over");
  uploadFiles([...e.dataTransfer.files]);
});
zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("files").click(); } });
let typing = null;
$("doc-search").addEventListener("input", () => {
  clearTimeout(typing);
  typing = setTimeout(() => { table.offset = 0; loadDocuments(); }, 200);
});
for (const id of ["doc-tag", "doc-folder", "doc-status", "doc-type"])
  $(id).addEventListener("change", () => { table.offset = 0; loadDocuments(); });
$("doc-filters").addEventListener("submit", (e) => { e.preventDefault(); table.offset = 0; loadDocuments(); });
$("prev-page").addEventListener("click", () => { table.offset = Math.max(0, table.offset - table.limit); loadDocuments(); });
$("next-page").addEventListener("click", () => { table.offset += table.limit; loadDocuments(); });
$("doc-view-close").addEventListener("click", () => $("doc-view").close());
document.addEventListener("metis:collections", (e) => renderCollections(e.detail));
onShow.docs = refresh;
window.Metis.openDocument = async (id) => { window.Metis.showTab("docs"); await openDocument(id); };
window.Metis.loadDocuments = loadDocuments;
})();
