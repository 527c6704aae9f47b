"""The benchmark report: JSON (everything), Markdown (tables), PNG charts and one HTML page."""

from __future__ import annotations

import base64
import html
import json
import math
import platform
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steadygen import __version__
from steadygen.bench.runner import BenchPlan, RunRecord
from steadygen.bench.stats import bootstrap_ci, bootstrap_difference, summarize, value_range

CI_STATISTICS = ("mean", "cv", "p99_over_p50", "p50", "p99")

CAUSE_COLOURS = {
    None: "#4c78a8",
    "queue_wait": "#f58518",
    "cold_start": "#72b7b2",
    "gpu_clocks": "#e45756",
    "foreign_gpu_process": "#b279a2",
    "cpu_contention": "#eeca3b",
    "memory_management": "#9d755d",
    "offload": "#ff9da6",
    "adapter_switch": "#54a24b",
}


def analyse(records: Sequence[RunRecord], names: Sequence[str]) -> dict[str, Any]:
    """Per-configuration statistics with 95 % intervals, differences against the last
    configuration, attribution summary."""
    timed = [r for r in records if not r.warmup and r.state == "succeeded"]
    per: dict[str, Any] = {}
    for name in names:
        runs = [r for r in timed if r.config == name]
        warm = [r for r in records if r.config == name and r.warmup]
        per[name] = {
            "runs": len(runs),
            "failed": sum(1 for r in records if r.config == name and r.state != "succeeded"),
            "latency": summarize([r.latency_s for r in runs]).to_dict(),
            "latency_ci": {
                stat: bootstrap_ci([r.latency_s for r in runs], stat).to_dict()
                for stat in CI_STATISTICS
            },
            "service": summarize([r.service_s or 0.0 for r in runs]).to_dict(),
            "queue_wait": summarize([r.queue_wait_s or 0.0 for r in runs]).to_dict(),
            "warmup_runs": [
                {"latency_s": r.latency_s, "service_s": r.service_s, "main_cause": r.main_cause}
                for r in warm
            ],
            "interfered": summarize([r.latency_s for r in runs
                                     if r.interfered and r.interference_valid]).to_dict(),
            "interfered_invalid": sum(1 for r in runs if not r.interference_valid),
            "clean": summarize([r.latency_s for r in runs if not r.interfered]).to_dict(),
            "telemetry": _telemetry_ranges(runs),
            "attribution": _attribution_summary(runs),
        }
    diffs = []
    if len(names) > 1:
        base = names[-1]
        b = [r.latency_s for r in timed if r.config == base]
        for name in names[:-1]:
            a = [r.latency_s for r in timed if r.config == name]
            for stat in ("mean", "p50", "p99", "cv", "p99_over_p50"):
                diffs.append(
                    bootstrap_difference(a, b, stat, names=(name, base)).to_dict()
                )
    return {"configs": per, "differences": diffs}


def _telemetry_ranges(runs: Sequence[RunRecord]) -> dict[str, Any]:
    """As in the known A/B write-ups: ranges of GPU utilisation and SM clock, and the memory
    jitter (spread of used memory); host CPU utilisation when there is no GPU."""
    util: list[float] = []
    clock: list[float] = []
    power: list[float] = []
    temp: list[float] = []
    host_cpu: list[float] = []
    for r in runs:
        t = r.telemetry or {}
        for g in (t.get("gpus") or {}).values():
            for key, out in (("util_gpu_pct", util), ("sm_clock_hz", clock),
                             ("power_w", power), ("temp_c", temp)):
                s = g.get(key)
                if s:
                    out += [s["min"], s["max"]]
        cpu = (t.get("host") or {}).get("cpu_util_pct")
        if cpu:
            host_cpu += [cpu["min"], cpu["max"]]
    return {
        "gpu_util_pct": value_range(util),
        "sm_clock_hz": value_range(clock),
        "power_w": value_range(power),
        "temp_c": value_range(temp),
        "host_cpu_util_pct": value_range(host_cpu),
    }


def _attribution_summary(runs: Sequence[RunRecord]) -> dict[str, Any]:
    seconds: dict[str, float] = defaultdict(float)
    for r in runs:
        for kind, s in r.causes.items():
            seconds[kind] += s
    return {
        "slow_runs": sum(1 for r in runs if r.slow),
        "main_cause_counts": dict(Counter(r.main_cause or "none" for r in runs)),
        "cause_seconds": dict(seconds),
    }


def write_report(
    out: Path, records: Sequence[RunRecord], names: Sequence[str], plan: BenchPlan,
    configs: dict[str, dict[str, Any]], command: str,
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    analysis = analyse(records, names)
    meta = {
        "steadygen": __version__,
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node(),
        "python": platform.python_version(),
        "command": command,
        "plan": {k: (v.__dict__ if hasattr(v, "__dict__") else v)
                 for k, v in plan.__dict__.items()},
        "configs": configs,
    }
    data = {"meta": meta, **analysis, "runs": [r.to_dict() for r in records]}
    paths = {"json": out / "report.json"}
    paths["json"].write_text(json.dumps(data, indent=2, default=str))
    charts = _charts(out, records, names)
    paths.update(charts)
    paths["markdown"] = out / "report.md"
    paths["markdown"].write_text(_markdown(meta, analysis, names, charts))
    paths["html"] = out / "report.html"
    paths["html"].write_text(_html(meta, analysis, names, charts))
    return paths


def _fmt(x: float | None, unit: str = "s") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.3f}" + (f" {unit}" if unit else "")


def _markdown(meta: dict[str, Any], a: dict[str, Any], names: Sequence[str],
              charts: dict[str, Path]) -> str:
    lines = [
        "# steadygen bench report",
        "",
        f"`{meta['command']}`",
        "",
        f"{meta['when']} on {meta['host']}, steadygen {meta['steadygen']}.",
        "",
        "## Latency per configuration (client-observed, warm-up excluded)",
        "",
        "| config | runs | mean | std | CV | p50 | p90 | p99 | p99/p50 | min | max |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        s = a["configs"][name]["latency"]
        lines.append(
            f"| {name} | {s['n']} | {_fmt(s['mean'])} | {_fmt(s['std'])} | {_fmt(s['cv'], '')} "
            f"| {_fmt(s['p50'])} | {_fmt(s['p90'])} | {_fmt(s['p99'])} "
            f"| {_fmt(s['p99_over_p50'], '')} | {_fmt(s['min'])} | {_fmt(s['max'])} |"
        )
    lines += ["", "## 95 % confidence intervals (bootstrap, per configuration)", "",
              "| config | mean | CV | p99/p50 | p50 | p99 |", "|---|---|---|---|---|---|"]
    for name in names:
        ci = a["configs"][name].get("latency_ci", {})
        lines.append(f"| {name} | " + " | ".join(_ci(ci.get(stat), unit) for stat, unit in (
            ("mean", "s"), ("cv", ""), ("p99_over_p50", ""), ("p50", "s"), ("p99", "s"))) + " |")
    invalid = {n: a["configs"][n].get("interfered_invalid", 0) for n in names}
    if any(invalid.values()):
        lines += ["", "**Interference not proven**: "
                  + ", ".join(f"{n}: {k} run(s)" for n, k in invalid.items() if k)
                  + " ran in rounds whose interferers did not report a heartbeat all through "
                  "(see each run's `interference`); they are left out of the interfered "
                  "figures."]
    if any(a["configs"][n]["interfered"]["n"] for n in names):
        lines += ["", "## Clean and interfered runs (latency)", "",
                  "| config | runs | clean mean | clean p50 | clean p99 | interfered runs "
                  "| interfered mean | interfered p50 | interfered p99 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name in names:
            c, i = a["configs"][name]["clean"], a["configs"][name]["interfered"]
            lines.append(f"| {name} | {c['n']} | {_fmt(c['mean'])} | {_fmt(c['p50'])} "
                         f"| {_fmt(c['p99'])} | {i['n']} | {_fmt(i['mean'])} "
                         f"| {_fmt(i['p50'])} | {_fmt(i['p99'])} |")
    lines += ["", "## Queue wait and service time (medians)", "",
              "| config | queue wait p50 | service p50 | service p99 | failed |",
              "|---|---|---|---|---|"]
    for name in names:
        c = a["configs"][name]
        lines.append(f"| {name} | {_fmt(c['queue_wait']['p50'])} | {_fmt(c['service']['p50'])} "
                     f"| {_fmt(c['service']['p99'])} | {c['failed']} |")
    if a["differences"]:
        lines += ["", "## Differences (bootstrap 95 % CI)", "",
                  "| statistic | difference | value | 95 % CI | significant |",
                  "|---|---|---|---|---|"]
        for d in a["differences"]:
            lines.append(f"| {d['statistic']} | {d['a']} - {d['b']} | {_fmt(d['value'], '')} "
                         f"| [{_fmt(d['low'], '')}, {_fmt(d['high'], '')}] "
                         f"| {'yes' if d['significant'] else 'no'} |")
    lines += ["", "## Telemetry ranges", "", "| config | GPU util % | SM clock MHz | power W "
              "| temp C | host CPU % |", "|---|---|---|---|---|---|"]
    for name in names:
        t = a["configs"][name]["telemetry"]
        lines.append(f"| {name} | {_rng(t['gpu_util_pct'])} | {_rng(t['sm_clock_hz'], 1e6)} "
                     f"| {_rng(t['power_w'])} | {_rng(t['temp_c'])} "
                     f"| {_rng(t['host_cpu_util_pct'])} |")
    lines += ["", "## Attribution", "", "| config | slow runs | main causes | seconds by cause |",
              "|---|---|---|---|"]
    for name in names:
        at = a["configs"][name]["attribution"]
        causes = ", ".join(f"{k} {v:.2f}" for k, v in sorted(at["cause_seconds"].items()))
        mains = ", ".join(f"{k}: {v}" for k, v in sorted(at["main_cause_counts"].items()))
        lines.append(f"| {name} | {at['slow_runs']} | {mains} | {causes or '-'} |")
    lines += ["", "## Warm-up runs (excluded above)", ""]
    for name in names:
        for w in a["configs"][name]["warmup_runs"]:
            lines.append(f"- {name}: {_fmt(w['latency_s'])}"
                         + (f" ({w['main_cause']})" if w["main_cause"] else ""))
    lines += ["", "## Charts", ""]
    lines += [f"![{k}]({p.name})" for k, p in charts.items()]
    return "\n".join(lines) + "\n"


def _ci(e: dict[str, Any] | None, unit: str) -> str:
    if not e:
        return "-"
    return f"{_fmt(e['value'], unit)} [{_fmt(e['low'], '')}, {_fmt(e['high'], '')}]"


def _rng(r: dict[str, float] | None, scale: float = 1.0) -> str:
    if not r:
        return "-"
    return f"{r['min'] / scale:.0f} to {r['max'] / scale:.0f}"


def _charts(out: Path, records: Sequence[RunRecord], names: Sequence[str]) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: dict[str, Path] = {}
    timed = [r for r in records if not r.warmup]
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 2.6 * len(names)), squeeze=False,
                             sharey=True)
    for ax, name in zip(axes[:, 0], names, strict=False):
        runs = sorted((r for r in timed if r.config == name), key=lambda r: r.t_submit)
        for k, r in enumerate(runs):
            ax.bar(k, r.latency_s, color=CAUSE_COLOURS.get(r.main_cause, "#888"),
                   hatch="//" if r.interfered else None, edgecolor="#333", linewidth=0.3)
        ax.set_title(f"{name}: latency per run (colour: main cause; hatched: interference)",
                     fontsize=9)
        ax.set_ylabel("s")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in CAUSE_COLOURS.values()]
    labels = ["no cause" if k is None else k for k in CAUSE_COLOURS]
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    paths["latency"] = out / "latency.png"
    fig.savefig(paths["latency"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 3))
    for name in names:
        steps = [s for r in timed if r.config == name for s in r.steps_s]
        ax.plot(range(len(steps)), steps, ".", markersize=2, label=name)
    ax.set_title("per-step time, all timed runs in order", fontsize=9)
    ax.set_ylabel("s")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths["steps"] = out / "steps.png"
    fig.savefig(paths["steps"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 3))
    t0 = min((r.t_submit for r in records), default=0.0)
    has_gpu = any((r.telemetry or {}).get("gpus") for r in timed)
    plotted = False
    for name in names:
        runs = sorted((r for r in timed if r.config == name), key=lambda r: r.t_submit)
        xs = [r.t_submit - t0 for r in runs]
        if has_gpu:
            gpus = [list(((r.telemetry or {}).get("gpus") or {}).values()) for r in runs]
            clocks = [_median(g[0].get("sm_clock_hz")) if g else None for g in gpus]
            temps = [_median(g[0].get("temp_c")) if g else None for g in gpus]
            ax.plot(xs, _gaps([c / 1e6 if c else None for c in clocks]), ".-",
                    label=f"{name} SM MHz")
            ax2 = ax.twinx()
            ax2.plot(xs, _gaps(temps), "x", label=f"{name} temp C", color="#e45756")
            plotted = True
            continue
        # No GPU: what the host did to us instead, our threads' run-queue wait per second.
        waits = [_wait_share(r) for r in runs]
        if any(w is not None for w in waits):
            line = ax.plot(xs, _gaps(waits), "o", markersize=3,
                           label=f"{name} run-queue wait per s")[0]
            hit = [(x, w) for x, w, r in zip(xs, waits, runs, strict=True)
                   if r.interfered and w is not None]
            if hit:
                ax.plot(*zip(*hit, strict=True), "x", color=line.get_color(), markersize=7,
                        label=f"{name} interfered")
            plotted = True
    ax.set_title("SM clock and temperature over time" if has_gpu else
                 "no GPU: our threads' run-queue wait per second of service (CPU contention)",
                 fontsize=9)
    ax.set_xlabel("s since start")
    if not has_gpu:
        ax.set_ylabel("s / s")
    if plotted:
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    paths["clocks"] = out / "clocks.png"
    fig.savefig(paths["clocks"], dpi=110)
    plt.close(fig)
    return paths


def _gaps(values: Sequence[float | None]) -> list[float]:
    """None as NaN: matplotlib leaves a gap there."""
    return [math.nan if v is None else float(v) for v in values]


def _median(stats: dict[str, float] | None) -> float | None:
    return (stats or {}).get("median")


def _wait_share(r: RunRecord) -> float | None:
    delay = ((r.telemetry or {}).get("host") or {}).get("run_delay_s")
    return delay / r.service_s if delay is not None and r.service_s else None


def _html(meta: dict[str, Any], a: dict[str, Any], names: Sequence[str],
          charts: dict[str, Path]) -> str:
    md = _markdown(meta, a, names, {})
    body = []
    for line in md.splitlines():
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("|"):
            if set(line.replace("|", "").strip()) <= {"-"}:
                continue
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    text = _wrap_tables("\n".join(body))
    images = "".join(
        f'<figure><img alt="{k}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{k}</figcaption></figure>'
        for k, p in charts.items()
    )
    style = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;}"
             "table{border-collapse:collapse;margin:1em 0}td{border:1px solid #ccc;"
             "padding:3px 8px;font-size:13px}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>steadygen bench</title>"
            f"<style>{style}</style></head><body>{text}<h2>Charts</h2>{images}</body></html>")


def _wrap_tables(text: str) -> str:
    out, inside = [], False
    for line in text.splitlines():
        is_row = line.startswith("<tr>")
        if is_row and not inside:
            out.append("<table>")
            inside = True
        if not is_row and inside:
            out.append("</table>")
            inside = False
        out.append(line)
    if inside:
        out.append("</table>")
    return "\n".join(out)
