"""Soak: many tiny jobs in a row through every API, watching the server process's resident
memory (RSS), open file descriptors, threads and event subscriptions for growth.

Jobs rotate through the three ways in: ``POST /v1/jobs`` followed on its SSE stream to the
end, ``POST /v1/images/generations`` (OpenAI, b64_json) and ``POST /sdapi/v1/txt2img``
(A1111), one at a time, each waiting for its result. After every ``--every`` jobs the
process is sampled, with one ``/healthz`` round trip. Growth is judged by windows: the
median of the early window (after the first 10 % of jobs, which pay one-time costs) against
the median of the last 10 %. A leak of even a few kilobytes per job shows over 1000 jobs.

    python benchmarks/soak.py --jobs 4000 --json docs/figures/soak.json
    python benchmarks/soak.py --url http://127.0.0.1:7860 --pid 12345 --jobs 200

Without ``--url`` it starts its own ``steadygen serve`` on the tiny model (CPU), with 64x64
images allowed, and stops it at the end. tests/reliability/test_load.py runs ``soak`` (this
file's function) for 100 jobs in the default suite and 1000 under ``-m slow``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

TINY_ENV = {"STEADYGEN_LIMIT_MIN_SIDE": "64"}
JOB = {"prompt": "a red cube", "width": 64, "height": 64, "steps": 1}
MiB = 1 << 20


@dataclass(frozen=True)
class Sample:
    jobs_done: int
    t_s: float  # since the soak began
    rss_bytes: int
    fds: int
    threads: int
    subscribers: float | None  # steadygen_event_subscribers, when /metrics has it
    healthz_s: float


def subscribers(client: httpx.Client) -> float | None:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("steadygen_event_subscribers "):
            return float(line.rsplit(" ", 1)[1])
    return None


def follow(client: httpx.Client, job_id: str) -> str:
    """Read the job's SSE stream to its terminal event; returns that event's name."""
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as r:
        r.raise_for_status()
        event = ""
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
                if event in ("succeeded", "failed", "cancelled"):
                    return event
    raise RuntimeError(f"the stream of job {job_id} ended without a terminal event")


def one_job(client: httpx.Client, k: int) -> None:
    """Job k, through API k mod 3; raises unless it succeeded."""
    body = {**JOB, "seed": k}
    way = k % 3
    if way == 0:
        r = client.post("/v1/jobs", json=body)
        r.raise_for_status()
        ended = follow(client, r.json()["id"])
        if ended != "succeeded":
            raise RuntimeError(f"job {r.json()['id']} {ended}")
    elif way == 1:
        r = client.post("/v1/images/generations", json={
            "prompt": body["prompt"], "size": "64x64", "steps": 1, "seed": k})
        r.raise_for_status()
        if not r.json()["data"][0]["b64_json"]:
            raise RuntimeError("no image in the OpenAI answer")
    else:
        r = client.post("/sdapi/v1/txt2img", json={
            "prompt": body["prompt"], "width": 64, "height": 64, "steps": 1, "seed": k})
        r.raise_for_status()
        if not r.json()["images"]:
            raise RuntimeError("no image in the A1111 answer")


def soak(
    client: httpx.Client,
    pid: int,
    jobs: int,
    every: int = 10,
    on_sample: Callable[[Sample], None] | None = None,
) -> dict[str, Any]:
    """Run ``jobs`` jobs in a row; sample the server process every ``every`` jobs."""
    proc = psutil.Process(pid)
    samples: list[Sample] = []
    t0 = time.monotonic()

    def sample(done: int) -> None:
        h0 = time.monotonic()
        client.get("/healthz").raise_for_status()
        healthz_s = time.monotonic() - h0
        s = Sample(done, time.monotonic() - t0, proc.memory_info().rss, proc.num_fds(),
                   proc.num_threads(), subscribers(client), healthz_s)
        samples.append(s)
        if on_sample is not None:
            on_sample(s)

    sample(0)
    for k in range(jobs):
        one_job(client, k)
        if (k + 1) % every == 0 or k + 1 == jobs:
            sample(k + 1)
    return summarize(samples, jobs)


def summarize(samples: list[Sample], jobs: int) -> dict[str, Any]:
    """Early window: samples after the first 10 % of jobs, up to 30 %; late: the last 10 %."""
    def window(lo: float, hi: float) -> list[Sample]:
        picked = [s for s in samples if lo * jobs < s.jobs_done <= hi * jobs]
        return picked or [samples[-1]]

    early, late = window(0.1, 0.3), window(0.9, 1.0)

    def med(ws: list[Sample], field: str) -> float:
        return float(statistics.median(getattr(s, field) for s in ws))

    healthz = sorted(s.healthz_s for s in samples)
    elapsed = samples[-1].t_s
    return {
        "jobs": jobs,
        "elapsed_s": round(elapsed, 2),
        "jobs_per_s": round(jobs / elapsed, 2) if elapsed else None,
        "rss_early_bytes": med(early, "rss_bytes"),
        "rss_late_bytes": med(late, "rss_bytes"),
        "rss_growth_bytes": med(late, "rss_bytes") - med(early, "rss_bytes"),
        "rss_max_bytes": max(s.rss_bytes for s in samples),
        "fds_early": med(early, "fds"),
        "fds_late": med(late, "fds"),
        "fds_max": max(s.fds for s in samples),
        "threads_early": med(early, "threads"),
        "threads_late": med(late, "threads"),
        "threads_max": max(s.threads for s in samples),
        "subscribers_end": samples[-1].subscribers,
        "healthz_max_s": round(healthz[-1], 4),
        "samples": [asdict(s) for s in samples],
    }


def print_sample(s: Sample) -> None:
    subs = "-" if s.subscribers is None else f"{s.subscribers:.0f}"
    print(f"{s.jobs_done:6d} jobs {s.t_s:8.1f} s  rss {s.rss_bytes / MiB:8.1f} MiB  "
          f"fds {s.fds:4d}  threads {s.threads:3d}  subscribers {subs:>3}  "
          f"healthz {s.healthz_s * 1000:6.1f} ms", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--every", type=int, default=10, help="sample after every N jobs")
    p.add_argument("--url", help="a running server (needs --pid); default: start one")
    p.add_argument("--pid", type=int, help="the server's process id, with --url")
    p.add_argument("--api-key", help="for --url")
    p.add_argument("--cache-dir", type=Path, help="where the tiny checkpoint is built")
    p.add_argument("--json", type=Path, help="where to write the figures (default: "
                   "docs/figures/soak.json, or none with --url)")
    args = p.parse_args(argv)
    if args.url and not args.pid:
        p.error("--url needs --pid: RSS, descriptors and threads are read from the process")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    from http_overhead import DEFAULT_CACHE, ServerProcess

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    if args.url:
        with httpx.Client(base_url=args.url, headers=headers, timeout=300) as client:
            result = soak(client, args.pid, args.jobs, args.every, print_sample)
    else:
        cache = args.cache_dir or DEFAULT_CACHE
        from steadygen.engine.tiny import ensure_tiny_checkpoint

        ensure_tiny_checkpoint(cache)
        with ServerProcess(cache, env=TINY_ENV, threads=1) as server, httpx.Client(
            base_url=server.url, timeout=300
        ) as client:
            assert server.proc is not None
            result = soak(client, server.proc.pid, args.jobs, args.every, print_sample)
    print(f"\n{result['jobs']} jobs in {result['elapsed_s']} s; RSS "
          f"{result['rss_early_bytes'] / MiB:.1f} -> {result['rss_late_bytes'] / MiB:.1f} MiB "
          f"(growth {result['rss_growth_bytes'] / MiB:+.1f} MiB); fds "
          f"{result['fds_early']:.0f} -> {result['fds_late']:.0f}; threads "
          f"{result['threads_early']:.0f} -> {result['threads_late']:.0f}; "
          f"/healthz max {result['healthz_max_s'] * 1000:.1f} ms")
    import _stats

    out = args.json or (None if args.url else _stats.figures_path("soak"))
    if out is not None:
        result["params"] = {"jobs": args.jobs, "every": args.every,
                            "server": args.url or "its own: tiny model, CPU, 64x64 jobs"}
        print(f"wrote {_stats.write_figures(out, 'soak', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
