// layercut dashboard: one ES module, no dependencies, no build step.
//
// Auth: the API key is kept in sessionStorage (or localStorage with "Remember") and sent as
// `Authorization: Bearer <key>` on every /v1 request; a 401 forgets it and asks again.
// Updates: the pipeline and job lists are polled every 1.5 s while anything is queued, running or cancelling,
// every 10 s otherwise (and while the tab is hidden); network errors back off up to 15 s.
// Safety: every value that comes from the API reaches the DOM through textContent or an attribute; the page
// never parses a string as HTML.

const API = new URL("v1/", document.baseURI);      // /ui → /v1/ (and /prefix/ui → /prefix/v1/ behind a proxy)
const CONFIG_URL = new URL("ui/config.json", document.baseURI);
const STORAGE_KEY = "layercut.apiKey";
const ACTIVE = new Set(["queued", "running", "cancelling"]);
const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const FAST_MS = 1500;
const IDLE_MS = 10000;
const MAX_BACKOFF_MS = 15000;
const DATASETS_EVERY_MS = 30000;
const PIPELINE_LIMIT = 20;
const JOB_LIMIT = 50;
const FIELD_LABELS = {
  "data.dataset_id": "dataset", "data.image_size": "image size", "train.epochs": "epochs", arch: "architecture",
  stop_after: "stop after analyze", "truncate.cut": "cut", "select.max_drop": "max accuracy drop",
};

const $ = (id) => document.getElementById(id);

const state = {
  key: null,
  generation: 0,          // bumped on sign-in/out: answers to older requests are dropped
  config: null,
  datasets: [],
  datasetsAt: 0,
  pipelines: [],
  jobs: [],
  timer: null,
  inFlight: false,
  again: false,
  failures: 0,
  files: new Map(),       // job id → {loading, artifacts, error, status}: the open "Files" panels
  jobRows: new Map(),     // job id → row widgets
  pipelineCards: new Map(),
  submit: { body: null, key: null },
};

class AuthError extends Error {}

class ApiError extends Error {
  constructor(status, detail) {
    super(formatDetail(detail) || `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

// --- small helpers -----------------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function setText(node, text) {
  const value = text === null || text === undefined ? "" : String(text);
  if (node.textContent !== value) node.textContent = value;
}

function show(node, visible) {
  node.hidden = !visible;
}

function randomKey(prefix) {
  // crypto.getRandomValues works on plain http too (randomUUID needs a secure context).
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function parseTime(value) {
  if (!value) return null;
  // SQLite gives naive UTC times ("2025-01-01T12:00:00"); Postgres adds an offset.
  const text = /[zZ]|[+-]\d\d:?\d\d$/.test(value) ? value : `${value}Z`;
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? null : date;
}

function pad(n) {
  return String(n).padStart(2, "0");
}

function formatTime(value) {
  const date = parseTime(value);
  if (!date) return "—";
  const now = new Date();
  const clock = `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
  if (date.toDateString() === now.toDateString()) return clock;
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${clock.slice(0, 5)}`;
}

function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds) || seconds < 0) return "—";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${pad(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${pad(Math.floor((s % 3600) / 60))} min`;
}

function formatBytes(n) {
  if (!Number.isFinite(n)) return "";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

function shortId(id) {
  return String(id || "").slice(0, 8);
}

function formatDetail(detail) {
  if (detail === null || detail === undefined) return "";
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((e) => `${locName(e.loc)}: ${e.msg}`).join("; ");
  }
  try { return JSON.stringify(detail); } catch { return String(detail); }
}

function locName(loc) {
  const parts = (Array.isArray(loc) ? loc : []).filter((p, i) => !(i === 0 && ["body", "query", "header", "path"].includes(p)));
  return parts.join(".") || "request";
}

let noticeTimer = null;
function notice(message, kind = "info") {
  const box = $("notice");
  box.className = `notice ${kind}`;
  box.textContent = message;
  show(box, true);
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => show(box, false), kind === "error" ? 12000 : 6000);
}

// --- the API -----------------------------------------------------------------------------------------

async function api(path, { method = "GET", body, headers = {}, key = state.key, raw = false } = {}) {
  const init = { method, headers: { Authorization: `Bearer ${key}`, ...headers }, cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const generation = state.generation;
  const response = await fetch(new URL(path, API), init);
  if (response.status === 401) {
    if (key === state.key && generation === state.generation) signOut("Unknown or revoked key: the server refused it. Enter a valid API key.", true);
    throw new AuthError("unknown or revoked key");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail ?? detail; } catch { /* not JSON */ }
    throw new ApiError(response.status, detail);
  }
  if (raw) return response;
  return response.status === 204 ? null : response.json();
}

async function loadConfig() {
  const response = await fetch(CONFIG_URL, { cache: "no-cache" });
  if (!response.ok) throw new Error(`dashboard configuration: HTTP ${response.status}`);
  state.config = await response.json();
  const arch = $("arch");
  arch.replaceChildren(...state.config.architectures.map((name) => el("option", { value: name, text: name })));
  arch.value = state.config.default_architecture;
  const builtin = $("builtin");
  builtin.replaceChildren(...state.config.builtins.map((name) => el("option", { value: name, text: name })));
  builtin.value = state.config.builtins.includes("textures") ? "textures" : state.config.builtins[0];
  const size = $("image-size");
  size.value = state.config.image_size.default ?? 64;
  if (state.config.image_size.min != null) size.min = state.config.image_size.min;
  if (state.config.image_size.max != null) size.max = state.config.image_size.max;
  const epochs = $("epochs");
  epochs.value = state.config.epochs.default ?? 5;
  if (state.config.epochs.min != null) epochs.min = state.config.epochs.min;
  if (state.config.epochs.max != null) epochs.max = state.config.epochs.max;
  const drop = $("max-drop");
  drop.value = state.config.max_drop.default ?? 1;
  if (state.config.max_drop.min != null) drop.min = state.config.max_drop.min;
  if (state.config.max_drop.max != null) drop.max = state.config.max_drop.max;
  $("cut").value = "auto";
  onCutChange();
}

function onCutChange() {
  // The budget only applies to the auto cut; the knee ignores it.
  $("max-drop").disabled = $("cut").value !== "auto";
}

// --- sign in / out -----------------------------------------------------------------------------------

function storedKey() {
  return sessionStorage.getItem(STORAGE_KEY) || localStorage.getItem(STORAGE_KEY);
}

function forgetKey() {
  sessionStorage.removeItem(STORAGE_KEY);
  localStorage.removeItem(STORAGE_KEY);
}

function showLogin(message, isError) {
  show($("app-view"), false);
  show($("session"), false);
  show($("login-view"), true);
  const box = $("login-error");
  box.className = isError ? "form-error" : "form-info";
  box.textContent = message || "";
  show(box, Boolean(message));
  const input = $("api-key");
  input.value = "";
  input.focus();
}

function signOut(message, isError = false) {
  state.generation += 1;
  state.key = null;
  forgetKey();
  clearTimeout(state.timer);
  state.timer = null;
  state.pipelines = [];
  state.jobs = [];
  state.datasets = [];
  state.files.clear();
  state.jobRows.clear();
  state.pipelineCards.clear();
  $("jobs").replaceChildren();
  $("pipelines").replaceChildren();
  $("datasets-list").replaceChildren();
  showLogin(message, isError);
}

async function onLogin(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  const error = $("login-error");
  if (!key) {
    error.className = "form-error";
    error.textContent = "Enter an API key.";
    show(error, true);
    return;
  }
  const button = $("login-submit");
  button.disabled = true;
  try {
    await api("datasets?limit=1", { key });
  } catch (exc) {
    error.className = "form-error";
    error.textContent = exc instanceof AuthError
      ? "Unknown or revoked key: check it and try again."
      : `The server could not be reached (${exc.message}); try again.`;
    show(error, true);
    return;
  } finally {
    button.disabled = false;
  }
  forgetKey();
  ($("remember").checked ? localStorage : sessionStorage).setItem(STORAGE_KEY, key);
  start(key);
}

function start(key) {
  state.key = key;
  state.generation += 1;
  state.failures = 0;
  state.datasetsAt = 0;
  show($("login-view"), false);
  show($("app-view"), true);
  show($("session"), true);
  setText($("key-label"), `key ${key.slice(0, 10)}…`);
  setLive("connecting…", "wait");
  refreshNow();
}

// --- polling -----------------------------------------------------------------------------------------

function anythingActive() {
  return state.jobs.some((j) => ACTIVE.has(j.status)) || state.pipelines.some((p) => !FINAL.has(p.status));
}

function schedule() {
  clearTimeout(state.timer);
  if (!state.key) return;
  let delay = anythingActive() && !document.hidden ? FAST_MS : IDLE_MS;
  if (state.failures) delay = Math.min(MAX_BACKOFF_MS, FAST_MS * 2 ** state.failures);
  state.timer = setTimeout(refreshNow, delay);
}

function refreshNow() {
  if (state.inFlight) { state.again = true; return; }
  poll();
}

async function poll() {
  if (!state.key) return;
  state.inFlight = true;
  const generation = state.generation;
  try {
    const needDatasets = Date.now() - state.datasetsAt > DATASETS_EVERY_MS;
    const [pipelines, jobs, datasets] = await Promise.all([
      api(`pipelines?limit=${PIPELINE_LIMIT}`),
      api(`jobs?limit=${JOB_LIMIT}`),
      needDatasets ? api("datasets?limit=200") : Promise.resolve(null),
    ]);
    if (generation !== state.generation) return;
    if (datasets) {
      state.datasets = datasets.items;
      state.datasetsAt = Date.now();
      renderDatasets();
    }
    state.pipelines = pipelines.items;
    state.jobs = jobs.items;
    renderPipelines(pipelines.next_cursor);
    renderJobs();
    refreshOpenFiles();
    state.failures = 0;
    const now = new Date();
    setLive(`${anythingActive() ? "live" : "idle"} · updated ${pad(now.getHours())}:${pad(now.getMinutes())}:${pad(now.getSeconds())}`,
      anythingActive() ? "live" : "idle");
  } catch (exc) {
    if (exc instanceof AuthError || generation !== state.generation) return;
    state.failures += 1;
    setLive(`cannot reach the API (${exc.message}); retrying`, "error");
  } finally {
    state.inFlight = false;
    if (generation === state.generation && state.key) {
      if (state.again) { state.again = false; refreshNow(); } else schedule();
    }
  }
}

function setLive(text, kind) {
  setText($("live-text"), text);
  $("live").dataset.state = kind;
}

// --- datasets ----------------------------------------------------------------------------------------

function datasetName(id) {
  const found = state.datasets.find((d) => d.id === id);
  return found ? found.name : `dataset ${shortId(id)}`;
}

function renderDatasets() {
  const select = $("dataset");
  const previous = select.value;
  // Two datasets may share a name (an upload and a folder, say): the short id tells them apart.
  const options = state.datasets.map((d) => el("option", {
    value: d.id,
    text: `${d.name} · ${d.classes.length} classes · ${d.total_images} images · ${shortId(d.id)}`,
  }));
  if (!options.length) options.push(el("option", { value: "", text: "no datasets registered yet" }));
  select.replaceChildren(...options);
  if (state.datasets.some((d) => d.id === previous)) select.value = previous;
  select.disabled = !state.datasets.length;
  $("pipeline-submit").disabled = !state.datasets.length;

  const list = $("datasets-list");
  list.replaceChildren(...state.datasets.map((d) => el("li", { dataset: { datasetId: d.id } },
    el("span", { class: "ds-name", text: d.name }),
    el("span", { class: "muted small", text: `${d.kind} · ${d.classes.length} classes · ${d.total_images} images` }),
    el("span", {
      class: "muted small ds-id",
      text: `${shortId(d.id)} · added ${parseTime(d.created_at)?.toLocaleString() ?? d.created_at}`,
      title: d.id,
    }))));
  const none = !state.datasets.length;
  show($("datasets-empty"), none);
  if (none) $("register-box").open = true;
}

async function onRegister(event) {
  event.preventDefault();
  const builtin = $("builtin").value;
  const error = $("register-error");
  show(error, false);
  const button = $("register-submit");
  button.disabled = true;
  try {
    const dataset = await api("datasets", {
      method: "POST", body: { kind: "builtin", builtin }, headers: { "Idempotency-Key": randomKey("ui-dataset-") },
    });
    state.datasets = [dataset, ...state.datasets.filter((d) => d.id !== dataset.id)];
    state.datasetsAt = Date.now();
    renderDatasets();
    $("dataset").value = dataset.id;
    $("register-box").open = false;
    notice(`Registered dataset ${dataset.name} (${dataset.total_images} images, ${dataset.classes.length} classes).`, "ok");
  } catch (exc) {
    if (exc instanceof AuthError) return;
    error.textContent = `Could not register ${builtin}: ${exc.message}`;
    show(error, true);
  } finally {
    button.disabled = false;
  }
}

// --- the pipeline form -------------------------------------------------------------------------------

function numberValue(input) {
  const text = input.value.trim();
  if (text === "") return undefined;          // the server's default
  const n = Number(text);
  return Number.isFinite(n) ? n : text;       // not a number: send it, the 422 names the field
}

function clearFormErrors() {
  show($("pipeline-errors"), false);
  $("pipeline-errors").replaceChildren();
  for (const field of document.querySelectorAll("#pipeline-form .field")) {
    field.classList.remove("invalid");
    const p = field.querySelector(".field-error");
    p.textContent = "";
    show(p, false);
  }
}

function fieldFor(loc) {
  // The longest form field whose path starts the error's location (body.data.image_size → data.image_size).
  const path = locName(loc);
  let best = null;
  for (const field of document.querySelectorAll("#pipeline-form .field")) {
    const name = field.dataset.field;
    if ((path === name || path.startsWith(`${name}.`)) && (!best || name.length > best.dataset.field.length)) best = field;
  }
  if (!best && (path === "data" || path.startsWith("data."))) best = document.querySelector('#pipeline-form .field[data-field="data.dataset_id"]');
  return best;
}

function showFormErrors(detail) {
  const box = $("pipeline-errors");
  const items = [];
  if (Array.isArray(detail)) {
    for (const error of detail) {
      const path = locName(error.loc);
      const field = fieldFor(error.loc);
      const label = field ? FIELD_LABELS[field.dataset.field] || path : path;
      items.push(el("li", {}, el("b", { text: label }), ` (${path}): ${error.msg}`));
      if (field) {
        field.classList.add("invalid");
        const p = field.querySelector(".field-error");
        p.textContent = p.textContent ? `${p.textContent}; ${error.msg}` : `${path}: ${error.msg}`;
        show(p, true);
      }
    }
  } else {
    items.push(el("li", { text: formatDetail(detail) }));
  }
  box.replaceChildren(el("p", { text: "The server did not accept the pipeline:" }), el("ul", {}, ...items));
  show(box, true);
}

async function onStartPipeline(event) {
  event.preventDefault();
  clearFormErrors();
  show($("pipeline-ok"), false);
  const body = {
    data: { dataset_id: $("dataset").value, image_size: numberValue($("image-size")) },
    arch: $("arch").value,
    train: { epochs: numberValue($("epochs")) },
    truncate: { cut: $("cut").value },
    ...($("cut").value === "auto" ? { select: { max_drop: numberValue($("max-drop")) } } : {}),
    stop_after: $("stop-after").checked ? "analyze" : "explain",
  };
  const text = JSON.stringify(body);
  // One Idempotency-Key per submission; resending the same form after a network error reuses it, so a POST
  // whose answer was lost cannot start a second pipeline.
  if (state.submit.body !== text) state.submit = { body: text, key: randomKey("ui-pipeline-") };
  const button = $("pipeline-submit");
  button.disabled = true;
  try {
    const pipeline = await api("pipelines", { method: "POST", body, headers: { "Idempotency-Key": state.submit.key } });
    state.submit = { body: null, key: null };
    const ok = $("pipeline-ok");
    ok.textContent = `Started pipeline ${shortId(pipeline.id)} (${pipeline.steps.length} steps).`;
    show(ok, true);
    refreshNow();
  } catch (exc) {
    if (exc instanceof AuthError) return;
    if (exc instanceof ApiError) {
      state.submit = { body: null, key: null };
      showFormErrors(exc.detail);
    } else {
      const box = $("pipeline-errors");
      box.replaceChildren(el("p", { text: `The request did not get through (${exc.message}). Submit again: it will not start a second pipeline.` }));
      show(box, true);
    }
  } finally {
    button.disabled = !state.datasets.length;
  }
}

// --- reports and files -------------------------------------------------------------------------------

async function openReport(path, label) {
  // Open the tab now, inside the click (popup blockers allow that), then fill it once the report arrived:
  // the report needs the bearer header, so it is fetched here and shown from a blob: URL.
  const tab = window.open("", "_blank");
  if (tab) {
    tab.document.title = `${label} (loading)`;
    tab.document.body.textContent = `Loading the ${label}…`;
  }
  try {
    const response = await api(path, { raw: true, headers: { Accept: "text/html" } });
    const blob = new Blob([await response.arrayBuffer()], { type: "text/html" });
    const url = URL.createObjectURL(blob);
    setTimeout(() => URL.revokeObjectURL(url), 10 * 60 * 1000);
    if (tab && !tab.closed) tab.location.replace(url);
    else window.open(url, "_blank");
  } catch (exc) {
    if (tab && !tab.closed) tab.close();
    if (exc instanceof AuthError) return;
    notice(`No ${label} available (${exc.status ? `HTTP ${exc.status}: ` : ""}${exc.message}).`, "error");
  }
}

async function download(artifact) {
  try {
    const response = await api(`artifacts/${encodeURIComponent(artifact.id)}`, { raw: true });
    const url = URL.createObjectURL(await response.blob());
    const link = el("a", { href: url, download: artifact.name || "artifact" });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60 * 1000);
  } catch (exc) {
    if (exc instanceof AuthError) return;
    notice(`Download of ${artifact.name} failed: ${exc.message}`, "error");
  }
}

async function cancel(kind, id) {
  try {
    await api(`${kind}/${encodeURIComponent(id)}/cancel`, { method: "POST" });
    notice(`Cancel requested for ${kind === "jobs" ? "job" : "pipeline"} ${shortId(id)}.`, "ok");
  } catch (exc) {
    if (exc instanceof AuthError) return;
    notice(`Could not cancel: ${exc.message}`, "error");
  }
  refreshNow();
}

async function loadFiles(jobId) {
  const entry = state.files.get(jobId);
  if (!entry) return;
  entry.loading = true;
  const generation = state.generation;
  try {
    const job = await api(`jobs/${encodeURIComponent(jobId)}`);
    if (generation !== state.generation) return;
    Object.assign(entry, { artifacts: job.artifacts, status: job.status, error: null });
  } catch (exc) {
    if (exc instanceof AuthError) return;
    entry.error = exc.message;
  } finally {
    entry.loading = false;
  }
  renderFiles(jobId);
}

function toggleFiles(jobId) {
  if (state.files.has(jobId)) {
    state.files.delete(jobId);
    const row = state.jobRows.get(jobId);
    if (row) { row.filesRow.remove(); row.filesButton.setAttribute("aria-expanded", "false"); }
    return;
  }
  state.files.set(jobId, { loading: true, artifacts: null, error: null, status: null });
  renderJobs();
  loadFiles(jobId);
}

function refreshOpenFiles() {
  // Artifacts are listed once a job ends: reload an open panel when its job's status changed.
  for (const [jobId, entry] of state.files) {
    const job = state.jobs.find((j) => j.id === jobId);
    if (job && !entry.loading && entry.status !== job.status) loadFiles(jobId);
  }
}

function renderFiles(jobId) {
  const row = state.jobRows.get(jobId);
  const entry = state.files.get(jobId);
  if (!row || !entry) return;
  const cell = row.filesCell;
  if (entry.loading && !entry.artifacts) {
    cell.replaceChildren(el("span", { class: "muted", text: "Loading files…" }));
  } else if (entry.error) {
    cell.replaceChildren(el("span", { class: "error-text", text: `Could not list files: ${entry.error}` }));
  } else if (!entry.artifacts.length) {
    cell.replaceChildren(el("span", { class: "muted", text: FINAL.has(entry.status)
      ? "This job wrote no files." : "No files yet: they are listed when the job ends." }));
  } else {
    cell.replaceChildren(el("ul", { class: "files" }, ...entry.artifacts.map((a) => el("li", { dataset: { artifactId: a.id } },
      el("button", { type: "button", class: "link", title: `sha256 ${a.sha256}`, onclick: () => download(a), text: a.name }),
      el("span", { class: "muted small", text: `${a.kind} · ${formatBytes(a.bytes)}` })))));
  }
}

// --- pipelines ---------------------------------------------------------------------------------------

function badge(status) {
  return el("span", { class: `badge s-${status}`, text: status });
}

function pipelineTitle(p) {
  const params = p.params || {};
  const parts = [];
  if (params.model_id) parts.push(`model ${shortId(params.model_id)}`);
  else parts.push(params.arch || "?");
  if (params.data && params.data.dataset_id) parts.push(datasetName(params.data.dataset_id));
  if (params.data && params.data.image_size) parts.push(`${params.data.image_size} px`);
  if (params.train && params.train.epochs) parts.push(`${params.train.epochs} epoch${params.train.epochs === 1 ? "" : "s"}`);
  if (params.stop_after === "analyze") parts.push("stops after analyze");
  else parts.push(cutSummary(params));
  return parts.join(" · ");
}

function cutSummary(params) {
  const cut = (params.truncate && params.truncate.cut) || "auto";
  if (cut === "knee") return "cut at the knee";
  if (cut !== "auto") return `cut at ${cut}`;
  const budget = params.select || {};
  if (budget.min_accuracy != null) return `auto cut, validation ≥ ${budget.min_accuracy}%`;
  const drop = budget.max_drop ?? 1;
  return `auto cut, ≤ ${drop} pt${drop === 1 ? "" : "s"} drop`;
}

function makePipelineCard(p) {
  const card = {};
  card.status = el("span", { class: "badge" });
  card.title = el("span", { class: "p-title" });
  card.meta = el("span", { class: "muted small" });
  card.steps = el("ol", { class: "steps" });
  card.error = el("p", { class: "error-text small", hidden: true });
  card.report = el("button", { type: "button", class: "small-btn report-btn", text: "Report",
    onclick: () => openReport(`pipelines/${encodeURIComponent(p.id)}/report`, "pipeline report") });
  card.cancel = el("button", { type: "button", class: "small-btn danger cancel-btn", text: "Cancel",
    onclick: () => cancel("pipelines", p.id) });
  card.node = el("article", { class: "pipeline", dataset: { pipelineId: p.id } },
    el("div", { class: "p-head" }, card.status, card.title, el("span", { class: "spacer" }), card.meta),
    card.steps, card.error,
    el("div", { class: "p-actions" }, card.report, card.cancel));
  return card;
}

function updatePipelineCard(card, p) {
  card.node.dataset.status = p.status;
  card.status.className = `badge s-${p.status}`;
  setText(card.status, p.status);
  setText(card.title, pipelineTitle(p));
  setText(card.meta, `${shortId(p.id)} · ${formatTime(p.created_at)}`);
  card.meta.title = `pipeline ${p.id}, created ${parseTime(p.created_at)?.toLocaleString() ?? p.created_at}`;
  card.steps.replaceChildren(...p.steps.map((s) => {
    const active = s.status === "running" || s.status === "cancelling";
    const chip = el("li", { class: `step s-${s.status}`, dataset: { kind: s.kind, status: s.status, jobId: s.id },
      title: s.error_message ? `${s.error_code || "error"}: ${s.error_message}` : `${s.kind}: ${s.status}` },
    el("span", { class: "step-kind", text: s.kind }),
    el("span", { class: "step-status", text: active ? `${s.status} ${Math.round(s.percent)}%` : s.status }));
    if (active) chip.style.setProperty("--pct", `${Math.max(0, Math.min(100, s.percent))}%`);
    return chip;
  }));
  const failed = p.steps.find((s) => s.status === "failed");
  setText(card.error, failed ? `${failed.kind} failed${failed.error_code ? ` (${failed.error_code})` : ""}: ${failed.error_message || "no message"}` : "");
  show(card.error, Boolean(failed));
  // A pipeline's report exists from the start: it shows the steps finished so far.
  show(card.report, true);
  show(card.cancel, !FINAL.has(p.status) && p.status !== "cancelling");
}

function renderPipelines(nextCursor) {
  const container = $("pipelines");
  const seen = new Set();
  const nodes = [];
  for (const p of state.pipelines) {
    let card = state.pipelineCards.get(p.id);
    if (!card) { card = makePipelineCard(p); state.pipelineCards.set(p.id, card); }
    updatePipelineCard(card, p);
    seen.add(p.id);
    nodes.push(card.node);
  }
  for (const id of [...state.pipelineCards.keys()]) if (!seen.has(id)) { state.pipelineCards.get(id).node.remove(); state.pipelineCards.delete(id); }
  reorder(container, nodes);
  show($("pipelines-empty"), !state.pipelines.length);
  const running = state.pipelines.filter((p) => !FINAL.has(p.status)).length;
  setText($("pipelines-count"), state.pipelines.length
    ? `${nextCursor ? `newest ${state.pipelines.length}` : state.pipelines.length} · ${running} in progress` : "");
}

function reorder(container, nodes) {
  // Move only what is out of place, so a row under the pointer is not detached on every update.
  let cursor = container.firstChild;
  for (const node of nodes) {
    if (node === cursor) { cursor = cursor.nextSibling; continue; }
    container.insertBefore(node, cursor);
  }
  while (cursor) { const next = cursor.nextSibling; cursor.remove(); cursor = next; }
}

// --- jobs --------------------------------------------------------------------------------------------

function makeJobRow(job) {
  const row = {};
  row.kind = el("span", { class: "j-kind" });
  row.sub = el("span", { class: "muted small j-sub" });
  row.status = el("span", { class: "badge" });
  row.stage = el("span", { class: "j-stage" });
  row.message = el("span", { class: "muted small j-message" });
  row.bar = el("span", { class: "bar-fill" });
  row.barTrack = el("span", { class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" }, row.bar);
  row.percent = el("span", { class: "pct" });
  row.eta = el("td", { class: "eta" });
  row.created = el("td", { class: "created" });
  row.report = el("button", { type: "button", class: "small-btn report-btn", text: "Report",
    onclick: () => openReport(`jobs/${encodeURIComponent(job.id)}/report`, `${job.kind} report`) });
  row.filesButton = el("button", { type: "button", class: "small-btn files-btn", text: "Files", "aria-expanded": "false",
    onclick: () => toggleFiles(job.id) });
  row.cancel = el("button", { type: "button", class: "small-btn danger cancel-btn", text: "Cancel",
    onclick: () => cancel("jobs", job.id) });
  row.tr = el("tr", { class: "job", dataset: { jobId: job.id } },
    el("td", {}, row.kind, el("br"), row.sub),
    el("td", {}, row.status),
    el("td", {}, row.stage, el("br"), row.message),
    el("td", { class: "progress-col" }, el("span", { class: "progress" }, row.barTrack, row.percent)),
    row.eta, row.created,
    el("td", { class: "actions-col" }, el("span", { class: "actions" }, row.report, row.filesButton, row.cancel)));
  row.filesCell = el("td", { colspan: "7" });
  row.filesRow = el("tr", { class: "files-row", dataset: { filesFor: job.id } }, row.filesCell);
  return row;
}

function updateJobRow(row, job) {
  row.tr.dataset.status = job.status;
  setText(row.kind, job.kind);
  setText(row.sub, job.pipeline_id ? `pipeline ${shortId(job.pipeline_id)} · step ${(job.step ?? 0) + 1}` : shortId(job.id));
  row.sub.title = `job ${job.id}`;
  row.status.className = `badge s-${job.status}`;
  setText(row.status, job.status);
  setText(row.stage, job.stage || "—");
  const message = job.error ? `${job.error.code || "error"}: ${job.error.message || ""}` : job.message || "";
  setText(row.message, message);
  row.message.title = message;
  row.message.classList.toggle("error-text", Boolean(job.error));
  const percent = Math.max(0, Math.min(100, Number(job.percent) || 0));
  row.bar.style.width = `${percent}%`;
  row.barTrack.setAttribute("aria-valuenow", String(percent));
  row.barTrack.classList.toggle("indeterminate", job.status === "running" && percent === 0);
  row.barTrack.dataset.status = job.status;
  setText(row.percent, `${percent.toFixed(percent % 1 ? 1 : 0)}%`);
  setText(row.eta, ACTIVE.has(job.status) ? formatDuration(job.eta_seconds) : "—");
  setText(row.created, formatTime(job.created_at));
  row.created.title = parseTime(job.created_at)?.toLocaleString() ?? "";
  show(row.report, job.status !== "queued");
  show(row.filesButton, job.status !== "queued" || state.files.has(job.id));
  show(row.cancel, job.status === "queued" || job.status === "running");
}

function renderJobs() {
  const body = $("jobs");
  const seen = new Set();
  const nodes = [];
  for (const job of state.jobs) {
    let row = state.jobRows.get(job.id);
    if (!row) { row = makeJobRow(job); state.jobRows.set(job.id, row); }
    updateJobRow(row, job);
    seen.add(job.id);
    nodes.push(row.tr);
    const open = state.files.has(job.id);
    row.filesButton.setAttribute("aria-expanded", String(open));
    if (open) { nodes.push(row.filesRow); renderFiles(job.id); }
  }
  for (const id of [...state.jobRows.keys()]) if (!seen.has(id)) state.jobRows.delete(id);
  for (const id of [...state.files.keys()]) if (!seen.has(id)) state.files.delete(id);
  reorder(body, nodes);
  show($("jobs-table"), state.jobs.length > 0);
  show($("jobs-empty"), !state.jobs.length);
  const active = state.jobs.filter((j) => ACTIVE.has(j.status)).length;
  setText($("jobs-count"), state.jobs.length
    ? `${state.jobs.length === JOB_LIMIT ? `newest ${JOB_LIMIT}` : state.jobs.length} · ${active} queued or running` : "");
}

// --- start -------------------------------------------------------------------------------------------

async function main() {
  $("login-form").addEventListener("submit", onLogin);
  $("pipeline-form").addEventListener("submit", onStartPipeline);
  $("register-form").addEventListener("submit", onRegister);
  $("cut").addEventListener("change", onCutChange);
  $("sign-out").addEventListener("click", () => signOut("Signed out. The key was removed from this browser."));
  $("refresh").addEventListener("click", () => { state.datasetsAt = 0; refreshNow(); });
  document.addEventListener("visibilitychange", () => { if (!document.hidden && state.key) refreshNow(); else schedule(); });
  try {
    await loadConfig();
  } catch (exc) {
    notice(`The dashboard could not load its settings: ${exc.message}`, "error");
  }
  const key = storedKey();
  if (key) start(key);
  else showLogin("");
}

main();
