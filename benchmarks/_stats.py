"""Small helpers the benchmark scripts share: run variants interleaved, summarise with medians
and per-round ratios, and write the figures with the machine they came from.

Figures are medians over repeated runs with warm-up excluded; comparisons are ratios measured
side by side in one run, interleaved (ABAB...), because machines are often shared and noisy.

    from _stats import interleave, summarize, write_json

    times = interleave({"plain": run_plain, "engine": run_engine}, rounds=20, warmup=3)
    summary = summarize(times, baseline="plain")
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "docs" / "figures"


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes (``time.perf_counter``)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cpu_timed(fn: Callable[[], Any]) -> float:
    """CPU seconds this process spends in one call of ``fn`` (``time.process_time``, all
    threads). On a shared, busy machine it leaves out time spent waiting for a CPU, so
    like-for-like comparisons of CPU-bound work stay steady; it misses time on a GPU."""
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def interleave(
    variants: Mapping[str, Callable[[], Any]],
    rounds: int,
    warmup: int = 3,
    *,
    alternate: bool = False,
    clock: Callable[[Callable[[], Any]], float] = timed,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, list[float]]:
    """Run every variant once per round, in turn (A B A B ...), after ``warmup`` untimed
    rounds; returns name -> seconds per round, index k of each list from the same round.

    ``alternate`` reverses the order on odd rounds (A B, B A, ...), which cancels a
    first-or-second position effect when there is one. ``clock`` times one call; pass your
    own to use a duration the variant measures itself.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1 (got {rounds})")
    if not variants:
        raise ValueError("no variants to run")
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[::-1] if alternate and r % 2 else names
        for name in order:
            times[name].append(clock(variants[name]))
        if progress is not None:
            progress(r + 1, rounds)
    return times


def median(values: Sequence[float]) -> float:
    if not values:
        return math.nan
    return float(statistics.median(values))


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile, q in [0, 1]; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per-round ratios numerator[k] / denominator[k] (same round, side by side)."""
    if len(numerator) != len(denominator):
        raise ValueError("the two series must come from the same rounds")
    return [a / b for a, b in zip(numerator, denominator, strict=True) if b > 0]


def describe(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, min, max and count of a series."""
    return {
        "median": median(values),
        "p25": quantile(values, 0.25),
        "p75": quantile(values, 0.75),
        "min": min(values) if values else math.nan,
        "max": max(values) if values else math.nan,
        "n": len(values),
    }


def summarize(times: Mapping[str, Sequence[float]], baseline: str) -> dict[str, Any]:
    """Per variant: its times described, and its per-round ratio to ``baseline`` described."""
    if baseline not in times:
        raise ValueError(f"baseline {baseline!r} is not one of {sorted(times)}")
    out: dict[str, Any] = {"baseline": baseline, "variants": {}}
    for name, series in times.items():
        entry: dict[str, Any] = {"seconds": describe(series)}
        if name != baseline:
            entry["ratio_to_baseline"] = describe(ratios(series, times[baseline]))
        out["variants"][name] = entry
    return out


def machine_info() -> dict[str, Any]:
    """Where the figures came from (no third-party imports; add library versions yourself)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "loadavg_1m_5m_15m": list(load) if load else None,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def command_line() -> str:
    """The command that produced the figures, to print and store beside them (the script's
    path relative to the repository, as the docs quote it)."""
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(REPO)
    return " ".join(["python", str(script), *sys.argv[1:]])


def figures_path(name: str) -> Path:
    """Where a benchmark writes its figures by default: docs/figures/<name>.json, which
    benchmarks/render_docs.py turns into the tables in docs/."""
    return FIGURES / f"{name}.json"


def package_versions(*names: str) -> dict[str, str | None]:
    """Installed versions of these distributions (None when missing), without importing them."""
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def write_json(path: str | Path, payload: Mapping[str, Any]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return out


def write_figures(path: str | Path, name: str, payload: Mapping[str, Any]) -> Path:
    """Write a benchmark's figures with what render_docs.py needs beside them: the
    benchmark's name, the command line, the machine and the library versions."""
    full = {
        **payload,
        "benchmark": name,
        "command": command_line(),
        "machine": {**machine_info(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
    }
    full["versions"] = {**package_versions("steadygen", "torch", "diffusers", "transformers"),
                        **payload.get("versions", {})}
    return write_json(path, full)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"
