"""``steadygen bench`` from parsed options to a written report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from steadygen.bench.interfere import InterferenceSpec
from steadygen.bench.report import write_report
from steadygen.bench.runner import BenchConfig, BenchPlan, build_targets, run_bench
from steadygen.config import Settings
from steadygen.errors import ConfigError
from steadygen.request import parse_size


def run_bench_command(settings: Settings, opts: dict[str, Any], command: str) -> int:
    command = _readable(command)
    configs = [BenchConfig.parse(c) for c in opts["configs"]]
    if len({c.name for c in configs}) != len(configs):
        raise ConfigError("--config names must differ")
    request: dict[str, Any] = {
        "prompt": "a lighthouse at dusk, benchmark",
        "steps": opts["steps"],
        "guidance": opts["guidance"],
        "n": opts["n"],
    }
    if opts.get("size"):
        request["width"], request["height"] = parse_size(opts["size"], field="--size")
    if opts["runs"] < 2:
        raise ConfigError(f"--runs must be at least 2 (got {opts['runs']})")
    if opts.get("rate") is not None and opts["rate"] <= 0:
        raise ConfigError(f"--rate must be above 0 arrivals per second (got {opts['rate']})")
    interfere = InterferenceSpec.parse(opts["interfere"]) if opts.get("interfere") else None
    if interfere is not None and interfere.kind in ("gpu", "vram") and not _cuda_here():
        raise ConfigError(
            f"--interfere {interfere.kind} needs a CUDA GPU on this machine and there is none; "
            "use --interfere cpu, or run the benchmark where the GPU is"
        )
    plan = BenchPlan(
        request=request,
        runs=opts["runs"],
        rounds=opts["rounds"],
        clients=opts["clients"],
        rate=opts.get("rate"),
        warmup_runs=opts["warmup_runs"],
        interfere=interfere,
        interfere_every=max(1, opts["interfere_every"]),
    )

    def say(msg: str) -> None:
        print(f"bench: {msg}", file=sys.stderr, flush=True)

    say("starting targets (loading and warming the model)")
    targets = build_targets(configs, settings, opts.get("url"), opts.get("api_key"))
    try:
        records = run_bench(targets, plan, progress=say)
    finally:
        for t in targets.values():
            t.close()
    names = list(targets)
    paths = write_report(
        Path(opts["out"]), records, names, plan,
        {c.name: c.overrides for c in configs}, command,
    )
    print(paths["markdown"].read_text())
    say("report: " + ", ".join(str(p) for p in paths.values()))
    return 0


def _cuda_here() -> bool:
    """Asked before any model loads: a GPU interferer without a GPU is refused at once."""
    from steadygen.engine.device import cuda_available

    return cuda_available()


def _readable(command: str) -> str:
    """The command as a user types it: ``steadygen bench ...``, not the script's full path."""
    first, _, rest = command.partition(" ")
    return f"{Path(first).name} {rest}" if first.endswith("steadygen") else command
