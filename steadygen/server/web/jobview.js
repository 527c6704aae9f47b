// Pieces that show one job: where its time went (phase bar), its diagnosis, parameters,
// images and telemetry summary. Used by the Generate result and the History detail.

import { showImage } from "./api.js";
import { bytes, copyText, h, num, secs, toast } from "./dom.js";

const PHASES = [
  ["queue", "Queue", (t) => t.queue_wait_s],
  ["load", "Load / warm-up", (t) => (t.load_s || 0) + (t.warmup_s || 0)],
  ["encode", "Encode", (t) => t.encode_s],
  ["prepare", "Prepare", (t) => t.prepare_s],
  ["steps", "Steps", (t) => t.denoise_s ?? (t.steps_s || []).reduce((a, b) => a + b, 0)],
  ["decode", "Decode", (t) => t.decode_s],
  ["save", "Save", (t) => t.save_s],
  ["memory", "Memory", (t) => t.memory_s],
  ["other", "Other", (t) => t.other_s],
];

export const CAUSES = {
  queue_wait: "Queue wait",
  cold_start: "Cold start / compile",
  gpu_clocks: "GPU clocks lowered",
  foreign_gpu_process: "Another process on the GPU",
  cpu_contention: "CPU contention",
  memory_management: "Memory management",
  offload: "Weights moved (low-VRAM mode)",
  adapter_switch: "LoRA adapter switch",
};

export const causeName = (kind) => CAUSES[kind] || String(kind).replaceAll("_", " ");

export function stateBadge(state) {
  return h("span", { class: `badge state-${state}`, "data-state": state }, state);
}

/** End-to-end seconds (accepted -> finished) and the queue wait, from what the job has. */
export function jobTimes(job) {
  const t = job.timings;
  const queue = t ? t.queue_wait_s : job.started_at ? job.started_at - job.created_at : null;
  let total = null;
  if (t) total = (t.queue_wait_s || 0) + t.total_s;
  else if (job.finished_at) total = job.finished_at - job.created_at;
  return { total, queue, service: t ? t.total_s : null };
}

/** The horizontal bar of phases, with a legend that carries the numbers. */
export function phaseBar(timings) {
  const parts = PHASES.map(([key, label, get]) => [key, label, Math.max(0, get(timings) || 0)]);
  const core = ["queue", "encode", "steps", "decode", "save"];
  const shown = parts.filter(([key, , v]) => v >= 0.0005 || core.includes(key));
  const total = parts.reduce((a, [, , v]) => a + v, 0) || 1;
  const summary = shown.map(([, label, v]) => `${label} ${secs(v)}`).join(", ");
  const label = `Time by phase: ${summary}`;
  const bar = h("div", { class: "phase-bar", role: "img", "aria-label": label, "data-testid": "phase-bar" },
    shown.filter(([, , v]) => v > 0).map(([key, label, v]) =>
      h("div", {
        class: `seg ph-${key}`, style: { flexGrow: String(v / total) }, title: `${label}: ${secs(v)}`,
        dataset: { phase: key },
      }, v / total > 0.1 ? h("span", {}, label) : null)));
  const legend = h("ul", { class: "phase-legend" },
    shown.map(([key, label, v]) => h("li", {},
      h("span", { class: `swatch ph-${key}` }), h("span", { class: "name" }, label),
      h("span", { class: "val" }, secs(v)), h("span", { class: "pct" }, `${Math.round((v / total) * 100)}%`))));
  return h("div", { class: "phases" }, bar, legend);
}

/** job.diagnosis: {actual_s, expected_s, excess_s, slow, causes: [{kind, seconds, evidence}],
 * unexplained_s, main_cause, baseline_runs?, notes?}. expected_s is null before a baseline. */
export function diagnosisBlock(d) {
  if (!d) return null;
  let head;
  if (d.expected_s === null || d.expected_s === undefined) {
    head = h("p", { class: "diag-head" }, h("strong", {}, "No expectation yet "),
      `for this size and settings (${secs(d.actual_s)} this time).`);
  } else if (d.slow) {
    head = h("p", { class: "diag-head slow" }, h("strong", {}, "Slower than expected: "),
      `${secs(d.actual_s)} against ${secs(d.expected_s)} expected (+${secs(d.excess_s)}).`,
      d.main_cause ? ` Main cause: ${causeName(d.main_cause)}.` : "");
  } else {
    const diff = d.excess_s || 0;
    head = h("p", { class: "diag-head ok" }, h("strong", {}, "As expected: "),
      `${secs(d.actual_s)} against ${secs(d.expected_s)} expected`,
      Math.abs(diff) >= 0.001 ? ` (${diff > 0 ? "+" : "−"}${secs(Math.abs(diff))}).` : ".");
  }
  const causes = (d.causes || []).map((c) => h("li", { class: c.kind === d.main_cause ? "main" : "" },
    h("span", { class: "cause" }, causeName(c.kind)), h("span", { class: "secs" }, `+${secs(c.seconds)}`),
    h("span", { class: "evidence" }, c.evidence || "")));
  if (d.unexplained_s > 0.005 && (causes.length || d.slow)) {
    causes.push(h("li", { class: "unexplained" }, h("span", { class: "cause" }, "Unexplained"),
      h("span", { class: "secs" }, `+${secs(d.unexplained_s)}`),
      h("span", { class: "evidence" }, "no measured cause accounts for this part")));
  }
  const notes = [...(d.notes || [])];
  if (d.baseline_runs) {
    notes.unshift(`expectation from ${d.baseline_runs} earlier run${d.baseline_runs > 1 ? "s" : ""}`);
  }
  return h("section", { class: "diagnosis", "data-testid": "diagnosis", dataset: { slow: String(Boolean(d.slow)) } },
    h("h3", {}, "Diagnosis"), head,
    causes.length ? h("ul", { class: "causes", "aria-label": "Causes, with the seconds each added" }, causes) : null,
    notes.length ? h("p", { class: "diag-notes" }, notes.join("; ")) : null);
}

/** The body a client would POST to /v1/jobs to make the same images again. */
export function paramsBody(request, seed) {
  const body = {
    prompt: request.prompt, width: request.width, height: request.height, steps: request.steps,
    guidance: request.guidance, seed: seed ?? request.seed, n: request.n,
  };
  if (request.guidance > 0 && request.negative_prompt) body.negative_prompt = request.negative_prompt;
  return body;
}

export async function copyParams(request, seed) {
  const ok = await copyText(JSON.stringify(paramsBody(request, seed), null, 2));
  if (ok) toast("Parameters copied (a POST /v1/jobs body)");
  else toast("Could not copy: the browser refused", "error");
}

export function paramsList(request) {
  const rows = [
    ["Prompt", request.prompt], ["Size", `${request.width} × ${request.height}`], ["Steps", request.steps],
    ["Guidance", request.guidance], ["Seed", `${request.seed}${request.seed_was_random ? " (random)" : ""}`],
    ["Images", request.n], ["Model", request.model],
  ];
  if (request.guidance > 0) rows.splice(1, 0, ["Negative prompt", request.negative_prompt || "(none)"]);
  return h("dl", { class: "params" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]));
}

/** The images of a job, each opening full size and with a download link. */
export function imagesGrid(jobId, paths, { large = false } = {}) {
  const grid = h("div", { class: large ? "images large" : "images", dataset: { count: String(paths.length) } });
  paths.forEach((path, k) => {
    const img = h("img", { alt: `Image ${k + 1} of job ${jobId}`, "data-testid": "result-image", decoding: "async" });
    const view = h("a", { href: path, target: "_blank", rel: "noopener", title: "Open full size" }, img);
    const save = h("a", { class: "button small", download: `steadygen-${jobId}-${k}.png`, href: path }, "Download");
    showImage(img, path, view, save); // a blob: URL for all three when a key is in use
    grid.append(h("figure", { class: "image" }, view, h("figcaption", {}, save)));
  });
  return grid;
}

/** The job's telemetry window summary: host contention and GPU readings during the job. */
export function telemetryBlock(tel) {
  if (!tel) return null;
  const host = tel.host || {};
  const rows = [
    ["Samples", `${tel.n_samples} over ${secs(tel.duration_s)}`],
    ["Our CPU time", secs(host.cpu_s)],
    ["Run-queue wait (our threads)", secs(host.run_delay_s)],
  ];
  const psi = host.psi_stall_s || {};
  if (Object.keys(psi).length) {
    rows.push(["Pressure stalls", Object.entries(psi).map(([k, v]) => `${k} ${secs(v)}`).join(", ")]);
  }
  if (host.cpu_util_pct) rows.push(["Host CPU", `median ${num(host.cpu_util_pct.median, 0, " %")}`]);
  for (const [index, g] of Object.entries(tel.gpus || {})) rows.push(...gpuRows(index, g));
  const foreign = [
    ...(tel.foreign_gpu_processes || [])
      .map((p) => `${p.name || "?"} (pid ${p.pid}) on GPU ${p.gpu}, ${bytes(p.max_used_bytes)}`),
    ...(host.top_foreign || []).slice(0, 3).map((p) => `${p.name}: ${num(p.mean_cpu_pct, 0)} % CPU on average`),
  ];
  if (foreign.length) rows.push(["Other processes", foreign.join("; ")]);
  return h("details", { class: "telemetry" }, h("summary", {}, "Telemetry during this job"),
    h("dl", { class: "params" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
}

const med = (stat, scale = 1, digits = 0, unit = "") => (stat ? num(stat.median * scale, digits, unit) : "–");

/** Rows for one GPU of a job's telemetry summary (medians over the job's samples). */
function gpuRows(index, g) {
  const max = g.sm_clock_max_hz ? ` of ${num(g.sm_clock_max_hz / 1e6, 0, " MHz")}` : "";
  const clock = g.sm_clock_hz ? `${med(g.sm_clock_hz, 1e-6, 0, " MHz")}${max}` : "–";
  const rows = [[`GPU ${index}`, `utilisation ${med(g.util_gpu_pct, 1, 0, " %")}, SM clock ${clock}, `
    + `${med(g.temp_c, 1, 0, " °C")}, ${med(g.power_w, 1, 0, " W")}`
    + (g.energy_j ? `, ${num(g.energy_j, 0, " J")}` : "")]];
  const reasons = Object.entries(g.clock_event_fraction || {})
    .map(([k, v]) => `${k.replaceAll("_", " ")} ${Math.round(v * 100)} % of samples`);
  const throttled = Object.entries(g.throttle_s || {}).filter(([, v]) => v > 0)
    .map(([k, v]) => `${k.replaceAll("_", " ")} ${secs(v)}`);
  if (reasons.length || throttled.length) {
    rows.push([`GPU ${index} clock events`, [...reasons, ...throttled].join(", ")]);
  }
  return rows;
}
