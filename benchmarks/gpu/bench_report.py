"""Statistics, the partial-as-it-goes JSON report and the printed table for zimage_full.py."""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

SCHEMA = "steadygen.gpu_bench/1"


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in 0..100."""
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: list[float]) -> dict[str, float]:
    """median, p90, p99, mean, std, CV (std / mean), min, max of run times in seconds."""
    if not values:
        return {"n": 0}
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {
        "n": len(values),
        "median_s": statistics.median(values),
        "p90_s": percentile(values, 90),
        "p99_s": percentile(values, 99),
        "mean_s": mean,
        "std_s": std,
        "cv": std / mean if mean > 0 else math.nan,
        "min_s": min(values),
        "max_s": max(values),
    }


def rel_l2(a: Any, b: Any) -> float:
    """||a - b|| / ||b|| in float64 (torch tensors or numpy arrays)."""
    import numpy as np

    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    denom = float(np.linalg.norm(y))
    return float(np.linalg.norm(x - y)) / denom if denom else math.inf


def psnr_db(a: Any, b: Any) -> float:
    """PSNR of two uint8 images (peak 255)."""
    import numpy as np

    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


class Report:
    """The JSON document, rewritten atomically after every stage so a killed run leaves
    everything measured so far."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path = path
        self.t0 = time.monotonic()
        self.data = {"schema": SCHEMA, "status": "running", **data, "timeline": [],
                     "errors": []}

    def stage(self, name: str, **info: Any) -> None:
        self.data["timeline"].append({"stage": name, "t_s": round(self.elapsed(), 2), **info})
        print(f"[{self.elapsed():7.1f} s] {name}"
              + "".join(f" {k}={v}" for k, v in info.items()), flush=True)
        self.save()

    def error(self, where: str, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"[:2000]
        self.data["errors"].append({"where": where, "error": text})
        print(f"[{self.elapsed():7.1f} s] ERROR in {where}: {text}", flush=True)
        self.save()
        return text

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        text = json.dumps(_finite(self.data), indent=2, default=_jsonable, allow_nan=False)
        tmp.write_text(text + "\n")
        os.replace(tmp, self.path)


def _finite(value: Any) -> Any:
    """Standard JSON: an infinite PSNR (identical images) or a NaN becomes null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def _ms(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x * 1000:8.1f}"


def table(data: dict[str, Any]) -> str:
    """The human summary: one line per configuration, then the floor."""
    head = (f"{'config':<11} {'status':<8} {'n':>3} {'median':>8} {'p90':>8} {'p99':>8} "
            f"{'CV%':>6} {'speedup':>7} {'xfloor':>6} {'peakGiB':>7}  correctness")
    lines = [head, "-" * len(head)]
    for name, c in data.get("configs", {}).items():
        s = c.get("stats", {})
        corr = c.get("correctness", {})
        if "passed" in corr:
            verdict = "ok" if corr["passed"] else "FAILED"
            corr_txt = f"{verdict} rel {corr.get('latent_rel_l2_vs_baseline', math.nan):.2e}"
        else:
            corr_txt = "-"
        mem = c.get("memory", {}).get("standalone_peak_bytes")
        cv = s.get("cv")
        lines.append(
            f"{name:<11} {c.get('status', '?'):<8} {s.get('n', 0):>3} {_ms(s.get('median_s'))} "
            f"{_ms(s.get('p90_s'))} {_ms(s.get('p99_s'))} "
            f"{'-' if cv is None else f'{cv * 100:6.2f}':>6} "
            f"{_fmt(c.get('speedup_vs_baseline'), '7.2f')} {_fmt(c.get('floor_ratio'), '6.2f')} "
            f"{_fmt(None if mem is None else mem / 2**30, '7.1f')}  {corr_txt}"
        )
        if c.get("status") not in ("ok", None) and c.get("reason"):
            lines.append(f"{'':<11}   {c['reason'][:110]}")
    s = data.get("summary", {})
    if s.get("floor_s"):
        lines.append(
            f"floor: {_si(s['per_image_tflop'] * 1e12)}FLOP per image at "
            f"{_si(s['matmul_tflops'] * 1e12)}FLOP/s measured bf16 = {s['floor_s'] * 1000:.1f} "
            "ms; times in ms per image, xfloor = median / floor"
        )
    return "\n".join(lines)


def _si(x: float) -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if x >= scale:
            return f"{x / scale:.3g} {prefix}"
    return f"{x:.3g} "


def _fmt(x: float | None, spec: str) -> str:
    width = int(spec.split(".")[0])
    return f"{'-':>{width}}" if x is None or not math.isfinite(x) else format(x, spec)
