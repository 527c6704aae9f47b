"""A real ``steadygen serve`` process for the HTTP tests.

``server_factory(**flags)`` starts ``python -m steadygen.cli serve`` on a free port with its
own ``--data-dir``, the session's XDG cache (so the tiny model is built once, by the session
fixture ``tiny_checkpoint``), waits for ``/readyz``, and hands back a ``ServerProc``: the
base URL, an authorised HTTP client, small helpers for the job API and SSE, and
``stop`` (SIGTERM), ``kill`` (SIGKILL) and ``start`` (again, same port and data dir) by pid.

Two servers are shared by the whole session, because starting one costs seconds:

- ``main_server``: ``--api-key`` on, ``--concurrency 1``, INFO logs; tests that only add
  jobs of their own use it and never leave one running.
- ``plain_server``: no key, ``--max-queue 3``, a 1 s shutdown grace period; the lifecycle
  tests (429, kill -9, SIGTERM) stop and restart it, and leave it running and idle.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

API_KEY = "sk-test-7f3a9c"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
READY_TIMEOUT_S = 240.0  # a loaded 2-core machine can take half a minute to import torch
JOB_TIMEOUT_S = 240.0  # a liveness bound only; no test asserts a duration
PROMPT = "a lighthouse at dusk"

# A job long enough to be caught running (cancel, progress, kill, SIGTERM): 100 steps at
# 512x512 take many seconds on the tiny model; tests cancel it after its first step.
LONG_JOB = {"prompt": PROMPT, "width": 512, "height": 512, "steps": 100, "seed": 7}
SMALL_JOB = {"prompt": PROMPT, "width": 256, "height": 256, "steps": 2}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class SSEEvent:
    id: str
    event: str
    data: dict[str, Any]

    @property
    def key(self) -> tuple[int, int]:
        attempt, n = self.id.split(".")
        return (int(attempt), int(n))


def parse_sse(lines: Iterator[str]) -> Iterator[SSEEvent]:
    """Server-Sent Events from text lines (comments such as pings are skipped)."""
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "event" in fields or "data" in fields:
                yield SSEEvent(
                    fields.get("id", ""),
                    fields.get("event", "message"),
                    json.loads(fields.get("data", "null")),
                )
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data" and "data" in fields:
            value = fields["data"] + "\n" + value
        fields[name] = value


class ServerProc:
    """One ``steadygen serve`` process; start, stop and kill it by pid."""

    def __init__(self, root: Path, flags: dict[str, Any], env: dict[str, str]):
        self.root = root
        self.data_dir = root / "data"
        self.log_path = root / "server.log"
        self.port = free_port()
        self.flags = dict(flags)
        self.env = dict(env)
        self.api_key: str | None = flags.get("api_key")
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # -- process ---------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    def command(self) -> list[str]:
        verbose = ["-v"] if self.flags.get("verbose") else []  # INFO logs
        cmd = [
            sys.executable,
            "-m",
            "steadygen.cli",
            *verbose,
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        for name, value in self.flags.items():
            if value is None or value is False or name == "verbose":
                continue
            flag = "--" + name.replace("_", "-")
            cmd += [flag] if value is True else [flag, str(value)]
        return cmd

    def start(self, env: dict[str, str] | None = None) -> ServerProc:
        """Start (or start again, same port and data dir) and wait for /readyz."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        full_env = {**os.environ, **self.env, **(env or {})}
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- start {self.starts}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=True,
            )
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"the server exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(self.base_url + "/readyz", timeout=2.0)
                if r.status_code == 200 and r.json().get("ready"):
                    return
            time.sleep(0.1)
        pytest.fail(f"the server was not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 90.0) -> int:
        """SIGTERM by pid; returns the exit code (fails the test if it does not exit).
        uvicorn re-raises the signal after its graceful shutdown, so a clean stop is
        0 or -SIGTERM."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the server ignored SIGTERM for {timeout:.0f} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL by pid: a crash, nothing gets to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    # -- HTTP ------------------------------------------------------------------------

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, authorised: bool = True, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, timeout=timeout, headers=self.headers() if authorised else {}
        )

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        with self.client() as c:
            return c.request(method, path, **kw)

    def submit(self, **body: Any) -> dict[str, Any]:
        r = self.request("POST", "/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        return dict(r.json())

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.request("GET", f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def cancel(self, job_id: str) -> dict[str, Any]:
        r = self.request("DELETE", f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def events(
        self,
        job_id: str,
        *,
        last_event_id: str | None = None,
        until: Callable[[SSEEvent], bool] | None = None,
        timeout: float = JOB_TIMEOUT_S,
    ) -> list[SSEEvent]:
        """Read the job's SSE stream until ``until(event)`` holds or the stream ends (the
        server ends it after the terminal event), then disconnect."""
        headers = self.headers()
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        deadline = time.monotonic() + timeout
        out: list[SSEEvent] = []
        with httpx.stream(
            "GET",
            f"{self.base_url}/v1/jobs/{job_id}/events",
            headers=headers,
            timeout=httpx.Timeout(10.0, read=30.0),
        ) as r:
            assert r.status_code == 200, r.read().decode()
            assert r.headers["content-type"].startswith("text/event-stream")

            def lines() -> Iterator[str]:
                for line in r.iter_lines():  # pings (comments) arrive every 15 s at least
                    if time.monotonic() > deadline:
                        pytest.fail(f"job {job_id}: no end within {timeout:.0f} s; got {out}")
                    yield line

            for event in parse_sse(lines()):
                out.append(event)
                if until is not None and until(event):
                    break
        return out

    def wait_done(self, job_id: str, timeout: float = JOB_TIMEOUT_S) -> dict[str, Any]:
        """Follow the job's events to its end; returns the job as GET shows it then."""
        self.events(job_id, until=lambda e: e.event in TERMINAL, timeout=timeout)
        job = self.job(job_id)
        assert job["state"] in TERMINAL, job
        return job

    def wait_running(self, job_id: str) -> SSEEvent:
        """Block until the job has finished its first step; returns that step event."""
        events = self.events(job_id, until=lambda e: e.event in TERMINAL or e.event == "step")
        assert events[-1].event == "step", f"job {job_id} ended before a step: {events}"
        return events[-1]

    def cancel_and_wait(self, job_id: str) -> dict[str, Any]:
        self.cancel(job_id)
        return self.wait_done(job_id)

    # -- the data directory, read directly (also while the server is down) ------------

    def db_rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10.0)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def db_state(self, job_id: str) -> tuple[str, int]:
        rows = self.db_rows("SELECT state, attempts FROM jobs WHERE id=?", (job_id,))
        assert rows, f"job {job_id} is not in the database"
        return rows[0][0], rows[0][1]

    def db_event_types(self, job_id: str) -> list[str]:
        rows = self.db_rows("SELECT type FROM events WHERE job_id=? ORDER BY attempt, n", (job_id,))
        return [r[0] for r in rows]


@pytest.fixture(scope="session")
def server_factory(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path
) -> Iterator[Callable[..., ServerProc]]:
    """``server_factory(env=None, **flags)``: a started server (flags as CLI options:
    ``api_key="k"`` is ``--api-key k``); every one is killed at the end of the session."""
    started: list[ServerProc] = []

    def make(env: dict[str, str] | None = None, **flags: Any) -> ServerProc:
        srv = ServerProc(tmp_path_factory.mktemp("server"), flags, env or {})
        started.append(srv)
        return srv.start()

    yield make
    for srv in started:
        if srv.alive():
            assert srv.proc is not None
            srv.proc.send_signal(signal.SIGTERM)
            try:
                srv.proc.wait(30)
            except subprocess.TimeoutExpired:
                srv.kill()


@pytest.fixture(scope="session")
def main_server(server_factory: Callable[..., ServerProc]) -> ServerProc:
    return server_factory(api_key=API_KEY, concurrency=1, verbose=True)


@pytest.fixture(scope="session")
def plain_server(server_factory: Callable[..., ServerProc]) -> ServerProc:
    return server_factory(max_queue=3, env={"STEADYGEN_SHUTDOWN_GRACE_S": "1"})


@pytest.fixture
def plain(plain_server: ServerProc) -> Iterator[ServerProc]:
    """The plain server, started again if a test left it down."""
    if not plain_server.alive():
        plain_server.start()
    yield plain_server
    if not plain_server.alive():
        plain_server.start()


@pytest.fixture(scope="session")
def done_job(main_server: ServerProc) -> dict[str, Any]:
    """One small job that succeeded on the main server (for image and lookup tests)."""
    job = main_server.submit(**SMALL_JOB, seed=11)
    final = main_server.wait_done(job["id"])
    assert final["state"] == "succeeded", final
    return final
