"""Four concurrent clients against ``--concurrency 1`` and ``--concurrency 4``.

Two real ``steadygen serve`` processes on the tiny model, one per setting. In each round one
server gets four clients in a closed loop (each submits a job with ``POST /v1/jobs``, follows
its SSE stream to ``succeeded``, and submits the next); rounds alternate between the servers
(1, 4, then 4, 1, ...), warm-up rounds excluded. Per setting:

  service time  the server's own ``timings.total_s`` of each job (start to finish in the
                engine): p50, p99 and p99/p50, the spread a user feels as unpredictability;
  latency       client side, submit to the terminal event (queue wait included);
  throughput    jobs finished per second of a round's wall time (median over rounds).

With one worker, jobs wait in the queue but each runs alone and steadily; with four, nothing
waits but the jobs fight over the same cores (or GPU) and every one of them gets slower.

    python benchmarks/concurrency.py --rounds 4 --json docs/figures/concurrency.json
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import _stats
import httpx
from http_overhead import DEFAULT_CACHE, PROMPT, ServerProcess, follow_job

CLIENTS = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=4, help="timed rounds per setting")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds per setting first")
    p.add_argument("--jobs", type=int, default=4, help="jobs per client per round")
    p.add_argument("--size", default="256x256")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per server process (OMP_NUM_THREADS); 0 keeps "
                   "torch's default")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--json", type=Path, default=_stats.figures_path("concurrency"),
                   help="where to write the figures (default: %(default)s)")
    return p.parse_args(argv)


def run_round(url: str, body: dict[str, Any], jobs: int) -> dict[str, Any]:
    """Four clients, ``jobs`` each, closed loop; returns per-job samples and the wall time."""
    samples: list[dict[str, float]] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as c:
            for j in range(jobs):
                t0 = time.perf_counter()
                r = c.post("/v1/jobs", json={**body, "seed": 1000 * k + j})
                r.raise_for_status()
                done = follow_job(c, r.json()["id"])
                latency = time.perf_counter() - t0
                t = done["result"]["timings"]
                with lock:
                    samples.append({"service_s": t["total_s"], "queue_wait_s": t["queue_wait_s"],
                                    "latency_s": latency})

    t0 = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    wall = time.perf_counter() - t0
    return {"samples": samples, "wall_s": wall, "throughput_jobs_s": len(samples) / wall}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from steadygen import __version__
    from steadygen.engine.tiny import ensure_tiny_checkpoint

    ensure_tiny_checkpoint(args.cache_dir)
    width, height = (int(v) for v in args.size.lower().split("x"))
    body = {"prompt": PROMPT, "width": width, "height": height, "steps": args.steps}
    settings = {"c1": ["--concurrency", "1"], "c4": ["--concurrency", "4"]}
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in settings}

    servers = {name: ServerProcess(args.cache_dir, flags, threads=args.threads)
               for name, flags in settings.items()}
    try:
        for server in servers.values():
            server.__enter__()
        names = list(settings)
        for r in range(args.warmup + args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                result = run_round(servers[name].url, body, args.jobs)
                if r >= args.warmup:
                    rounds[name].append(result)
                print(f"  round {r + 1}{' (warm-up)' if r < args.warmup else ''} {name}: "
                      f"{result['throughput_jobs_s']:.2f} jobs/s", flush=True)
    finally:
        for server in servers.values():
            server.__exit__()

    figures: dict[str, dict[str, float]] = {}
    for name, results in rounds.items():
        service = [s["service_s"] for res in results for s in res["samples"]]
        latency = [s["latency_s"] for res in results for s in res["samples"]]
        wait = [s["queue_wait_s"] for res in results for s in res["samples"]]
        p50, p99 = _stats.quantile(service, 0.5), _stats.quantile(service, 0.99)
        figures[name] = {
            "jobs": len(service),
            "service_p50_s": p50,
            "service_p99_s": p99,
            "service_p99_over_p50": p99 / p50,
            "latency_p50_s": _stats.quantile(latency, 0.5),
            "latency_p99_s": _stats.quantile(latency, 0.99),
            "queue_wait_p50_s": _stats.quantile(wait, 0.5),
            "throughput_jobs_s": _stats.median([res["throughput_jobs_s"] for res in results]),
        }

    print(f"\nconcurrency, {CLIENTS} clients x {args.jobs} jobs per round, tiny model "
          f"{args.size}, {args.steps} steps, CPU, {args.threads or 'default'} torch thread(s) per "
          f"server, {args.rounds} rounds per setting after "
          f"{args.warmup} warm-up, alternating")
    print(f"  {'setting':<16} {'jobs':>5} {'svc p50':>10} {'svc p99':>10} {'p99/p50':>8} "
          f"{'lat p50':>10} {'lat p99':>10} {'jobs/s':>7}")
    for name, f in figures.items():
        label = "--concurrency " + name[1:]
        print(f"  {label:<16} {f['jobs']:>5.0f} {_stats.ms(f['service_p50_s']):>10} "
              f"{_stats.ms(f['service_p99_s']):>10} {f['service_p99_over_p50']:>8.2f} "
              f"{_stats.ms(f['latency_p50_s']):>10} {_stats.ms(f['latency_p99_s']):>10} "
              f"{f['throughput_jobs_s']:>7.2f}")
    payload = {
        "benchmark": "concurrency",
        "command": _stats.command_line(),
        "params": {"clients": CLIENTS, "jobs_per_client": args.jobs, "size": args.size,
                   "steps": args.steps, "rounds": args.rounds, "warmup": args.warmup,
                   "torch_threads_per_server": args.threads or "default",
                   "model": "zimage-tiny", "device": "cpu"},
        "machine": _stats.machine_info(),
        "versions": {"steadygen": __version__},
        "figures": figures,
        "rounds": rounds,
    }
    written = _stats.write_figures(args.json, "concurrency", payload)
    print(f"  wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
