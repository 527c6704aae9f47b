// The History view: GET /v1/jobs?limit=50 (newest first) and one job's detail: where its
// time went, its per-step times, its diagnosis and parameters. While the view is open it
// follows the telemetry stream's `job` events (one SSE stream, slow samples) to stay current.

import { inputsBlock } from "./edit.js";
import { api, openStream, showImage } from "./api.js";
import { $, ago, h, secs } from "./dom.js";
import { stepBars } from "./charts.js";
import { applyParams } from "./generate.js";
import {
  causeName, copyParams, diagnosisBlock, imagesGrid, jobTimes, paramsBody, paramsList,
  phaseBar, stateBadge, telemetryBlock,
} from "./jobview.js";

let stream = null;
let selected = null;
let reloadTimer = null;
const thumbs = new IntersectionObserver((entries) => {
  for (const { isIntersecting, target } of entries) {
    if (!isIntersecting) continue;
    thumbs.unobserve(target);
    showImage(target, target.dataset.src);
  }
}, { rootMargin: "200px" });

function row(job) {
  const { total, queue } = jobTimes(job);
  const r = job.request;
  const meta = [`${r.width} × ${r.height}`, `${r.steps} steps`, r.n > 1 ? `${r.n} images` : null, ago(job.created_at)]
    .filter(Boolean);
  const thumb = job.images.length
    ? h("img", { class: "thumb", alt: "", dataset: { src: job.images[0] }, width: 56, height: 56 })
    : h("div", { class: `thumb empty-thumb state-${job.state}`, "aria-hidden": "true" });
  if (job.images.length) thumbs.observe(thumb);
  const d = job.diagnosis;
  const cause = d && d.slow ? (d.main_cause ? causeName(d.main_cause) : "cause unknown") : null;
  return h("li", {},
    h("a", {
      class: "job-row", href: `#history/${job.id}`, dataset: { jobId: job.id },
      "aria-current": job.id === selected ? "true" : null,
    },
      thumb,
      h("div", { class: "job-main" },
        h("p", { class: "job-prompt" }, r.prompt),
        h("p", { class: "job-meta" }, meta.flatMap((part, i) => [i ? " · " : "", h("span", { class: "nowrap" }, part)]))),
      h("dl", { class: "job-nums" },
        h("div", {}, h("dt", {}, "Total"), h("dd", {}, secs(total))),
        h("div", {}, h("dt", {}, "Queue"), h("dd", {}, secs(queue)))),
      h("div", { class: "job-state" }, stateBadge(job.state),
        cause ? h("span", { class: "slow-tag" }, `slow: ${cause}`) : null)));
}

async function loadList() {
  const list = $("#history-items");
  list.setAttribute("aria-busy", "true");
  try {
    const { jobs } = await api("/v1/jobs?limit=50");
    thumbs.disconnect(); // the old rows' thumbnails
    list.replaceChildren(...jobs.map(row));
    $("#history-empty").hidden = jobs.length > 0;
    list.dataset.count = String(jobs.length);
  } catch (err) {
    list.replaceChildren(h("li", { class: "form-error" }, `Could not load the jobs: ${err.message}`));
  } finally {
    list.removeAttribute("aria-busy");
  }
}

function detailView(job) {
  const r = job.request;
  const { total, queue, service } = jobTimes(job);
  const t = job.timings;
  const parts = [
    h("a", { class: "back", href: "#history" }, "← All jobs"),
    h("header", { class: "detail-head" },
      h("h2", { id: "detail-title", class: "card-title", tabindex: "-1" }, r.prompt),
      h("p", { class: "muted" }, stateBadge(job.state), " ", new Date(job.created_at * 1000).toLocaleString(),
        " · ", h("code", {}, job.id), job.device ? ` · ${job.device}` : "")),
  ];
  if (job.error) parts.push(h("p", { class: "form-error" }, job.error));
  if (job.state === "running" && job.progress) {
    parts.push(h("p", {}, `Running: step ${job.progress.step} of ${job.progress.steps}.`));
  }
  const inputs = inputsBlock(r); // an edit: its input next to the output
  if (job.images.length) parts.push(inputs ? h("div", { class: "in-out" }, inputs, imagesGrid(job.id, job.images)) : imagesGrid(job.id, job.images));
  parts.push(h("h3", {}, "Where the time went"),
    h("p", { class: "totals" },
      h("span", {}, h("strong", {}, secs(total)), " total"),
      h("span", {}, h("strong", {}, secs(queue)), " in the queue"),
      service !== null ? h("span", {}, h("strong", {}, secs(service)), " generating") : null));
  if (t) parts.push(phaseBar(t));
  else parts.push(h("p", { class: "muted" }, "No phase timings: the job did not finish."));
  parts.push(diagnosisBlock(job.diagnosis));
  if (t && t.steps_s && t.steps_s.length) parts.push(h("h3", {}, "Per-step times"), stepBars(t.steps_s));
  parts.push(h("h3", {}, "Parameters"), paramsList(r),
    h("div", { class: "actions" },
      h("button", { type: "button", class: "button", onclick: () => copyParams(r) }, "Copy parameters"),
      h("button", {
        type: "button", class: "button ghost",
        onclick: () => {
          applyParams(paramsBody(r));
          location.hash = "#generate";
        },
      }, "Use these settings")));
  for (const note of job.notes || []) parts.push(h("p", { class: "note" }, note));
  parts.push(telemetryBlock(job.telemetry));
  return parts.filter(Boolean);
}

async function loadDetail(id, focus) {
  const box = $("#job-detail");
  try {
    const job = await api(`/v1/jobs/${encodeURIComponent(id)}`);
    if (selected !== id) return;
    box.replaceChildren(...detailView(job));
    box.dataset.jobId = id;
    box.dataset.state = job.state;
  } catch (err) {
    box.replaceChildren(h("a", { class: "back", href: "#history" }, "← All jobs"),
      h("p", { class: "form-error" }, `Could not load job ${id}: ${err.message}`));
  }
  if (focus) ($("#detail-title", box) || $(".back", box)).focus();
}

function scheduleReload(jobId) {
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(() => {
    loadList();
    if (jobId && jobId === selected) loadDetail(selected, false);
  }, 300);
}

/** Enter the view (or change the selected job). */
export function showHistory(jobId) {
  const fresh = !stream;
  const changed = jobId !== selected;
  selected = jobId;
  $("#view-history").classList.toggle("has-detail", Boolean(jobId));
  $("#job-detail").hidden = !jobId;
  for (const a of document.querySelectorAll(".job-row")) {
    if (a.dataset.jobId === jobId) a.setAttribute("aria-current", "true");
    else a.removeAttribute("aria-current");
  }
  if (fresh) {
    loadList();
    stream = openStream("/v1/telemetry/stream?interval=10", {
      onEvent: (ev) => {
        if (ev.event === "job") scheduleReload(JSON.parse(ev.data).job_id);
        return false;
      },
    });
  }
  if (jobId && (changed || fresh)) loadDetail(jobId, true);
}

export function leaveHistory() {
  if (stream) stream.close();
  stream = null;
}

export function initHistory() {
  $("#history-refresh").addEventListener("click", () => {
    loadList();
    if (selected) loadDetail(selected, false);
  });
}
