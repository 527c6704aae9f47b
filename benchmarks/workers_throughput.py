"""Throughput of the Redis queue with 1 and 2 workers (the scale-out claim, on one machine).

Starts its own redis-server (append-only, fsync always, as in deploy/k8s) and three
``steadygen worker`` processes on the tiny model, one torch thread each (``--cpu-threads
1``): one consumes the stream ``bench:solo``, two consume ``bench:duo``. A round submits
``--jobs`` jobs at once to one stream and waits for all of them; throughput = jobs / (last
finished - first accepted), both on Redis's clock. Rounds alternate solo and duo (1, 2, 1,
2, ...): every process is loaded and warm before the first round and idle workers only
block on Redis, so the two kinds of round run seconds apart, side by side, on a machine
whose load may drift. The ratio is median(2-worker rounds) / median(1-worker rounds); the
ratio within each (1, 2) pair is printed too, with the CPU pressure (PSI) around it, and
per job (medians over rounds of the means) the service time, the worker's CPU time and the
time it waited for a CPU, from each job's own telemetry window.

    python benchmarks/workers_throughput.py --jobs 40 --pairs 10

writes docs/figures/workers_throughput.json (``--json`` elsewhere), which
benchmarks/render_docs.py turns into the table in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _stats

from steadygen.queue.job import Job, JobState
from steadygen.queue.redis.queue import RedisQueue
from steadygen.request import GenerationRequest

STREAMS = {1: "bench:solo", 2: "bench:duo"}  # workers -> the stream they consume
QUIET = 0.15  # CPU pressure below which a pair counts as run on a machine to ourselves


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(root: Path, fsync: str) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("error: redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(root),
         "--appendonly", "yes", "--appendfsync", fsync, "--save", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.1)
    sys.exit("error: redis-server did not start")


def start_worker(name: str, url: str, stream: str, root: Path,
                 sampler_hz: float) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("steadygen")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "steadygen.cli"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", STEADYGEN_STREAM=stream)
    with open(root / f"{name}.log", "ab") as log:
        return subprocess.Popen(
            [*cmd, "worker", "--queue", url, "--model", "zimage-tiny", "--device", "cpu",
             "--cpu-threads", "1", "--data-dir", str(root / "data"), "--metrics-port", "0",
             "--sampler-hz", str(sampler_hz)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )


def wait_ready(queue: RedisQueue, n: int, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        queue._cache.clear()
        if sum(bool(w.info.get("ready")) for w in queue.workers()) == n:
            return
        time.sleep(0.2)
    sys.exit(f"error: {n} workers on {queue.stream} did not become ready in {timeout_s:.0f} s")


def ended(queue: RedisQueue) -> int:
    counts = queue.counts()
    return sum(counts[s.value] for s in JobState if s.terminal)


@dataclass
class Round:
    rate: float  # jobs per second, accepted to finished on Redis's clock
    service_s: float  # mean per job, inside the engine
    cpu_s: float  # mean CPU time of the worker per job
    run_delay_s: float  # mean time per job the worker waited for a CPU (schedstat)


def mean_of(jobs: list[Job], *path: str) -> float:
    values = []
    for j in jobs:
        node: Any = j.result or {}
        for key in path:
            node = (node or {}).get(key)
        if isinstance(node, (int, float)):
            values.append(float(node))
    return statistics.fmean(values) if values else float("nan")


def run_batch(queue: RedisQueue, n: int, size: int, steps: int) -> Round:
    """Submit n jobs at once and wait for all of them."""
    req = GenerationRequest(prompt="benchmark", width=size, height=size, steps=steps,
                            guidance=0.0, seed=1, n=1, model="zimage-tiny")
    before = ended(queue)
    ids = [queue.submit(req).id for _ in range(n)]
    while ended(queue) - before < n:  # one cheap pipeline per poll: the CPUs are for workers
        time.sleep(0.05)
    jobs = [queue.get(i) for i in ids]
    bad = [j for j in jobs if j.state is not JobState.SUCCEEDED]
    if bad:
        sys.exit(f"error: {len(bad)} jobs did not succeed: {bad[0].error}")
    span = max(j.finished_at or 0.0 for j in jobs) - min(j.created_at for j in jobs)
    return Round(n / span, mean_of(jobs, "timings", "total_s"),
                 mean_of(jobs, "telemetry", "host", "cpu_s"),
                 mean_of(jobs, "telemetry", "host", "run_delay_s"))


def cpu_pressure_s() -> float:
    """Seconds some task waited for a CPU since boot (PSI), or NaN where absent."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return int(line.rsplit("total=", 1)[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=60, help="jobs per round (default 60)")
    ap.add_argument("--pairs", type=int, default=5, help="(1-worker, 2-worker) round pairs")
    ap.add_argument("--warmup", type=int, default=6, help="uncounted jobs per stream first")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--sampler-hz", type=float, default=0.0,
                    help="workers' telemetry sampling (default 0: off)")
    ap.add_argument("--appendfsync", choices=("always", "everysec"), default="always",
                    help="Redis fsync policy (default always, as in deploy/k8s)")
    ap.add_argument("--json", type=Path, default=_stats.figures_path("workers_throughput"),
                    help="where to write the figures (default: %(default)s)")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="steadygen-bench-"))
    redis_proc, url = start_redis(root, args.appendfsync)
    queues = {k: RedisQueue(url, stream=s, group="steadygen-workers", visibility_timeout_s=120,
                            max_attempts=3, max_queue=10_000) for k, s in STREAMS.items()}
    procs = [start_worker(f"w{k}-{i}", url, STREAMS[k], root, args.sampler_hz)
             for k in (1, 2) for i in range(k)]
    load_before = os.getloadavg()
    rounds: dict[int, list[Round]] = {1: [], 2: []}
    pressure: list[float] = []  # share of the pair's wall time some task waited for a CPU
    try:
        for k, q in queues.items():
            wait_ready(q, k)
            run_batch(q, args.warmup, args.size, args.steps)
        for pair in range(args.pairs):
            t0, p0 = time.monotonic(), cpu_pressure_s()
            for k in (1, 2):
                rounds[k].append(run_batch(queues[k], args.jobs, args.size, args.steps))
            pressure.append((cpu_pressure_s() - p0) / (time.monotonic() - t0))
            print(f"pair {pair + 1}: 1 worker {rounds[1][-1].rate:.2f} jobs/s, 2 workers "
                  f"{rounds[2][-1].rate:.2f} jobs/s, CPU pressure {pressure[-1]:.0%}",
                  flush=True)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)
        for q in queues.values():
            q.close()
        redis_proc.terminate()
        redis_proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)

    rates = {k: [r.rate for r in rs] for k, rs in rounds.items()}
    per_job = {k: {f: statistics.median(getattr(r, f) for r in rs)
                   for f in ("service_s", "cpu_s", "run_delay_s")} for k, rs in rounds.items()}
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    pairs = [b / a for a, b in zip(rates[1], rates[2], strict=True)]  # side by side in time
    quiet = [r for r, p in zip(pairs, pressure, strict=True) if p < QUIET]
    print(f"\nratio 2 / 1 workers: {two / one:.2f} (medians {one:.2f} and {two:.2f} jobs/s); "
          f"within each pair {', '.join(f'{r:.2f}' for r in pairs)}; pairs below "
          f"{QUIET:.0%} CPU pressure: {len(quiet)}")
    payload = {
        "params": {"jobs": args.jobs, "pairs": args.pairs, "warmup": args.warmup,
                   "size": args.size, "steps": args.steps, "sampler_hz": args.sampler_hz,
                   "appendfsync": args.appendfsync, "torch_threads_per_worker": 1,
                   "model": "zimage-tiny", "device": "cpu", "quiet_pressure": QUIET},
        "load_before_1m": load_before[0],
        "rates_jobs_s": {str(k): v for k, v in rates.items()},
        "median_jobs_s": {"1": one, "2": two},
        "per_job_s": {str(k): v for k, v in per_job.items()},
        "ratio_of_medians": two / one,
        "pair_ratios": pairs,
        "pair_cpu_pressure": pressure,
        "quiet_pair_ratios": quiet,
    }
    print(f"wrote {_stats.write_figures(args.json, 'workers_throughput', payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
