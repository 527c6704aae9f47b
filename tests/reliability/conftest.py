"""Fixtures for the reliability tests: real ``steadygen serve`` processes (the server tests'
``ServerProc`` and ``server_factory``, reused), process measurements (RSS, open file
descriptors, threads), raw HTTP for bytes that httpx would not send, and a small tmpfs.

Jobs here are tiny on purpose: the servers allow 64x64 images (``TINY_LIMITS``), so a
one-step job costs a few tens of milliseconds on the tiny model and a test can run hundreds.

``edge_server`` is shared by the fuzzing, bad-input and security tests: an API key, INFO
logs, a queue bound of 4 and small limits, so that valid requests the fuzzer makes finish
quickly and floods end in 429s.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.server.conftest import TERMINAL, ServerProc, server_factory  # noqa: F401

EDGE_KEY = "sk-reliability-5b1e0c"
# Small, quick jobs: 64x64 allowed, at most 256x256, 8 steps, 2 images.
TINY_LIMITS = {
    "STEADYGEN_LIMIT_MIN_SIDE": "64",
    "STEADYGEN_LIMIT_MAX_SIDE": "256",
    "STEADYGEN_LIMIT_MAX_STEPS": "8",
    "STEADYGEN_LIMIT_MAX_N": "2",
}
TINY_JOB = {"prompt": "a red cube", "width": 64, "height": 64, "steps": 1}
JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class ProcStats:
    rss_bytes: int
    fds: int
    threads: int


def proc_stats(srv: ServerProc) -> ProcStats:
    """The server process's resident memory, open file descriptors and threads, now."""
    assert srv.proc is not None
    p = psutil.Process(srv.proc.pid)
    return ProcStats(p.memory_info().rss, p.num_fds(), p.num_threads())


def raw_request(
    srv: ServerProc,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
    authorised: bool = True,
) -> tuple[int, dict[str, str], bytes]:
    """One request sent exactly as given (path not normalised, body bytes as they are)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        sent = {**(srv.headers() if authorised else {}), **(headers or {})}
        if body is not None:
            sent.setdefault("Content-Length", str(len(body)))
        for name, value in sent.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def metric(srv: ServerProc, name: str) -> float:
    """One unlabelled sample from /metrics."""
    for line in srv.request("GET", "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} is not in /metrics")


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll until ``check()`` is truthy; a liveness bound only, never a timing assertion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_all_done(srv: ServerProc, ids: list[str], timeout: float = 240.0) -> dict[str, dict]:
    """Poll the jobs until every one has ended; returns them by id."""
    done: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    with srv.client() as c:
        while len(done) < len(ids):
            assert time.monotonic() < deadline, f"{len(ids) - len(done)} jobs did not end"
            for job_id in [i for i in ids if i not in done]:
                job = c.get(f"/v1/jobs/{job_id}").json()
                if job["state"] in TERMINAL:
                    done[job_id] = job
            time.sleep(0.1)
    return done


def drain(srv: ServerProc) -> None:
    """Cancel what is queued and wait until nothing runs, so the next test starts idle."""
    with srv.client() as c:
        for job in c.get("/v1/jobs", params={"state": "queued", "limit": 500}).json()["jobs"]:
            c.delete(f"/v1/jobs/{job['id']}")
        wait_for(lambda: not c.get("/v1/jobs", params={"state": "running"}).json()["jobs"]
                 and not c.get("/v1/jobs", params={"state": "queued"}).json()["jobs"],
                 "the server to be idle", timeout=120)


def started_server(
    factory: Callable[..., ServerProc],
    env: dict[str, str] | None = None,
    key: str | None = None,
    **flags: Any,
) -> ServerProc:
    """A server with TINY_LIMITS. ``key`` goes in by environment (STEADYGEN_API_KEY), as
    a deployment should: a ``--api-key`` flag is visible to every local user in ``ps``."""
    key_env = {"STEADYGEN_API_KEY": key} if key else {}
    srv = factory(env={**TINY_LIMITS, **key_env, **(env or {})}, **flags)
    srv.api_key = key
    return srv


def server_output(srv: ServerProc) -> str:
    """What the server process wrote, without the harness's own '--- start' lines."""
    return "\n".join(line for line in srv.log_tail(10**9).splitlines()
                     if not line.startswith("--- start"))


@pytest.fixture(scope="session")
def edge_server(server_factory: Callable[..., ServerProc]) -> ServerProc:  # noqa: F811
    return started_server(server_factory, key=EDGE_KEY, max_queue=4, verbose=True)


@pytest.fixture
def edge(edge_server: ServerProc) -> Iterator[ServerProc]:
    assert edge_server.alive(), edge_server.log_tail()
    yield edge_server
    assert edge_server.alive(), "the server died:\n" + edge_server.log_tail()


@pytest.fixture(scope="session")
def figures() -> Iterator[dict[str, Any]]:
    """Figures the tests measured (load held, latencies, growth), by test. Written as JSON
    to the file named by STEADYGEN_RELIABILITY_FIGURES at the end, for docs/reliability.md."""
    found: dict[str, Any] = {}
    yield found
    path = os.environ.get("STEADYGEN_RELIABILITY_FIGURES")
    if path and found:
        import json

        Path(path).write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")


class Tmpfs:
    """A tmpfs mounted at ``path`` (root only); ``fill()`` leaves it with no free space."""

    def __init__(self, path: Path, size_bytes: int):
        self.path = path
        self.size_bytes = size_bytes
        self.filler = path / "filler.bin"

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self) -> None:
        with open(self.filler, "ab", buffering=0) as fh:
            for chunk in (1 << 16, 1 << 12, 1):  # then the last blocks, a byte at a time
                with contextlib.suppress(OSError):
                    while True:
                        fh.write(b"\0" * chunk)

    def unfill(self) -> None:
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def make_tmpfs(tmp_path: Path) -> Iterator[Callable[[int], Tmpfs]]:
    """``make_tmpfs(size_bytes)``: a fresh tmpfs, unmounted afterwards; skips where mounting
    is not permitted (not root, or no CAP_SYS_ADMIN in a container)."""
    mounted: list[Path] = []

    def make(size_bytes: int) -> Tmpfs:
        path = tmp_path / f"tmpfs{len(mounted)}"
        path.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs",
                            str(path)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
        mounted.append(path)
        return Tmpfs(path, size_bytes)

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def json_error(r: httpx.Response | tuple[int, dict[str, str], bytes]) -> dict[str, Any]:
    """The ``error`` object of an error answer, from httpx or raw_request."""
    import json

    body = r.text if isinstance(r, httpx.Response) else r[2].decode()
    return dict(json.loads(body)["error"])
