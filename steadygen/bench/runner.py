"""``steadygen bench``: closed- and open-loop load against named configurations, interleaved.

A configuration is a name and settings overrides (``A:concurrency=4,warmup=false``) or a
TOML file. Targets: a server built in this process per configuration (the full stack:
queue, engine, telemetry, attribution, no HTTP), or a running server by URL. Rounds
alternate the configurations (A B, then B A, ...) so that drift on a shared machine hits
them alike; warm-up runs are run first, excluded from the statistics and reported.
"""

from __future__ import annotations

import logging
import random
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from steadygen.bench.interfere import InterferenceSpec, Interferer
from steadygen.config import Settings
from steadygen.errors import ConfigError

log = logging.getLogger("steadygen.bench")

TERMINAL = ("succeeded", "failed", "cancelled")
POLL_S = 0.005  # how often an in-process client looks for its job's end


@dataclass(frozen=True)
class BenchConfig:
    name: str
    overrides: dict[str, Any]

    @classmethod
    def parse(cls, text: str) -> BenchConfig:
        """``NAME:key=value,key=value``, ``NAME`` (defaults) or ``NAME=path.toml``."""
        if "=" in text.split(":", 1)[0]:
            name, _, path = text.partition("=")
            try:
                return cls(name, tomllib.loads(Path(path).read_text()))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"--config {name}: cannot read {path}: {exc}") from exc
        name, _, rest = text.partition(":")
        if not name:
            raise ConfigError(f"--config needs a name, as in A:concurrency=4 (got {text!r})")
        overrides: dict[str, Any] = {}
        for part in filter(None, rest.split(",")):
            key, eq, value = part.partition("=")
            if not eq:
                raise ConfigError(f"--config {name}: {part!r} is not key=value")
            overrides[key.strip().replace("-", "_")] = value.strip()
        return cls(name, overrides)


@dataclass
class RunRecord:
    config: str
    index: int
    round: int
    warmup: bool
    interfered: bool
    state: str
    t_submit: float  # wall clock at the (scheduled) arrival
    latency_s: float  # client-observed: arrival to result
    queue_wait_s: float | None
    service_s: float | None
    steps_s: list[float] = field(default_factory=list)
    main_cause: str | None = None
    causes: dict[str, float] = field(default_factory=dict)
    slow: bool = False
    telemetry: dict[str, Any] | None = None
    error: str | None = None
    # interfered runs: whether the interferers' heartbeats covered the round (and what they
    # achieved); a round without them is invalid and left out of the interfered figures
    interference: dict[str, Any] | None = None

    @property
    def interference_valid(self) -> bool:
        return not self.interfered or bool(self.interference and self.interference["valid"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class InProcessTarget:
    """A full steadygen server stack in this process, without HTTP."""

    def __init__(self, settings: Settings):
        from steadygen.serve import LocalServer  # the composition the real server uses

        self.settings = settings
        self.server = LocalServer(settings)
        self.server.start()
        deadline = time.monotonic() + 1800
        while not self.server.readiness.warm:
            if self.server.readiness.error:
                raise ConfigError(f"the model could not start: {self.server.readiness.error}")
            if time.monotonic() > deadline:
                raise ConfigError("the model did not become ready within 30 minutes")
            time.sleep(0.05)
        self.service = self.server.service

    def run_one(self, raw: dict[str, Any]) -> dict[str, Any]:
        req = self.service.validate(dict(raw))
        job = self.server.queue.submit(req)
        # Look for the end in the in-memory event log (~2 us a look here), not the job store
        # (~40 us and a database read beside the worker's writes): clients can look every
        # 5 ms, which bounds the latency's error, at little cost to the runs being measured.
        # The store is read once, at the end.
        polls = 0
        while not any(e.terminal for e in self.server.hub.history(job.id)):
            time.sleep(POLL_S)
            polls += 1
            if polls % 200 == 0 and self.server.queue.get(job.id).state.value in TERMINAL:
                break  # the event log has dropped this job (it keeps the latest 2000)
        return self.server.queue.get(job.id).to_public()

    def close(self) -> None:
        self.server.stop()


class UrlTarget:
    """A running steadygen server: POST /v1/jobs, follow its events, read the job."""

    def __init__(self, url: str, api_key: str | None = None):
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=None)
        self.client.get("/healthz").raise_for_status()

    def run_one(self, raw: dict[str, Any]) -> dict[str, Any]:
        r = self.client.post("/v1/jobs", json=raw)
        if r.status_code != 202:
            return {"state": "failed", "error": r.text, "timings": None}
        job_id = r.json()["id"]
        with self.client.stream("GET", f"/v1/jobs/{job_id}/events") as events:
            for line in events.iter_lines():
                if line.startswith("event:") and line.split(":", 1)[1].strip() in TERMINAL:
                    break
        return self.client.get(f"/v1/jobs/{job_id}").json()

    def close(self) -> None:
        self.client.close()


def record_from(
    job: dict[str, Any], config: str, index: int, rnd: int, warmup: bool, interfered: bool,
    t_submit: float, t_arrive_mono: float,
) -> RunRecord:
    timings = job.get("timings") or {}
    diagnosis = job.get("diagnosis") or {}
    return RunRecord(
        config=config,
        index=index,
        round=rnd,
        warmup=warmup,
        interfered=interfered,
        state=job.get("state", "failed"),
        t_submit=t_submit,
        latency_s=time.monotonic() - t_arrive_mono,
        queue_wait_s=timings.get("queue_wait_s"),
        service_s=timings.get("total_s"),
        steps_s=list(timings.get("steps_s") or []),
        main_cause=diagnosis.get("main_cause"),
        causes={c["kind"]: c["seconds"] for c in diagnosis.get("causes", [])},
        slow=bool(diagnosis.get("slow")),
        telemetry=job.get("telemetry"),
        error=job.get("error"),
    )


@dataclass
class BenchPlan:
    request: dict[str, Any]  # prompt, width, height, steps, guidance, n
    runs: int = 20  # timed runs per configuration
    rounds: int = 4
    clients: int = 1  # closed loop: concurrent clients
    rate: float | None = None  # open loop: Poisson arrivals per second
    warmup_runs: int = 2
    interfere: InterferenceSpec | None = None
    interfere_every: int = 2  # interfere in rounds r with r % every == every - 1
    seed: int = 0


def run_batch(
    target: Any, plan: BenchPlan, config: str, count: int, start_index: int, rnd: int,
    warmup: bool, interfered: bool,
) -> list[RunRecord]:
    """``count`` runs: closed loop with ``plan.clients`` clients, or open loop at plan.rate."""
    records: list[RunRecord] = []
    lock = threading.Lock()
    rng = random.Random(plan.seed * 1000 + rnd)

    def one(i: int, t_wall: float, t_mono: float) -> None:
        raw = dict(plan.request)
        raw.setdefault("seed", 1000 + i)
        try:
            job = target.run_one(raw)
        except Exception as exc:  # a failed run is a result, not the end of the benchmark
            job = {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}
        rec = record_from(job, config, i, rnd, warmup, interfered, t_wall, t_mono)
        with lock:
            records.append(rec)

    if plan.rate and not warmup:
        # Open loop: arrivals are scheduled up front, and each waits for nobody, so a slow
        # server cannot hold back the next arrival (no coordinated omission).
        threads = []
        t0 = time.monotonic()
        t_next = 0.0
        for k in range(count):
            t_next += rng.expovariate(plan.rate)
            delay = t0 + t_next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            arrive_mono = t0 + t_next
            arrive_wall = time.time() - (time.monotonic() - arrive_mono)
            th = threading.Thread(target=one, args=(start_index + k, arrive_wall, arrive_mono))
            th.start()
            threads.append(th)
        for th in threads:
            th.join()
    else:
        counter = iter(range(start_index, start_index + count))
        counter_lock = threading.Lock()

        def client() -> None:
            while True:
                with counter_lock:
                    i = next(counter, None)
                if i is None:
                    return
                one(i, time.time(), time.monotonic())

        clients = [threading.Thread(target=client) for _ in range(max(1, plan.clients))]
        for th in clients:
            th.start()
        for th in clients:
            th.join()
    return sorted(records, key=lambda r: r.index)


def run_bench(
    targets: dict[str, Any], plan: BenchPlan, progress: Callable[[str], None] = lambda _: None
) -> list[RunRecord]:
    """Warm-up per configuration, then ``rounds`` interleaved rounds."""
    names = list(targets)
    records: list[RunRecord] = []
    for name in names:
        if plan.warmup_runs:
            progress(f"{name}: {plan.warmup_runs} warm-up runs")
            records += run_batch(targets[name], plan, name, plan.warmup_runs, 0, -1, True, False)
    per_round = _split(plan.runs, plan.rounds)
    index = {n: plan.warmup_runs for n in names}
    for rnd, count in enumerate(per_round):
        order = names if rnd % 2 == 0 else list(reversed(names))
        interfered = plan.interfere is not None and (
            rnd % plan.interfere_every == plan.interfere_every - 1
        )
        with _interference(plan.interfere if interfered else None) as interferer:
            for name in order:
                progress(f"round {rnd + 1}/{len(per_round)}: {name}, {count} runs"
                         + (" with interference" if interfered else ""))
                t0 = time.monotonic()
                batch = run_batch(targets[name], plan, name, count, index[name], rnd, False,
                                  interfered)
                if interferer is not None:
                    check = interferer.check(t0, time.monotonic())
                    for rec in batch:
                        rec.interference = check.to_dict()
                    if not check.valid:
                        progress(f"round {rnd + 1}: {name}'s interfered runs are invalid: "
                                 f"{check.reason}")
                index[name] += count
                records += batch
    return records


@contextmanager
def _interference(spec: InterferenceSpec | None) -> Iterator[Interferer | None]:
    if spec is None:
        with nullcontext():
            yield None
        return
    with Interferer(spec) as interferer:
        yield interferer


def _split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def build_targets(
    configs: list[BenchConfig], base: Settings, url: str | None, api_key: str | None,
    workdir: Path | None = None,
) -> dict[str, Any]:
    if url:
        if len(configs) > 1:
            raise ConfigError(
                "with --url the server's settings are fixed: give one --config (or none); "
                "to compare settings, let bench start them in-process"
            )
        name = configs[0].name if configs else "server"
        return {name: UrlTarget(url, api_key)}
    root = Path(workdir or tempfile.mkdtemp(prefix="steadygen-bench-"))
    targets: dict[str, Any] = {}
    for cfg in configs or [BenchConfig("default", {})]:
        settings = base.with_overrides(**cfg.overrides, data_dir=root / cfg.name)
        targets[cfg.name] = InProcessTarget(settings)
    return targets
