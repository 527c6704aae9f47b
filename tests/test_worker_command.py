"""``steadygen worker`` as a user starts it: workers on one host get their own metrics
ports (the README's two-worker example), and a port in use is one clear line, not a
traceback. Running jobs is tested with a real Redis in tests/queue/test_redis_workers.py."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from steadygen.config import Settings
from steadygen.worker import BASE_METRICS_PORT, metrics_port_for


@pytest.mark.parametrize(("device", "setting", "port"), [
    ("cuda:0", None, BASE_METRICS_PORT),
    ("cuda:1", None, BASE_METRICS_PORT + 1),  # the README's second worker on one host
    ("cpu", None, BASE_METRICS_PORT),
    ("cuda:1", 9500, 9500),  # set explicitly: as given
    ("cuda:3", 0, 0),  # 0: any free port
])
def test_each_gpu_gets_its_own_default_metrics_port(device: str, setting: int | None,
                                                    port: int) -> None:
    assert metrics_port_for(Settings(metrics_port=setting), device) == port


def test_a_metrics_port_in_use_is_one_clear_line(run_cli: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_cli("worker", "--queue", "redis://127.0.0.1:1/0", "--model", "zimage-tiny",
                    "--device", "cpu", "--metrics-port", str(port))
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, r.stderr
    assert f"metrics port 127.0.0.1:{port} cannot be used" in lines[0]
    assert "--metrics-port" in lines[0]
