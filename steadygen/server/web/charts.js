// Charts of our own: a time-series line chart and a scatter timeline on <canvas>, and the
// per-step bar chart in SVG. Colours come from CSS custom properties, so the charts follow
// the page's light or dark theme.

import { cssVar, h, s, secs } from "./dom.js";

/** A y axis for values up to v: a step of 1, 2, 2.5 or 5 times a power of ten, 2 to 5
 * steps, and the top as a whole number of steps. */
export function niceScale(v, minTop = 0) {
  const most = Math.max(v, minTop);
  if (!(most > 0)) return { top: 1, step: 0.25 };
  const raw = most / 5;
  const p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * p).find((s) => s >= raw);
  return { top: Math.ceil(most / step - 1e-9) * step, step };
}

export const niceMax = (v) => niceScale(v).top;

class CanvasChart {
  constructor(canvas, { windowS, format }) {
    this.canvas = canvas;
    this.windowS = windowS;
    this.format = format || ((v) => v.toFixed(0));
    this.received = 0;
    this.now = 0; // the newest time, in server time (seconds): the right edge
    this.span = windowS; // seconds shown, set by frame()
    this.queued = false;
    new ResizeObserver(() => this.draw()).observe(canvas);
  }

  /** Coalesce redraws into one per frame. */
  redraw() {
    if (this.queued) return;
    this.queued = true;
    requestAnimationFrame(() => {
      this.queued = false;
      this.draw();
    });
  }

  count() {
    this.received += 1;
    this.canvas.dataset.points = String(this.received);
  }

  /** Size the backing store to the element and the pixel ratio; returns the 2D context. */
  context() {
    const { canvas } = this;
    const ratio = window.devicePixelRatio || 1;
    const w = canvas.clientWidth;
    const hgt = canvas.clientHeight;
    if (!w || !hgt) return null;
    if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(hgt * ratio)) {
      canvas.width = Math.round(w * ratio);
      canvas.height = Math.round(hgt * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, hgt);
    ctx.font = `11px ${cssVar("--font")}`;
    return { ctx, w, h: hgt };
  }

  /** Grid lines with y labels and the time span; returns the plot area. The span grows
   * from one minute up to the window as data arrives, so a new chart is not empty. */
  frame(ctx, w, hgt, scale, since) {
    const { top, step } = scale;
    const ticks = [];
    for (let v = 0; v <= top + step / 1000; v += step) ticks.push(v);
    const labels = ticks.map((v) => (v === 0 ? "0" : this.format(v)));
    const left = Math.ceil(Math.max(...labels.map((l) => ctx.measureText(l).width))) + 10;
    const area = { x: left, y: 8, w: w - left - 8, h: hgt - 26 };
    this.span = Math.min(this.windowS, Math.max(60, since === null ? 60 : this.now - since));
    ctx.strokeStyle = cssVar("--grid");
    ctx.fillStyle = cssVar("--muted");
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    ticks.forEach((v, i) => {
      const y = Math.round(area.y + area.h - (area.h * v) / top) + 0.5;
      ctx.beginPath();
      ctx.moveTo(area.x, y);
      ctx.lineTo(area.x + area.w, y);
      ctx.stroke();
      ctx.fillText(labels[i], area.x - 6, y);
    });
    ctx.textBaseline = "alphabetic";
    ctx.textAlign = "left";
    const span = this.span >= 120 ? `${Math.round(this.span / 60)} min ago` : `${Math.round(this.span)} s ago`;
    ctx.fillText(span, area.x, hgt - 6);
    ctx.textAlign = "right";
    ctx.fillText("now", area.x + area.w, hgt - 6);
    return area;
  }

  xOf(area, t) {
    return area.x + ((t - (this.now - this.span)) / this.span) * area.w;
  }
}

/** Lines over the last `windowS` seconds. series: [{key, label, color (CSS var), dash}].
 * yMax: a fixed top, or null to scale to the data. Gaps over `gapS` break the line. */
export class TimeChart extends CanvasChart {
  constructor(canvas, { series, yMax = null, minTop = 0, maxTop = Infinity, windowS = 300, gapS = 5, format }) {
    super(canvas, { windowS, format });
    this.series = series;
    this.yMax = yMax;
    this.minTop = minTop;
    this.maxTop = maxTop; // a ceiling for percentages: never an axis past 100 %
    this.gapS = gapS;
    this.points = []; // [t, {key: value|null}]
  }

  push(t, values) {
    this.points.push([t, values]);
    this.now = Math.max(this.now, t);
    const oldest = this.now - this.windowS - this.gapS;
    while (this.points.length && this.points[0][0] < oldest) this.points.shift();
    this.count();
    this.redraw();
  }

  latest(key) {
    for (let i = this.points.length - 1; i >= 0; i -= 1) {
      const v = this.points[i][1][key];
      if (v !== null && v !== undefined) return v;
    }
    return null;
  }

  draw() {
    const c = this.context();
    if (!c) return;
    const { ctx, w } = c;
    let scale;
    if (this.yMax !== null) scale = niceScale(this.yMax);
    else {
      let most = 0;
      for (const [, vals] of this.points) {
        for (const { key } of this.series) if (vals[key] > most) most = vals[key];
      }
      scale = niceScale(Math.min(most * 1.05, this.maxTop), this.minTop);
    }
    const top = scale.top;
    const area = this.frame(ctx, w, c.h, scale, this.points.length ? this.points[0][0] : null);
    ctx.save();
    ctx.beginPath();
    ctx.rect(area.x, area.y - 2, area.w, area.h + 4);
    ctx.clip();
    for (const { key, color, dash, fill } of this.series) {
      const stroke = cssVar(color);
      ctx.strokeStyle = stroke;
      ctx.lineWidth = dash ? 1.25 : 2;
      ctx.setLineDash(dash ? [5, 4] : []);
      let prevT = null;
      let run = [];
      const flush = () => {
        if (run.length) this.stroke(ctx, area, run, fill ? stroke : null);
        run = [];
      };
      for (const [t, vals] of this.points) {
        const v = vals[key];
        if (v === null || v === undefined || (prevT !== null && t - prevT > this.gapS)) flush();
        if (v !== null && v !== undefined) {
          run.push([this.xOf(area, t), area.y + area.h - (Math.min(v, top) / top) * area.h]);
        }
        prevT = t;
      }
      flush();
    }
    ctx.restore();
  }

  stroke(ctx, area, run, fill) {
    ctx.beginPath();
    run.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    if (run.length === 1) ctx.lineTo(run[0][0] + 1, run[0][1]);
    ctx.stroke();
    if (fill) {
      ctx.lineTo(run[run.length - 1][0], area.y + area.h);
      ctx.lineTo(run[0][0], area.y + area.h);
      ctx.closePath();
      ctx.globalAlpha = 0.12;
      ctx.fillStyle = fill;
      ctx.fill();
      ctx.globalAlpha = 1;
    }
  }
}

/** One dot per finished job: x its end time, y its latency, colour its outcome. */
export class Timeline extends CanvasChart {
  constructor(canvas, { windowS = 1800 } = {}) {
    super(canvas, { windowS, format: (v) => (v < 1 ? `${Math.round(v * 1000)} ms` : `${+v.toFixed(2)} s`) });
    this.jobs = new Map(); // id -> {t, latency_s, state, slow}
  }

  add(job) {
    if (this.jobs.has(job.id)) return;
    this.jobs.set(job.id, job);
    this.now = Math.max(this.now, job.t);
    this.count();
    this.redraw();
  }

  tick(t) {
    this.now = Math.max(this.now, t);
    this.redraw();
  }

  draw() {
    const c = this.context();
    if (!c) return;
    const { ctx, w } = c;
    const shown = [...this.jobs.values()].filter((j) => j.t >= this.now - this.windowS);
    const scale = niceScale(Math.max(0, ...shown.map((j) => j.latency_s || 0)) * 1.1);
    const top = scale.top;
    const first = shown.length ? Math.min(...shown.map((j) => j.t)) : null;
    const area = this.frame(ctx, w, c.h, scale, first);
    for (const job of shown) {
      const x = this.xOf(area, job.t);
      const y = area.y + area.h - (Math.min(job.latency_s || 0, top) / top) * area.h;
      ctx.beginPath();
      ctx.arc(x, y, 4.5, 0, Math.PI * 2);
      ctx.fillStyle = cssVar(`--state-${job.state}`) || cssVar("--muted");
      ctx.fill();
      if (job.slow) {
        ctx.beginPath();
        ctx.arc(x, y, 8, 0, Math.PI * 2);
        ctx.strokeStyle = cssVar("--warn");
        ctx.lineWidth = 2;
        ctx.stroke();
      }
    }
  }
}

/** Per-step seconds as an SVG bar chart with the median marked. */
export function stepBars(stepsS) {
  const n = stepsS.length;
  const narrow = window.matchMedia("(max-width: 600px)").matches;
  const W = narrow ? 340 : 600;
  const H = narrow ? 150 : 140;
  const pad = { l: 48, r: 8, t: 8, b: 22 };
  const top = niceMax(Math.max(...stepsS) * 1.05);
  const sorted = [...stepsS].sort((a, b) => a - b);
  const median = n % 2 ? sorted[(n - 1) / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
  const plotW = W - pad.l - pad.r;
  const plotH = H - pad.t - pad.b;
  const bw = plotW / n;
  const yOf = (v) => pad.t + plotH - (v / top) * plotH;
  const svg = s("svg", {
    class: "step-bars", viewBox: `0 0 ${W} ${H}`, role: "img", "data-testid": "step-bars",
    "aria-label": `${n} steps, median ${secs(median)}, slowest ${secs(sorted[n - 1])}`,
  });
  for (const frac of [0, 0.5, 1]) {
    const y = yOf(top * frac);
    svg.append(s("line", { class: "grid", x1: pad.l, x2: W - pad.r, y1: y, y2: y }));
    const label = frac ? secs(top * frac) : "0";
    svg.append(s("text", { class: "axis", x: pad.l - 6, y: y + 4, "text-anchor": "end" }, label));
  }
  stepsS.forEach((v, i) => {
    const slow = v > median * 1.5;
    const bar = s("rect", {
      class: slow ? "bar slow" : "bar", x: pad.l + i * bw + bw * 0.15, width: Math.max(1, bw * 0.7),
      y: yOf(v), height: Math.max(1, pad.t + plotH - yOf(v)),
    }, s("title", {}, `step ${i + 1}: ${secs(v)}`));
    svg.append(bar);
    if (n <= 30 || i % Math.ceil(n / 20) === 0) {
      svg.append(s("text", { class: "axis", x: pad.l + (i + 0.5) * bw, y: H - 6, "text-anchor": "middle" }, i + 1));
    }
  });
  const my = yOf(median);
  svg.append(s("line", { class: "median", x1: pad.l, x2: W - pad.r, y1: my, y2: my }));
  return h("figure", { class: "chart-figure" }, svg,
    h("figcaption", {}, `Per-step time (${n} steps). Dashed line: median ${secs(median)}; `
      + "orange bars: over 1.5 × the median."));
}
