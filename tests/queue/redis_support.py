"""A real redis-server and real steadygen processes for the scale-out tests.

``RedisServer`` starts its own redis-server on a free port with append-only persistence in
a temporary directory, and stops (or kills) it by pid. ``Proc`` runs ``steadygen serve`` or
``steadygen worker`` as a subprocess with its output in a log file, for kill -9 tests.
Nothing here is a pytest fixture: the test modules build their own, so this module cannot
change the fixtures of the other tests in tests/queue/.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None, reason="needs the redis-server binary (Debian package redis-server)"
)


def steadygen_command() -> list[str]:
    """The installed console script beside this Python, else the module."""
    script = Path(sys.executable).with_name("steadygen")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "steadygen.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        time.sleep(every_s)
    raise AssertionError(
        f"timed out after {timeout_s:.0f} s waiting for {what}"
        + (f" (last error: {last_exc})" if last_exc else "")
    )


class RedisServer:
    """redis-server on a free port, append-only (fsync always), data in ``data_dir``."""

    def __init__(self, data_dir: Path, port: int | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert REDIS_SERVER is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "redis.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--protected-mode",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for(self.ping, 10, f"redis-server on port {self.port}")
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM by pid: Redis flushes the append-only file and exits."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL by pid: no chance to flush anything."""
        self._end(signal.SIGKILL)

    def _end(self, sig: int) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=15)
        self.proc = None


class Proc:
    """A steadygen subprocess (serve or worker) with its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = Path(log_dir) / f"{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [*steadygen_command(), *args], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        log.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def process_env(**extra: str) -> dict[str, str]:
    """The session environment (private XDG dirs, offline hub) plus ``extra``."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def start_worker(name: str, redis_url: str, data_dir: Path, log_dir: Path,
                 sampler_hz: float = 0, **env: str) -> Proc:
    args = [
        "-v",
        "worker",
        "--queue",
        redis_url,
        "--model",
        "zimage-tiny",
        "--device",
        "cpu",
        "--data-dir",
        str(data_dir),
        "--metrics-port",
        "0",
        "--sampler-hz",
        str(sampler_hz),
    ]
    return Proc(name, args, process_env(**env), log_dir)


def start_api(
    name: str, redis_url: str, data_dir: Path, log_dir: Path, port: int, **env: str
) -> Proc:
    args = [
        "serve",
        "--queue",
        redis_url,
        "--model",
        "zimage-tiny",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
    ]
    return Proc(name, args, process_env(**env), log_dir)


def wait_ready(base_url: str, proc: Proc, timeout_s: float = 60.0) -> None:
    def ready() -> bool:
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited:\n{proc.log()[-3000:]}")
        return httpx.get(base_url + "/readyz", timeout=2.0).status_code == 200

    wait_for(ready, timeout_s, f"{proc.name} to be ready")
