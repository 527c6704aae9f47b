"""HTTP overhead: the same request through steadygen's HTTP API and through the engine
directly, on the tiny model (256x256, 8 steps, fixed seed by default).

  direct  ``Engine.generate(req, save_dir=...)`` in this process; it saves the PNG, as the
          server does.
  jobs    ``POST /v1/jobs``, then ``GET /v1/jobs/{id}/events`` (SSE) until ``succeeded``:
          the native API, timed by the client from before the POST to the terminal event.
  openai  ``POST /v1/images/generations`` with ``response_format=b64_json``: one call that
          waits for the job and answers with the PNG in base64.
  jobs-nosampler  ``jobs`` against a second server started with ``--sampler-hz 0``: how much
          of the overhead is the telemetry sampler (10 Hz by default) competing for the CPU.

Variants run interleaved (in order, then in reverse order, ...), warm-up rounds excluded;
figures are medians, per-round ratios and differences to ``direct``. The server is a real
``steadygen serve`` process with its defaults (telemetry sampler included); it and this
process share the machine's cores and take turns, so neither generates while the other does
(an idle server's sampler keeps sampling). For ``jobs`` the server's own view is kept too
(queue wait and engine time), so the overhead splits into the engine being slower inside
the server, the queue, and the rest. Both sides use one torch thread by default
(``--threads``). Target: overhead at most 3 % or 10 ms, whichever is larger.

    python benchmarks/http_overhead.py --pairs 40 --json docs/figures/http_overhead.json

``ServerProcess`` and ``follow_job`` here are shared with concurrency.py and eta_accuracy.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _stats
import httpx

PROMPT = "a lighthouse at dusk"
TARGET_RATIO = 0.03  # overhead as a fraction of the direct time
TARGET_ABS_S = 0.010  # ... or 10 ms, whichever is larger
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "steadygen-bench-cache"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A ``steadygen serve`` subprocess on a free port with its own data directory."""

    def __init__(self, cache_dir: Path, flags: list[str] | None = None,
                 env: dict[str, str] | None = None, threads: int = 0):
        self.port = free_port()
        self.data_dir = Path(tempfile.mkdtemp(prefix="steadygen-bench-data-"))
        self.log_path = self.data_dir / "server.log"
        self.env = {**os.environ, "STEADYGEN_CACHE_DIR": str(cache_dir), **(env or {})}
        if threads:
            self.env["OMP_NUM_THREADS"] = str(threads)
        self.cmd = [sys.executable, "-m", "steadygen.cli", "serve", "--port", str(self.port),
                    "--data-dir", str(self.data_dir), "--model", "zimage-tiny",
                    "--device", "cpu", *(flags or [])]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerProcess:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the server was not ready within 300 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    event, data = "", ""
    for line in lines:
        if not line:
            if data:
                yield event, json.loads(data)
            event, data = "", ""
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()


def follow_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """Block on the job's SSE stream until it ends; returns the terminal event's data."""
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as r:
        r.raise_for_status()
        for event, data in _sse(r.iter_lines()):
            if event == "succeeded":
                return data
            if event in ("failed", "cancelled"):
                raise RuntimeError(f"job {job_id} {event}: {data}")
    raise RuntimeError(f"the event stream of job {job_id} ended early")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=20, help="timed rounds (at least 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--size", default="256x256")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in both processes (OMP_NUM_THREADS for the server); "
                   "0 keeps torch's default. One by default: on a shared 2-core machine more "
                   "threads spin against each other and swamp the figures with noise")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                   help="where the tiny checkpoint is built (shared by both sides)")
    p.add_argument("--json", type=Path, default=_stats.figures_path("http_overhead"),
                   help="where to write the figures (default: %(default)s)")
    args = p.parse_args(argv)
    if args.pairs < 10:
        p.error("--pairs must be at least 10 for a median worth reporting")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    from steadygen import __version__
    from steadygen.config import Limits
    from steadygen.engine.engine import Engine
    from steadygen.engine.models import TINY
    from steadygen.engine.tiny import ensure_tiny_checkpoint
    from steadygen.request import validate_request

    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split("x"))
    ensure_tiny_checkpoint(args.cache_dir)  # built once, before the server needs it
    body = {"prompt": PROMPT, "width": width, "height": height, "steps": args.steps,
            "seed": args.seed}
    req = validate_request(body, limits=Limits(), models=[TINY], default_model=TINY)
    engine = Engine.create(model=TINY, device="cpu", cache_dir=args.cache_dir)
    engine.load()
    engine.warmup([(width, height)])
    out_dir = Path(tempfile.mkdtemp(prefix="steadygen-bench-direct-"))

    quiet = ServerProcess(args.cache_dir, ["--sampler-hz", "0"], threads=args.threads)
    with ServerProcess(args.cache_dir, threads=args.threads) as server, quiet, httpx.Client(
        base_url=server.url, timeout=300
    ) as client, httpx.Client(base_url=quiet.url, timeout=300) as quiet_client:
        inside: dict[str, list[float]] = {"queue_wait_s": [], "engine_s": [],
                                          "process_cpu_s": [], "run_queue_delay_s": []}
        direct_cpu: list[float] = []
        calls = [0]

        # Each variant returns the seconds it measured itself (``clock`` below), so the
        # bookkeeping around it stays out of the figures.
        def run_direct() -> float:
            calls[0] += 1
            c0, t0 = time.process_time(), time.perf_counter()
            engine.generate(req, save_dir=out_dir / str(calls[0]))
            elapsed = time.perf_counter() - t0
            direct_cpu.append(time.process_time() - c0)
            return elapsed

        def run_jobs() -> float:
            t0 = time.perf_counter()
            r = client.post("/v1/jobs", json=body)
            r.raise_for_status()
            done = follow_job(client, r.json()["id"])
            elapsed = time.perf_counter() - t0
            t = done["result"]["timings"]
            inside["queue_wait_s"].append(t["queue_wait_s"])
            inside["engine_s"].append(t["total_s"])
            host = (client.get(f"/v1/jobs/{r.json()['id']}").json().get("telemetry")
                    or {}).get("host") or {}
            inside["process_cpu_s"].append(host.get("cpu_s") or float("nan"))
            inside["run_queue_delay_s"].append(host.get("run_delay_s") or float("nan"))
            return elapsed

        def run_jobs_nosampler() -> float:
            t0 = time.perf_counter()
            r = quiet_client.post("/v1/jobs", json=body)
            r.raise_for_status()
            follow_job(quiet_client, r.json()["id"])
            return time.perf_counter() - t0

        def run_openai() -> float:
            t0 = time.perf_counter()
            r = client.post("/v1/images/generations",
                            json={"prompt": PROMPT, "size": args.size, "steps": args.steps,
                                  "seed": args.seed, "response_format": "b64_json"})
            r.raise_for_status()
            elapsed = time.perf_counter() - t0
            assert len(r.json()["data"]) == 1
            return elapsed

        variants = {"direct": run_direct, "jobs": run_jobs, "openai": run_openai,
                    "jobs-nosampler": run_jobs_nosampler}
        times = _stats.interleave(variants, rounds=args.pairs, warmup=args.warmup,
                                  alternate=True, clock=lambda fn: float(fn()))
        inside = {k: v[-args.pairs:] for k, v in inside.items()}
        direct_cpu = direct_cpu[-args.pairs:]

    summary = _stats.summarize(times, baseline="direct")
    direct_med = summary["variants"]["direct"]["seconds"]["median"]
    allowed_s = max(TARGET_RATIO * direct_med, TARGET_ABS_S)
    verdicts: dict[str, Any] = {}
    print(f"HTTP overhead, tiny model {args.size}, {args.steps} steps, seed {args.seed}, CPU, "
          f"{torch.get_num_threads()} torch threads, {args.pairs} rounds after "
          f"{args.warmup} warm-up (interleaved, order reversed every other round)")
    print(f"  {'variant':<14} {'median':>11} {'p25-p75':>21} {'ratio':>7} {'overhead':>11}")
    for name, entry in summary["variants"].items():
        s = entry["seconds"]
        line = (f"  {name:<14} {_stats.ms(s['median']):>11} "
                f"{_stats.ms(s['p25']):>10}-{_stats.ms(s['p75']):<10}")
        if name != "direct":
            diffs = [a - b for a, b in zip(times[name], times["direct"], strict=True)]
            over = _stats.median(diffs)
            ratio = entry["ratio_to_baseline"]["median"]
            verdicts[name] = {"overhead_s_median_of_differences": over,
                              "ratio_median": ratio, "meets_target": over <= allowed_s}
            line += f" {ratio:>7.3f} {_stats.ms(over):>11}"
        print(line)
    engine_in_server = [a - b for a, b in zip(inside["engine_s"], times["direct"], strict=True)]
    rest = [c - w - e for c, w, e in zip(times["jobs"], inside["queue_wait_s"],
                                         inside["engine_s"], strict=True)]
    split = {"engine_in_server_minus_direct_s": _stats.median(engine_in_server),
             "queue_wait_s": _stats.median(inside["queue_wait_s"]),
             "http_sse_store_s": _stats.median(rest),
             "direct_cpu_s": _stats.median(direct_cpu),
             "server_process_cpu_s": _stats.median(inside["process_cpu_s"]),
             "server_run_queue_delay_s": _stats.median(inside["run_queue_delay_s"])}
    print(f"  jobs, medians of per-round pieces: engine in the server minus direct "
          f"{_stats.ms(split['engine_in_server_minus_direct_s'])}, queue wait "
          f"{_stats.ms(split['queue_wait_s'])}, the rest (HTTP, SSE, store) "
          f"{_stats.ms(split['http_sse_store_s'])}")
    print(f"  CPU per job: direct {_stats.ms(split['direct_cpu_s'])} (this process); server "
          f"{_stats.ms(split['server_process_cpu_s'])} (whole process, job window, 10 ms "
          f"ticks), whose threads waited {_stats.ms(split['server_run_queue_delay_s'])} "
          f"for a CPU (run-queue delay)")
    for name, v in verdicts.items():
        word = "meets" if v["meets_target"] else "MISSES"
        print(f"  {name}: overhead {_stats.ms(v['overhead_s_median_of_differences'])} "
              f"{word} the target of {_stats.ms(allowed_s)} (max of 3 % and 10 ms)")
    payload = {
        "benchmark": "http_overhead",
        "command": _stats.command_line(),
        "params": {"size": args.size, "steps": args.steps, "seed": args.seed,
                   "pairs": args.pairs, "warmup": args.warmup, "model": TINY,
                   "device": "cpu", "torch_threads": torch.get_num_threads(),
                   "server_flags": "defaults (sampler on); jobs-nosampler: "
                                   "--sampler-hz 0"},
        "machine": _stats.machine_info(),
        "versions": {"steadygen": __version__, "torch": torch.__version__,
                     "httpx": httpx.__version__},
        "summary": summary,
        "target_s": allowed_s,
        "verdicts": verdicts,
        "jobs_split_s": split,
        "jobs_server_side_s": inside,
        "direct_cpu_s": direct_cpu,
        "times_s": times,
    }
    written = _stats.write_figures(args.json, "http_overhead", payload)
    print(f"  wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
