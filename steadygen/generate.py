"""``steadygen generate``: one request through the same validation and engine the server uses,
with a progress bar (step, it/s, ETA) and a timing summary."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from steadygen.compose import build_engine, build_sampler
from steadygen.config import Settings
from steadygen.request import parse_size, validate_request


def raw_request(prompt: str, opts: dict[str, Any], default_side: int) -> dict[str, Any]:
    """CLI options -> the mapping validate_request takes (None means 'use the default')."""
    raw: dict[str, Any] = {"prompt": prompt}
    if opts.get("size"):
        raw["width"], raw["height"] = parse_size(opts["size"], field="--size")
    else:
        raw["width"] = raw["height"] = default_side
    for key, name in (("steps", "steps"), ("guidance", "guidance"), ("seed", "seed"), ("n", "n")):
        if opts.get(key) is not None:
            raw[name] = opts[key]
    if opts.get("negative"):
        raw["negative_prompt"] = opts["negative"]
    return raw


def timing_table(timings: Any) -> Table:
    table = Table(title="timings", show_header=True, header_style="bold")
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    for phase, seconds in timings.phases().items():
        if phase == "queue":
            continue
        table.add_row(phase, f"{seconds:.3f}")
    table.add_row("total", f"{timings.total_s:.3f}", style="bold")
    steps = timings.steps_s
    if steps:
        med = sorted(steps)[len(steps) // 2]
        table.caption = (
            f"{len(steps)} steps: median {med * 1000:.1f} ms, "
            f"min {min(steps) * 1000:.1f}, max {max(steps) * 1000:.1f}"
        )
    return table


def telemetry_line(summary: dict[str, Any]) -> str:
    """One line on what the machine did during the job."""
    host = summary.get("host") or {}
    parts = [f"telemetry: {summary.get('n_samples', 0)} samples"]
    if host.get("run_delay_s") is not None:
        parts.append(f"our threads waited {host['run_delay_s']:.3f} s for a CPU")
    for index, gpu in (summary.get("gpus") or {}).items():
        clock = (gpu.get("sm_clock_hz") or {}).get("median")
        temp = (gpu.get("temp_c") or {}).get("max")
        if clock:
            parts.append(f"GPU {index} SM {clock / 1e6:.0f} MHz")
        if temp is not None:
            parts.append(f"max {temp:.0f} C")
    if summary.get("foreign_gpu_processes"):
        names = ", ".join(str(p.get("name")) for p in summary["foreign_gpu_processes"])
        parts.append(f"other GPU processes: {names}")
    return "; ".join(parts)


def run_generate(settings: Settings, prompt: str, **opts: Any) -> int:
    as_json = bool(opts.get("as_json"))
    err = Console(stderr=True)
    engine = build_engine(settings)
    req = validate_request(
        raw_request(prompt, opts, engine.spec.default_side),
        limits=settings.limits,
        models=[engine.model_name],
        default_model=engine.model_name,
    )
    err.print(
        f"model [bold]{engine.model_name}[/] on [bold]{engine.device}[/]"
        + (" (chosen: no --model given)" if not settings.model else "")
    )
    if engine.spec.noise_only:
        err.print(f"[yellow]note:[/] {engine.model_name} has random weights; its images are noise")
    if not engine.loaded:
        err.print("loading the model...")
        engine.load()
    out_dir = Path(opts.get("out") or "outputs")
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.2f} it/s  ETA {task.fields[eta]:.1f} s"),
    )
    with Progress(*columns, console=err, transient=True, disable=as_json) as bar:
        task = bar.add_task("steps", total=req.steps, rate=0.0, eta=0.0)

        def on_step(p: Any) -> None:
            rate = 1.0 / p.step_s if p.step_s > 0 else 0.0
            bar.update(task, completed=p.step, rate=rate, eta=p.remaining_s())

        sampler = build_sampler(settings, engine.device)
        sampler.start()
        mark = sampler.begin_job("cli")
        try:
            result = engine.generate(req, on_step=on_step, save_dir=out_dir)
        finally:
            window = sampler.end_job(mark)
            sampler.stop()
    t = result.timings
    if as_json:
        payload = {
            "paths": [str(p) for p in result.paths],
            "seed": req.seed,
            "seed_was_random": req.seed_was_random,
            "request": req.to_dict(),
            "model": result.model,
            "device": result.device,
            "notes": result.notes,
            "timings": t.public(),
            "telemetry": window.summary(),
        }
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return 0
    out = Console()
    for note in result.notes:
        out.print(f"[yellow]note:[/] {note}")
    for path in result.paths:
        out.print(f"wrote {path}")
    seed_note = " (random)" if req.seed_was_random else ""
    out.print(f"seed {req.seed}{seed_note}, {req.size}, {req.steps} steps")
    out.print(timing_table(t))
    out.print(telemetry_line(window.summary()))
    return 0
