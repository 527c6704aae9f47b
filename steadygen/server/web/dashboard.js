// The Dashboard view: one SSE stream (GET /v1/telemetry/stream) feeds live charts of the
// last five minutes, the indicators (clock limits, other processes, busy CPU) and the
// job-latency timeline (`job` events, seeded from GET /v1/jobs).

import { api, openStream } from "./api.js";
import { $, bytes, clock, h, num, secs } from "./dom.js";
import { TimeChart, Timeline } from "./charts.js";
import { causeName, jobTimes } from "./jobview.js";

const GiB = 1024 ** 3;
const tick = (v) => (Number.isInteger(v) ? String(v) : v.toFixed(v < 1 ? 2 : 1));
const pct = (v) => `${tick(v)} %`;

// Clock-event reasons: which are trouble, which are normal GPU Boost behaviour.
const REASONS = {
  gpu_idle: ["idle", "neutral"],
  applications_clocks: ["application clocks", "neutral"],
  sw_power_cap: ["power cap", "info"],
  hw_slowdown: ["hardware slowdown", "bad"],
  sync_boost: ["sync boost", "neutral"],
  sw_thermal: ["thermal (software)", "bad"],
  hw_thermal: ["thermal (hardware)", "bad"],
  hw_power_brake: ["power brake", "bad"],
  display_clocks: ["display clocks", "neutral"],
};

let stream = null;
let charts = null; // {mode, list: [{id, chart, readout}]}
let timeline = null;
let gpuIndex = null;
let lastProcs = null; // the latest process list (samples carry it about once a second)
let prevHost = null; // the previous host reading, for rates

// Series: key (in valuesOf's output), legend label, colour (a CSS variable), line style.
const line = (key, label, color) => ({ key, label, color });
const area = (key, label, color) => ({ key, label, color, fill: true });
const limit = (key, label) => ({ key, label, color: "--muted", dash: true });

/** Chart definitions: id, title, unit, series, y axis (yMax fixed, or minTop / maxTop
 * around the data), tick format and the readout of the latest values. */
function gpuCharts() {
  return [
    { id: "util", title: "GPU utilisation", yMax: 100, format: pct,
      series: [area("util", "GPU busy", "--c1"), line("mem", "memory bus", "--c4")],
      readout: (c) => num(c.latest("util"), 0, " %") },
    { id: "clock", title: "SM clock", unit: "MHz", format: tick,
      series: [line("sm", "SM clock", "--c2"), limit("max", "maximum")],
      readout: (c) => `${num(c.latest("sm"), 0)} / ${num(c.latest("max"), 0)} MHz` },
    { id: "temp", title: "Temperature", format: (v) => `${tick(v)}°`, minTop: 100,
      series: [line("temp", "GPU", "--c5"), limit("limit", "slowdown at")],
      readout: (c) => num(c.latest("temp"), 0, " °C") },
    { id: "power", title: "Power", format: (v) => `${tick(v)} W`,
      series: [area("power", "draw", "--c3"), limit("limit", "limit")],
      readout: (c) => `${num(c.latest("power"), 0)} / ${num(c.latest("limit"), 0)} W` },
    { id: "memory", title: "GPU memory", unit: "GiB", format: tick,
      series: [area("ours", "ours", "--c1"), area("others", "others", "--c5"), limit("total", "total")],
      readout: (c) => `${num(c.latest("ours"), 1)} ours · ${num(c.latest("others"), 1)} others` },
  ];
}

function hostCharts() {
  return [
    { id: "cpu", title: "Host CPU", yMax: 100, format: pct,
      series: [area("cpu", "all cores", "--c1")],
      readout: (c) => num(c.latest("cpu"), 0, " %") },
    { id: "rundelay", title: "Run-queue delay", unit: "ms/s", format: tick, minTop: 10,
      series: [area("delay", "ms waiting for a CPU per second (our threads)", "--c5")],
      readout: (c) => num(c.latest("delay"), 0, " ms/s") },
    { id: "psi", title: "Pressure (PSI some, 10 s)", format: pct, minTop: 10, maxTop: 100,
      series: [line("cpu", "cpu", "--c2"), line("memory", "memory", "--c4"), line("io", "io", "--c3")],
      readout: (c) => `cpu ${num(c.latest("cpu"), 1, " %")}` },
  ];
}

function queueChart() {
  return { id: "queue", title: "Queue", format: tick, minTop: 4,
    series: [area("depth", "waiting", "--c2"), line("running", "running", "--c3")],
    readout: (c) => `${num(c.latest("depth"), 0)} waiting · ${num(c.latest("running"), 0)} running` };
}

function chartCard(def) {
  const canvas = h("canvas", { class: "chart", "data-points": "0", role: "img", "aria-label": def.title });
  const readout = h("p", { class: "readout" }, "–");
  const legend = def.series.map((sr) => h("li", {},
    h("span", { class: `swatch${sr.dash ? " dashed" : ""}`, style: { "--swatch": `var(${sr.color})` } }),
    sr.label));
  const card = h("section", { class: "card chart-card", id: `chart-${def.id}` },
    h("div", { class: "chart-head" },
      h("h2", {}, def.title, def.unit ? h("span", { class: "muted" }, ` (${def.unit})`) : ""), readout),
    canvas, h("ul", { class: "legend" }, legend));
  const chart = new TimeChart(canvas, {
    series: def.series, yMax: def.yMax ?? null, minTop: def.minTop || 0, maxTop: def.maxTop ?? Infinity,
    format: def.format,
  });
  return { id: def.id, def, card, readout, chart };
}

function buildCharts(mode) {
  const defs = mode === "gpu" ? [...gpuCharts(), queueChart(), ...hostCharts()] : [...hostCharts(), queueChart()];
  const list = defs.map(chartCard);
  const box = $("#charts");
  box.dataset.mode = mode;
  box.replaceChildren(...list.map((c) => c.card));
  return { mode, list };
}

/** The values each chart plots from one `sample` event. */
function valuesOf(snap) {
  const s = snap.sample;
  const out = { queue: { depth: snap.queue_depth, running: (snap.running || []).length } };
  if (!s) return out;
  const host = s.host || {};
  out.cpu = { cpu: host.cpu_util_pct };
  out.psi = {
    cpu: host.psi_cpu ? host.psi_cpu.some_avg10_pct : null,
    memory: host.psi_memory ? host.psi_memory.some_avg10_pct : null,
    io: host.psi_io ? host.psi_io.some_avg10_pct : null,
  };
  let delay = null;
  if (prevHost && host.run_delay_ns != null && prevHost.run_delay_ns != null && s.t_mono > prevHost.t_mono) {
    delay = Math.max(0, (host.run_delay_ns - prevHost.run_delay_ns) / 1e6 / (s.t_mono - prevHost.t_mono));
  }
  prevHost = { t_mono: s.t_mono, run_delay_ns: host.run_delay_ns };
  out.rundelay = { delay };
  const g = (s.gpus || []).find((x) => x.index === gpuIndex) || (s.gpus || [])[0];
  if (g) {
    out.util = { util: g.util_gpu_pct, mem: g.util_mem_pct };
    out.clock = { sm: mhz(g.sm_clock_hz), max: mhz(g.sm_clock_max_hz) };
    const slowdown = g.temp_c != null && g.temp_margin_c != null ? g.temp_c + g.temp_margin_c : null;
    out.temp = { temp: g.temp_c, limit: slowdown };
    out.power = { power: g.power_w, limit: g.power_limit_w };
    const used = g.mem_used_bytes;
    let ours = null;
    if (lastProcs && used != null) {
      ours = lastProcs.filter((p) => p.gpu_index === g.index && p.ours).reduce((a, p) => a + (p.used_bytes || 0), 0);
    }
    out.memory = {
      ours: ours === null ? null : ours / GiB,
      others: ours === null || used == null ? (used == null ? null : used / GiB) : Math.max(0, used - ours) / GiB,
      total: g.mem_total_bytes == null ? null : g.mem_total_bytes / GiB,
    };
  }
  return out;
}

const mhz = (hz) => (hz == null ? null : hz / 1e6);

function chip(text, kind, title = null) {
  return h("span", { class: `chip ${kind}`, title }, text);
}

/** Other processes' CPU use, summed by name (three "python" workers read as one line). */
function busyByName(procs) {
  const byName = new Map();
  for (const p of procs) {
    const e = byName.get(p.name) || { name: p.name, cpu_pct: 0, pids: [] };
    e.cpu_pct += p.cpu_pct;
    e.pids.push(p.pid);
    byName.set(p.name, e);
  }
  return [...byName.values()].filter((e) => e.cpu_pct >= 25).sort((a, b) => b.cpu_pct - a.cpu_pct).slice(0, 3);
}

function indicators(snap) {
  const s = snap.sample;
  const items = [];
  const g = s && ((s.gpus || []).find((x) => x.index === gpuIndex) || (s.gpus || [])[0]);
  if (g) {
    const active = (g.clock_events || []).filter((r) => r !== "gpu_idle");
    const idle = (g.clock_events || []).includes("gpu_idle");
    if (!active.length) items.push(chip(idle ? "Clocks: idle" : "Clocks: no limit active", "ok"));
    for (const r of active) {
      const [label, kind] = REASONS[r] || [r, "neutral"];
      const hint = r === "sw_power_cap" ? "Normal GPU Boost behaviour at full load" : null;
      items.push(chip(`Clock limit: ${label}`, kind, hint));
    }
    const foreign = (lastProcs || []).filter((p) => !p.ours && p.gpu_index === g.index);
    if (!foreign.length) items.push(chip("No other process on the GPU", "ok"));
    for (const p of foreign) {
      items.push(chip(`Other GPU process: ${p.name || "?"} (pid ${p.pid}, ${bytes(p.used_bytes)})`, "bad"));
    }
  }
  const host = s ? s.host || {} : {};
  for (const p of busyByName(host.top_foreign || [])) {
    const label = `CPU: ${p.name}${p.pids.length > 1 ? ` ×${p.pids.length}` : ""} ${num(p.cpu_pct, 0)} %`;
    items.push(chip(label, p.cpu_pct >= 80 ? "warn" : "neutral", `pid ${p.pids.join(", ")}: percent of one CPU`));
  }
  if (host.cpu_count && host.load_avg) {
    const load = host.load_avg[0];
    items.push(chip(`Load ${load.toFixed(2)} on ${host.cpu_count} CPUs`, load > host.cpu_count ? "warn" : "neutral"));
  }
  for (const r of snap.running || []) {
    const left = r.eta_s != null ? `, ${secs(r.eta_s)} left` : "";
    items.push(chip(`Running ${r.job_id.slice(-6)}: step ${r.step}/${r.steps}${left}`, "info"));
  }
  return items;
}

function onSample(snap) {
  const s = snap.sample;
  if (s && s.processes) lastProcs = s.processes;
  const mode = s && s.gpus && s.gpus.length ? "gpu" : "host";
  if (!charts || charts.mode !== mode) {
    prevHost = null;
    charts = buildCharts(mode);
  }
  $("#dash-source").textContent = mode === "gpu"
    ? `GPU telemetry (${snap.gpu_backend}): ${s.gpus.map((g) => `GPU ${g.index} ${g.name || ""}`).join(", ")}`
    : "No GPU telemetry on this machine: showing the host's CPU, run-queue delay and pressure.";
  const t = snap.t_wall || (s && s.t_wall) || Date.now() / 1000;
  const values = valuesOf(snap);
  for (const c of charts.list) {
    c.chart.push(t, values[c.id] || {});
    c.readout.textContent = c.def.readout(c.chart);
  }
  $("#indicators").replaceChildren(...indicators(snap));
  $("#dash-live").textContent = `Live · last sample ${new Date(t * 1000).toLocaleTimeString()}`;
  timeline.tick(t);
}

function addJob(job) {
  if (!job.finished_at) return;
  const slow = Boolean(job.diagnosis && job.diagnosis.slow);
  timeline.add({ id: job.id, t: job.finished_at, latency_s: jobTimes(job).total, state: job.state, slow });
}

async function onJobEvent(ev) {
  let latency = ev.total_s != null ? ev.total_s + (ev.queue_wait_s || 0) : null;
  if (latency === null) {
    try {
      const job = await api(`/v1/jobs/${ev.job_id}`);
      latency = jobTimes(job).total;
    } catch {
      latency = null;
    }
  }
  timeline.add({ id: ev.job_id, t: ev.t_wall, latency_s: latency, state: ev.state, slow: Boolean(ev.main_cause) });
  $("#timeline-last").textContent = `Last job ${ev.job_id} ${ev.state} at ${clock(ev.t_wall)}`
    + (latency != null ? ` in ${secs(latency)}` : "")
    + (ev.main_cause ? `; main cause of delay: ${causeName(ev.main_cause)}` : "") + ".";
}

export function showDashboard(device) {
  if (stream) return;
  const m = /cuda:(\d+)/.exec(device || "");
  gpuIndex = m ? Number(m[1]) : 0;
  if (!timeline) timeline = new Timeline($("#timeline"));
  api("/v1/jobs?limit=50").then(({ jobs }) => jobs.forEach(addJob), () => {});
  stream = openStream("/v1/telemetry/stream?interval=1", {
    onOpen: () => $("#dash-live").classList.remove("stale"),
    onError: () => {
      $("#dash-live").classList.add("stale");
      $("#dash-live").textContent = "Connection lost; reconnecting…";
    },
    onEvent: (ev) => {
      const data = JSON.parse(ev.data);
      if (ev.event === "sample") onSample(data);
      else if (ev.event === "job") onJobEvent(data);
      return false;
    },
  });
}

export function leaveDashboard() {
  if (stream) stream.close();
  stream = null;
  prevHost = null;
}
