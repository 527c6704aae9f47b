"""Regenerate the figures quoted in docs/ from the benchmarks' raw output.

Each benchmark writes its figures, with the command line and the machine, to
docs/figures/<name>.json (``steadygen bench`` writes docs/bench/<dir>/report.json). In the
Markdown, a marked region holds what is rendered from one such file; the prose around it
stays hand-written:

    <!-- figures:eta_accuracy -->
    (generated: the command, the machine, the table)
    <!-- /figures -->

    python benchmarks/render_docs.py            # rewrite every region from its file
    python benchmarks/render_docs.py --check    # exit 1 if a region is stale or its file missing

benchmarks/run_all.sh runs every CPU benchmark, then this.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
FIGURES = DOCS / "figures"
REGION = re.compile(r"(<!-- figures:([a-z0-9_]+) -->\n)(.*?)(<!-- /figures -->)", re.S)
MiB = 1 << 20

Renderer = Callable[[dict[str, Any]], str]


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def pct(x: float) -> str:
    return f"{x * 100:.1f} %"


def machine(d: dict[str, Any]) -> str:
    """One line: where and when the figures were measured."""
    m, v = d.get("machine", {}), d.get("versions", {})
    load = m.get("loadavg_1m_5m_15m")
    parts = [f"{m.get('cpu_count')} CPUs", f"Python {m.get('python')}"]
    parts += [f"{name} {v[name]}" for name in ("steadygen", "torch") if v.get(name)]
    if m.get("omp_num_threads"):
        parts.append(f"OMP_NUM_THREADS={m['omp_num_threads']}")
    if load:
        parts.append(f"load average {load[0]:.1f} at the end")
    parts.append(str(m.get("time_utc", "?"))[:10])
    return ", ".join(parts)


def header(d: dict[str, Any]) -> str:
    return f"`{d['command']}` ({machine(d)})\n"


def ordered(keys: Any, first: list[str]) -> list[str]:
    """Keys in the order the docs use (the JSON files have theirs sorted), then the rest."""
    keys = list(keys)
    return [k for k in first if k in keys] + sorted(k for k in keys if k not in first)


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def sampler_overhead(d: dict[str, Any]) -> str:
    out = header(d) + "\n" + table(
        ["sampler", "CPU seconds per second", "CPU ms per sample"],
        [[f"{r['rate_hz']:g} Hz", f"{r['cpu_s_per_s']:.3f}", f"{r['cpu_ms_per_sample']:.2f}"]
         for r in d["sampler_cpu"]],
    )
    g = d.get("generation")
    if not g:
        return out + "\nGeneration was not measured (the engine was not available).\n"
    rows = [[label, f"{g['median_s'][label]:.3f}", f"{g['ratio_to_off'][label]:.2f}",
             f"{g['paired_ratio_median'][label]:.2f}", f"{g['median_engine_cpu_s'][label]:.3f}"]
            for label in ordered(g["median_s"], ["off"])]
    return out + (f"\nGeneration on the tiny model at {g['size']}, {g['steps']} steps, "
                  f"{g['pairs']} interleaved rounds after {g['warmup']} warm-up:\n\n") + table(
        ["sampler", "median s", "ratio to off", "median paired ratio", "engine CPU s"], rows)


def _ratio_cell(entry: dict[str, Any]) -> str:
    r = entry.get("ratio_to_baseline")
    return "-" if r is None else f"{r['median']:.3f} ({r['p25']:.3f} to {r['p75']:.3f})"


ENGINE_LABELS = {"plain": "plain diffusers", "engine": "steadygen engine",
                 "engine-nocache": "steadygen engine, prompt cache off"}


def engine_overhead(d: dict[str, Any]) -> str:
    variants = d["summary"]["variants"]
    rows = [[ENGINE_LABELS.get(k, k), ms(variants[k]["seconds"]["median"]),
             _ratio_cell(variants[k])] for k in ordered(variants, list(ENGINE_LABELS))]
    same = ", ".join(
        f"{k} {'yes' if v['same'] else 'NO'} (at most {v['max_level_difference']} level apart "
        f"on {v['pixels_differing']:.4%} of pixels)" if isinstance(v, dict)
        else f"{k} {'yes' if v else 'NO'}" for k, v in d["same_image_as_plain"].items())
    ratio = variants["engine"]["ratio_to_baseline"]["median"]
    return header(d) + "\n" + table(
        ["variant", f"median ({d['params']['clock']} clock)",
         "median of per-round ratios to plain (IQR)"], rows,
    ) + (f"\nSame image as plain: {same}. Engine / plain {ratio:.3f}: "
         f"{'meets' if d['meets_target'] else 'misses'} the target of at most "
         f"{d['target_ratio']}.\n")


HTTP_LABELS = {"direct": "direct (`Engine.generate`)",
               "jobs": "`POST /v1/jobs` + SSE until done",
               "openai": "OpenAI route, `b64_json`",
               "jobs-nosampler": "`POST /v1/jobs`, sampler off"}


def http_overhead(d: dict[str, Any]) -> str:
    rows = []
    variants = d["summary"]["variants"]
    for name in ordered(variants, list(HTTP_LABELS)):
        entry, v = variants[name], d["verdicts"].get(name)
        over = None if v is None else v["overhead_s_median_of_differences"]
        rows.append([HTTP_LABELS.get(name, name), ms(entry["seconds"]["median"]),
                     "-" if v is None else f"{v['ratio_median']:.3f}",
                     "-" if over is None else f"{over * 1000:+.1f} ms"])
    s = d["jobs_split_s"]
    verdicts = ", ".join(f"{k} {'meets' if v['meets_target'] else 'misses'}"
                         for k, v in d["verdicts"].items())
    return header(d) + "\n" + table(
        ["path", "median", "median ratio to direct", "median difference"], rows,
    ) + (f"\nTarget: at most {ms(d['target_s'])} (3 % or 10 ms, the larger): {verdicts}. "
         f"Inside each `/v1/jobs` job (medians): the engine ran "
         f"{s['engine_in_server_minus_direct_s'] * 1000:+.1f} ms against direct, queue wait "
         f"{ms(s['queue_wait_s'])}, HTTP, SSE and database work {ms(s['http_sse_store_s'])}. "
         f"CPU time per job: {ms(s['direct_cpu_s'])} direct, {ms(s['server_process_cpu_s'])} "
         f"for the whole server process, whose threads waited "
         f"{ms(s['server_run_queue_delay_s'])} for a CPU.\n")


def concurrency(d: dict[str, Any]) -> str:
    f = d["figures"]
    rows = [[f"`--concurrency {name[1:]}`", ms(v["service_p50_s"]), ms(v["service_p99_s"]),
             f"{v['service_p99_over_p50']:.2f}", ms(v["latency_p50_s"]), ms(v["latency_p99_s"]),
             f"{v['throughput_jobs_s']:.2f}"] for name, v in ((n, f[n]) for n in ordered(f, []))]
    p = d["params"]
    slower = f["c4"]["service_p50_s"] / f["c1"]["service_p50_s"]
    return header(d) + (f"\n{p['clients']} clients, {p['jobs_per_client']} jobs each per "
                        f"round, {p['rounds']} rounds per server after {p['warmup']} warm-up; "
                        f"tiny model {p['size']}, {p['steps']} steps.\n\n") + table(
        ["server", "service p50", "service p99", "p99/p50", "latency p50", "latency p99",
         "jobs/s"], rows,
    ) + f"\nService time p50 at `--concurrency 4` over `--concurrency 1`: {slower:.1f}x.\n"


def eta_accuracy(d: dict[str, Any]) -> str:
    p = d["params"]
    half = p["burst_size"] // 2

    def row(label: str, f: dict[str, float]) -> list[str]:
        bias = f["rel_error_median"]
        word = "too long" if bias > 0 else "too short"
        return [label, f"{f['jobs']:.0f}", pct(f["abs_rel_error_median"]),
                pct(f["abs_rel_error_p90"]), f"{bias * 100:+.1f} % (ETAs {word})"]

    return header(d) + (f"\n{p['bursts']} bursts of {p['burst_size']} jobs mixing "
                        f"{', '.join(p['sizes'])} with {', '.join(map(str, p['steps']))} "
                        f"steps, after one warm-up job per shape.\n\n") + table(
        ["jobs", "n", "median relative error", "p90", "bias (median)"],
        [row("all", d["overall"]), row(f"first {half} of each burst", d["first_half"]),
         row(f"last {p['burst_size'] - half} of each burst", d["second_half"])],
    )


def workers_throughput(d: dict[str, Any]) -> str:
    p = d["params"]
    rates, per_job = d["rates_jobs_s"], d["per_job_s"]
    rows = [[k, ", ".join(f"{r:.2f}" for r in rates[k]), f"{d['median_jobs_s'][k]:.2f}",
             ms(per_job[k]["service_s"]), ms(per_job[k]["cpu_s"]), ms(per_job[k]["run_delay_s"])]
            for k in ("1", "2")]
    quiet = d["quiet_pair_ratios"]
    q = (f"ratio {', '.join(f'{r:.2f}' for r in quiet)}, median {_median(quiet):.2f}"
         if quiet else "none")
    sampler = "off" if not p["sampler_hz"] else f"{p['sampler_hz']:g} Hz"
    return header(d) + (
        f"\nTiny model {p['size']}x{p['size']}, {p['steps']} steps, one torch thread per "
        f"worker, {p['jobs']} jobs per round, {p['pairs']} pairs of rounds (1 worker, then 2), "
        f"Redis append-only with fsync {p['appendfsync']}, telemetry sampler {sampler}; "
        f"load average {d['load_before_1m']:.1f} before.\n\n") + table(
        ["workers", "jobs/s per round", "median", "per job: service", "worker CPU",
         "waiting for a CPU"], rows,
    ) + (f"\nRatio 2 / 1 workers: **{d['ratio_of_medians']:.2f}** (medians); within each pair "
         f"{', '.join(f'{r:.2f}' for r in d['pair_ratios'])}, median "
         f"{_median(d['pair_ratios']):.2f}. CPU pressure during each pair (PSI 'some'): "
         f"{', '.join(f'{x:.0%}' for x in d['pair_cpu_pressure'])}. Pairs below "
         f"{p['quiet_pressure']:.0%} CPU pressure: {q}.\n")


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return math.nan if not s else (s[len(s) // 2] + s[(len(s) - 1) // 2]) / 2


def soak(d: dict[str, Any]) -> str:
    samples = d["samples"]

    def rss_at(jobs: float) -> float:
        return min(samples, key=lambda s: abs(s["jobs_done"] - jobs))["rss_bytes"] / MiB

    n, mid = d["jobs"], d["jobs"] // 2
    subs = d["subscribers_end"]
    row = [f"{n}", f"{d['jobs_per_s']:.1f}",
           f"{d['rss_early_bytes'] / MiB:.1f} → {d['rss_late_bytes'] / MiB:.1f} MiB "
           f"({d['rss_growth_bytes'] / MiB:+.1f})",
           f"{d['fds_early']:.0f} → {d['fds_late']:.0f}",
           f"{d['threads_early']:.0f} → {d['threads_late']:.0f}",
           "-" if subs is None else f"{subs:.0f}", ms(d["healthz_max_s"])]
    return header(d) + "\n" + table(
        ["jobs", "jobs/s", "RSS early → late", "fds", "threads", "subscribers at end",
         "/healthz max"], [row],
    ) + (f"\nRSS rose {rss_at(mid) - rss_at(0):.1f} MiB from job 0 to job {mid} and "
         f"{rss_at(n) - rss_at(mid):.1f} MiB from job {mid} to job {n}.\n")


def _ci(c: dict[str, float], unit: str = "") -> str:
    return f"{c['value']:.3f}{unit} [{c['low']:.3f}, {c['high']:.3f}]"


def ab(report: dict[str, Any]) -> str:
    meta, cfg = report["meta"], report["configs"]
    stats = ("mean", "cv", "p99_over_p50")
    rows = [[name, *(_ci(cfg[name]["latency_ci"][s]) for s in stats)] for name in ordered(cfg, [])]
    diffs = {x["statistic"]: x for x in report["differences"]}

    def diff(s: str) -> str:
        x = diffs[s]
        word = "significant" if x["significant"] else "not significant"
        return f"{x['value']:+.3f} [{x['low']:.3f}, {x['high']:.3f}], {word}"

    rows.append([f"{diffs['mean']['a']} - {diffs['mean']['b']}", *(diff(s) for s in stats)])
    out = (f"```\n{meta['command']}\n```\n\n{meta['when']}, steadygen {meta['steadygen']}, "
           f"Python {meta['python']}.\n\n" + table(["", "mean (s)", "CV", "p99/p50"], rows))
    out += (f"\np99: A - B = {diffs['p99']['value']:+.2f} s [{diffs['p99']['low']:.2f}, "
            f"{diffs['p99']['high']:.2f}]. Medians: "
            + "; ".join(f"{name} queue wait {c['queue_wait']['p50']:.3f} s, service "
                        f"{c['service']['p50']:.3f} s" for name, c in cfg.items()) + ".")
    out += " Main cause named per run: " + "; ".join(
        f"{name} " + ", ".join(f"{cause} {n}" for cause, n in sorted(
            c["attribution"]["main_cause_counts"].items(), key=lambda kv: (-kv[1], kv[0])))
        for name, c in cfg.items()) + ".\n"
    if meta["plan"].get("interfere"):
        out += "\nClean against interfered means: " + ", ".join(
            f"{name} {c['clean']['mean']:.3f} s against {c['interfered']['mean']:.3f} s"
            for name, c in cfg.items()) + ". Runs with `cpu_contention` named: " + "; ".join(
            f"{name} {_named(report, name, True)} interfered and "
            f"{_named(report, name, False)} clean" for name in cfg) + ".\n"
    return out


def _named(report: dict[str, Any], config: str, interfered: bool,
           cause: str = "cpu_contention") -> str:
    runs = [r for r in report["runs"] if r["config"] == config and not r["warmup"]
            and r["interfered"] == interfered]
    named = sum(1 for r in runs if (r.get("causes") or {}).get(cause, 0) > 0)
    return f"{named} of {len(runs)}"


def preview_overhead(d: dict[str, Any]) -> str:
    p = d["params"]
    rows = []
    for size, r in d["sizes"].items():
        raw = r["preview_cost_every_step"]
        rows.append([
            size, ms(r["step_s"]["median"]),
            f"{ms(r['preview_s']['median'])} ({r['jpeg_bytes_median'] / 1000:.1f} kB)",
            f"{pct(r['cost_per_step_every'])} (per-round IQR {pct(raw['p25'])} to "
            f"{pct(raw['p75'])})",
            f"**{pct(r['cost_per_step_budget'])}** (plain sums: "
            f"{pct(r['cost_per_step_budget_by_sums']['median'])})",
            f"{r['steps_with_preview_budget'] * 100:.0f} %",
            f"{r['loop_ratio_every_off']['median']:.2f} / "
            f"{r['loop_ratio_budget_off']['median']:.2f}",
        ])
    return header(d) + (
        f"\nTiny model, {p['steps']} steps, {p['torch_threads']} torch thread, "
        f"{p['warmup']} warm-up rounds then {p['pairs']} interleaved rounds of: no preview, "
        f"a preview at every step, the {pct(d['target_cost_per_step'])} budget.\n\n") + table(
        ["size", "median step", "median preview", "every step: cost per step",
         "budget: cost per step", "steps with a preview (budget)",
         "loop time per step vs off (every / budget)"], rows)


@dataclass(frozen=True)
class Figure:
    source: Path
    render: Renderer
    command: str  # what produces the source


def figures() -> dict[str, Figure]:
    def bench(name: str, render: Renderer) -> Figure:
        return Figure(FIGURES / f"{name}.json", render, "benchmarks/run_all.sh")

    return {
        "sampler_overhead": bench("sampler_overhead", sampler_overhead),
        "engine_overhead": bench("engine_overhead", engine_overhead),
        "engine_overhead_cpu": bench("engine_overhead_cpu", engine_overhead),
        "http_overhead": bench("http_overhead", http_overhead),
        "concurrency": bench("concurrency", concurrency),
        "eta_accuracy": bench("eta_accuracy", eta_accuracy),
        "workers_throughput": bench("workers_throughput", workers_throughput),
        "soak": bench("soak", soak),
        "preview_overhead": bench("preview_overhead", preview_overhead),
        "ab": Figure(DOCS / "bench/ab/report.json", ab, "benchmarks/run_all.sh"),
        "ab_interference": Figure(DOCS / "bench/ab-interference/report.json", ab,
                                  "benchmarks/run_all.sh"),
    }


class MissingFigure(Exception):
    pass


def render_text(text: str, known: dict[str, Figure]) -> tuple[str, list[str]]:
    """The Markdown with every region rendered from its source; the regions whose source is
    missing are left as they are and named in the second value."""
    missing: list[str] = []

    def one(m: re.Match[str]) -> str:
        name = m.group(2)
        if name not in known:
            raise MissingFigure(f"unknown figure region {name!r}; known: {sorted(known)}")
        fig = known[name]
        if not fig.source.is_file():
            missing.append(f"{name}: {_shown(fig.source)} (made by {fig.command})")
            return m.group(0)
        body = fig.render(json.loads(fig.source.read_text()))
        return m.group(1) + body + m.group(4)

    return REGION.sub(one, text), missing


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def regions(text: str) -> list[str]:
    return [m.group(2) for m in REGION.finditer(text)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true",
                   help="change nothing; exit 1 if a region is stale or its figures missing")
    p.add_argument("docs", nargs="*", type=Path, help="Markdown files (default: docs/*.md)")
    args = p.parse_args(argv)
    known = figures()
    stale, missing = [], []
    for path in args.docs or sorted(DOCS.glob("*.md")):
        text = path.read_text()
        new, absent = render_text(text, known)
        missing += [f"{path.name}: {a}" for a in absent]
        if new != text:
            stale.append(str(path))
            if not args.check:
                path.write_text(new)
                print(f"rendered {path}")
    for m in missing:
        print(f"missing figures for {m}", file=sys.stderr)
    if args.check and stale:
        print("stale: " + ", ".join(stale) + " (run python benchmarks/render_docs.py)",
              file=sys.stderr)
    return 1 if missing or (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
