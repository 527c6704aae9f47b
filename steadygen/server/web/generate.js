// The Generate view: the form, its checks as you type, the running job's progress from
// its SSE stream (GET /v1/jobs/{id}/events), cancel, and the finished images.

import { api, ApiError, openStream } from "./api.js";
import { $, $$, h, secs } from "./dom.js";
import { editBody, initEdit } from "./edit.js";
import { copyParams, diagnosisBlock, imagesGrid, jobTimes, paramsBody, phaseBar } from "./jobview.js";
import { PREVIEW_REQUEST, resetPreview, showPreview } from "./preview.js";

// The size rule until GET /readyz tells this server's limits (setModelDefaults).
const SIDE = { min: 256, max: 2048, multiple: 16 };
const FORM_STORE = "steadygen.form";
const ACTIVE_STORE = "steadygen.activeJob";
const LABELS = {
  prompt: "Prompt", negative_prompt: "Negative prompt", width: "Width", height: "Height",
  steps: "Steps", guidance: "Guidance", seed: "Seed", n: "Images",
  init_image: "Image", mask: "Mask", strength: "Strength", loras: "LoRA", control_image: "Control image",
};

const form = () => $("#gen-form");
let active = null; // {id, request, stream, deadline, startedAt, timer, steps}
const narrow = () => window.matchMedia("(max-width: 860px)").matches; // one column

/** Which control shows an error about this API field. */
function controlFor(field) {
  const base = String(field || "").split(/[.[]/)[0];
  if (["width", "height", "size"].includes(base)) return "size";
  return base in LABELS ? base : "_form";
}

function errorText(field, message) {
  const base = String(field || "").split(/[.[]/)[0];
  const label = LABELS[base];
  let text = message;
  if (label && !message.toLowerCase().startsWith(base)) text = `${label} ${message}`;
  else if (!label && base && !["size", "_form", "body"].includes(base)) text = `${field}: ${message}`;
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function clearErrors(only = null) {
  for (const p of $$("[data-error-for]", form())) {
    if (only && p.dataset.errorFor !== only) continue;
    p.textContent = "";
    const box = p.closest("[data-field]");
    if (box) for (const el of $$("input, textarea", box)) el.removeAttribute("aria-invalid");
  }
}

/** Show [{field, message}] next to their controls; focus the first. */
function showErrors(errors) {
  const byControl = new Map();
  for (const { field, message } of errors) {
    const key = controlFor(field);
    byControl.set(key, [...(byControl.get(key) || []), errorText(field, message)]);
  }
  let first = null;
  for (const [key, messages] of byControl) {
    const p = $(`[data-error-for="${key}"]`, form());
    p.textContent = messages.join(" ");
    const box = p.closest("[data-field]");
    if (!box) continue;
    const inputs = key === "size" && customSize() ? [$("#width"), $("#height")] : $$("input, textarea", box);
    for (const el of inputs) el.setAttribute("aria-invalid", "true");
    const target = inputs.find((el) => el.type !== "radio") || box.querySelector("input:checked") || inputs[0];
    first = first || target;
  }
  if (first) first.focus();
}

const customSize = () => form().elements.size.value === "custom";

/** The size rule, checked as you type: whole numbers, multiples of 16, within the limits. */
function sizeProblems() {
  if (!customSize()) return [];
  const out = [];
  for (const id of ["width", "height"]) {
    const el = $(`#${id}`);
    const v = Number(el.value);
    const rule = `a multiple of ${SIDE.multiple} from ${SIDE.min} to ${SIDE.max}`;
    if (el.value === "" || !Number.isInteger(v)) {
      out.push({ field: id, message: `must be a whole number, ${rule}` });
    } else if (v % SIDE.multiple || v < SIDE.min || v > SIDE.max) {
      const lo = v - (v % SIDE.multiple);
      const near = [lo, lo + SIDE.multiple].filter((x) => x >= SIDE.min && x <= SIDE.max);
      if (!near.length) near.push(v < SIDE.min ? SIDE.min : SIDE.max);
      out.push({ field: id, message: `must be ${rule} (got ${v}); try ${near.join(" or ")}` });
    }
  }
  return out;
}

function checkSize() {
  clearErrors("size");
  const problems = sizeProblems();
  if (problems.length) {
    const p = $('[data-error-for="size"]', form());
    p.textContent = problems.map((e) => errorText(e.field, e.message)).join(" ");
    for (const e of problems) $(`#${e.field}`).setAttribute("aria-invalid", "true");
  }
  return problems.length === 0;
}

function chosenSize() {
  if (customSize()) return [Number($("#width").value), Number($("#height").value)];
  return form().elements.size.value.split("x").map(Number);
}

function syncGuidance() {
  const g = Number($("#guidance").value);
  $("#negative-field").hidden = !(g > 0);
}

function syncCustom() {
  $("#custom-size").hidden = !customSize();
  if (customSize()) checkSize();
  else clearErrors("size");
}

/** The POST /v1/jobs body from the form; empty number fields are left to the server. */
function bodyFromForm() {
  const el = form().elements;
  const [width, height] = chosenSize();
  const body = { prompt: el.prompt.value, width, height, n: Number(el.n.value) };
  for (const name of ["steps", "guidance", "seed"]) {
    if (el[name].value !== "") body[name] = Number(el[name].value);
  }
  if (body.guidance > 0 && el.negative_prompt.value.trim()) body.negative_prompt = el.negative_prompt.value;
  return body;
}

/** Put a request's parameters into the form (from "Use these settings" or the last visit). */
export function applyParams(p) {
  const el = form().elements;
  el.prompt.value = p.prompt ?? "";
  const size = `${p.width}x${p.height}`;
  const preset = $$('input[name="size"]', form()).find((r) => r.value === size);
  (preset || $('input[name="size"][value="custom"]', form())).checked = true;
  $("#width").value = p.width ?? 1024;
  $("#height").value = p.height ?? 1024;
  if (p.steps !== undefined) el.steps.value = p.steps;
  if (p.guidance !== undefined) el.guidance.value = p.guidance;
  el.negative_prompt.value = p.negative_prompt || "";
  el.seed.value = p.seed ?? "";
  const n = $(`input[name="n"][value="${p.n || 1}"]`, form());
  if (n) n.checked = true;
  syncGuidance();
  syncCustom();
}

/** The server's validation limits on the inputs (from GET /readyz), so the page checks
 * what the server checks. */
function applyLimits(limits) {
  if (!limits) return;
  SIDE.min = limits.min_side;
  SIDE.max = limits.max_side;
  for (const id of ["width", "height"]) {
    $(`#${id}`).min = String(limits.min_side);
    $(`#${id}`).max = String(limits.max_side);
  }
  $("#steps").max = String(limits.max_steps);
  $("#guidance").max = String(limits.max_guidance);
  for (const radio of $$('input[name="n"]', form())) {
    radio.closest("label").hidden = Number(radio.value) > limits.max_n;
  }
}

/** The server's limits, and the model's natural size when nothing was chosen before
 * (zimage-tiny: 256 x 256). */
export function setModelDefaults(info) {
  applyLimits(info.limits);
  if (localStorage.getItem(FORM_STORE)) return;
  const side = info.default_side || (info.model === "zimage-tiny" ? 256 : 1024);
  applyParams({ width: side, height: side, prompt: form().elements.prompt.value });
}

async function submit() {
  if (active) return;
  clearErrors();
  if (!checkSize()) {
    $("#width").focus();
    return;
  }
  const body = bodyFromForm();
  const button = $("#generate");
  button.disabled = true;
  try {
    Object.assign(body, await editBody()); // uploads the input images first
    const job = await api("/v1/jobs", { method: "POST", body: { ...body, ...PREVIEW_REQUEST } });
    const { seed, init_image, mask, control_image, ...remembered } = body;
    localStorage.setItem(FORM_STORE, JSON.stringify({ ...remembered, seed: seed ?? null }));
    track(job);
  } catch (err) {
    button.disabled = false;
    if (err instanceof ApiError && err.errors.length) showErrors(err.errors);
    else showErrors([{ field: "_form", message: err.message || String(err) }]);
  }
}

// -- following a job -------------------------------------------------------------------

function track(job) {
  stopTracking();
  sessionStorage.setItem(ACTIVE_STORE, job.id);
  active = { id: job.id, request: job.request, deadline: null, startedAt: Date.now(), steps: job.request.steps };
  if (job.created_at) active.startedAt = Math.min(Date.now(), job.created_at * 1000);
  $("#generate").disabled = true;
  $("#generate").textContent = "Running…";
  $("#gen-empty").hidden = true;
  $("#progress").hidden = false;
  $("#progress").dataset.jobId = job.id;
  $("#cancel").disabled = false;
  $("#cancel").textContent = "Cancel";
  $("#p-prompt").textContent = job.request.prompt;
  resetPreview();
  setProgress(job.progress ? job.progress.step : 0, job.request.steps);
  setTitle(job.state === "running" ? "Generating" : "Queued");
  $("#p-position").textContent = job.state === "running" ? "running" : position(job.position);
  setEta(job.eta_s);
  if (narrow()) $("#progress").scrollIntoView({ block: "nearest" });
  active.timer = setInterval(tick, 250);
  tick();
  const self = active;
  active.stream = openStream(`/v1/jobs/${job.id}/events`, {
    onEvent: (ev) => (self === active ? onJobEvent(ev) : true),
    onError: (err) => {
      if (err instanceof ApiError && err.status === 404) finish("failed", { error: "the job is gone" });
    },
  });
}

const position = (k) => (k > 0 ? `${k} ahead` : "next");

function setTitle(text) {
  $("#progress-title").textContent = text;
}

function setProgress(step, steps) {
  const bar = $("#progress-bar");
  bar.setAttribute("aria-valuemax", String(steps));
  bar.setAttribute("aria-valuenow", String(step));
  bar.setAttribute("aria-valuetext", `step ${step} of ${steps}`);
  $(".progress-fill", bar).style.width = `${(100 * step) / Math.max(1, steps)}%`;
  $("#p-step").textContent = `${step} / ${steps}`;
  $("#p-step").dataset.step = String(step);
}

function setEta(etaS) {
  if (etaS === null || etaS === undefined || !active) return;
  active.deadline = Date.now() + etaS * 1000;
}

function tick() {
  if (!active) return;
  $("#p-elapsed").textContent = secs((Date.now() - active.startedAt) / 1000);
  const eta = $("#p-eta");
  if (active.deadline === null) eta.textContent = "estimating…";
  else {
    const left = Math.max(0, (active.deadline - Date.now()) / 1000);
    eta.textContent = left > 0.05 ? `${left.toFixed(1)} s` : "any moment";
  }
}

function onJobEvent(ev) {
  let data = {};
  try {
    data = JSON.parse(ev.data);
  } catch {
    return false;
  }
  switch (ev.event) {
    case "queued":
      $("#p-position").textContent = position(data.position);
      return false;
    case "started":
    case "requeued":
      setTitle(ev.event === "started" ? "Generating" : "Queued again");
      $("#p-position").textContent = ev.event === "started" ? "running" : "–";
      return false;
    case "step":
      active.steps = data.steps;
      setProgress(data.step, data.steps);
      setEta(data.eta_s);
      showPreview(data);
      if (data.step >= data.steps) setTitle("Decoding and saving");
      tick();
      return false;
    case "succeeded":
    case "failed":
    case "cancelled":
      finish(ev.event, data);
      return true;
    default:
      return false;
  }
}

function stopTracking() {
  if (!active) return;
  clearInterval(active.timer);
  if (active.stream) active.stream.close();
  active = null;
}

function finish(state, data) {
  const job = active;
  stopTracking();
  sessionStorage.removeItem(ACTIVE_STORE);
  $("#generate").disabled = false;
  $("#generate").textContent = "Generate";
  $("#progress").hidden = true;
  const card = $("#result");
  card.hidden = false;
  card.dataset.state = state;
  card.dataset.jobId = job.id;
  card.replaceChildren(...resultView(job, state, data));
  const heading = $("#result-title", card);
  if (heading) heading.focus({ preventScroll: !narrow() });
}

function resultView(job, state, data) {
  const title = (text) => h("h2", { id: "result-title", class: "card-title", tabindex: "-1" }, text);
  if (state === "cancelled") {
    return [title("Cancelled"), h("p", {}, `Stopped at step ${data.at_step ?? 0} of ${job.steps}.`)];
  }
  if (state === "failed") {
    return [title("Failed"), h("p", { class: "form-error" }, data.error || "The job failed.")];
  }
  const result = data.result || {};
  const timings = result.timings;
  const request = { ...job.request, seed: result.seed ?? job.request.seed };
  const { total } = timings ? jobTimes({ timings }) : { total: null };
  const out = [
    h("div", { class: "result-head" },
      title(total !== null ? `Done in ${secs(total)}` : "Done"),
      h("div", { class: "actions" },
        h("button", { type: "button", class: "button", onclick: () => copyParams(request) }, "Copy parameters"),
        h("button", { type: "button", class: "button ghost", onclick: () => applyParams(paramsBody(request)) },
          "Use these settings"),
        h("a", { class: "button ghost", href: `#history/${job.id}` }, "Details"))),
    h("p", { class: "muted" },
      `${request.width} × ${request.height} · ${request.steps} steps · seed ${request.seed}`),
    imagesGrid(job.id, result.images || [], { large: true }),
  ];
  if (timings) out.push(h("h3", {}, "Where the time went"), phaseBar(timings));
  out.push(diagnosisBlock(result.diagnosis));
  for (const note of result.notes || []) out.push(h("p", { class: "note" }, note));
  return out.filter(Boolean);
}

async function cancel() {
  if (!active) return;
  const button = $("#cancel");
  button.disabled = true;
  button.textContent = "Cancelling…";
  try {
    await api(`/v1/jobs/${active.id}`, { method: "DELETE" });
  } catch (err) {
    button.disabled = false;
    button.textContent = "Cancel";
    showErrors([{ field: "_form", message: `Could not cancel: ${err.message}` }]);
  }
}

/** Called when the page loads: wire the form, restore the last settings and a running job. */
export async function initGenerate() {
  const f = form();
  f.addEventListener("submit", (e) => {
    e.preventDefault();
    submit();
  });
  f.addEventListener("change", (e) => {
    if (e.target.name === "size") syncCustom();
  });
  $("#width").addEventListener("input", checkSize);
  $("#height").addEventListener("input", checkSize);
  $("#guidance").addEventListener("input", syncGuidance);
  for (const el of $$("input, textarea", f)) {
    if (!["width", "height"].includes(el.id)) el.addEventListener("input", () => clearErrors(controlFor(el.name)));
  }
  $("#seed-random").addEventListener("click", () => {
    const r = new Uint32Array(1);
    crypto.getRandomValues(r);
    $("#seed").value = r[0];
    clearErrors("seed");
  });
  $("#cancel").addEventListener("click", cancel);
  initEdit();
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !$("#view-generate").hidden) {
      e.preventDefault();
      submit();
    }
  });
  try {
    const saved = JSON.parse(localStorage.getItem(FORM_STORE) || "null");
    if (saved) applyParams(saved);
  } catch {
    localStorage.removeItem(FORM_STORE);
  }
  syncGuidance();
  syncCustom();
  const running = sessionStorage.getItem(ACTIVE_STORE);
  if (running) {
    try {
      const job = await api(`/v1/jobs/${running}`);
      if (["queued", "running"].includes(job.state)) track(job);
      else sessionStorage.removeItem(ACTIVE_STORE);
    } catch {
      sessionStorage.removeItem(ACTIVE_STORE);
    }
  }
}
