"""The host backend for real: a CPU-burning child is named, our run-queue delay rises."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from steadygen.telemetry.host import HostBackend, RunDelayCounter, parse_psi, read_psi

HAS_SCHEDSTAT = Path(f"/proc/{os.getpid()}/task/{threading.get_native_id()}/schedstat").exists()


def test_parse_psi() -> None:
    text = (
        "some avg10=1.50 avg60=0.80 avg300=0.10 total=123456\n"
        "full avg10=0.25 avg60=0.00 avg300=0.00 total=789\n"
    )
    psi = parse_psi(text)
    assert psi is not None
    assert psi.some_avg10_pct == 1.5 and psi.some_total_us == 123456
    assert psi.full_avg10_pct == 0.25 and psi.full_total_us == 789
    cpu_only = parse_psi("some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n")
    assert cpu_only is not None and cpu_only.full_total_us is None
    assert parse_psi("") is None


def test_missing_psi_is_none(tmp_path: Path) -> None:
    assert read_psi("cpu", root=tmp_path) is None


def test_run_delay_stays_monotonic_when_threads_exit() -> None:
    if not HAS_SCHEDSTAT:
        pytest.skip("kernel without sched_info (/proc/<pid>/task/<tid>/schedstat)")
    counter = RunDelayCounter(os.getpid())
    before = counter.read_ns()
    worker = threading.Thread(target=lambda: sum(range(200_000)))
    worker.start()
    during = counter.read_ns()
    worker.join()
    after = counter.read_ns()
    assert before is not None and during is not None and after is not None
    assert before <= during <= after


def test_reading_fields_present() -> None:
    host = HostBackend()
    r = host.read_host(scan=True)
    assert r.cpu_seconds is not None and r.cpu_seconds >= 0
    assert r.rss_bytes and r.num_threads and r.cpu_count
    assert r.mem_available_bytes and r.load_avg is not None
    c = host.read_counters()
    assert c.cpu_seconds is not None and c.ctx_voluntary is not None
    if Path("/proc/pressure/cpu").exists():
        assert r.psi_cpu is not None and "cpu" in c.psi_some_total_us


def _spin(stop: threading.Event) -> None:
    while not stop.is_set():
        pass


def test_cpu_burners_are_named_and_delay_our_threads() -> None:
    """Two burners and one busy thread of ours on this (small) machine: we wait to run."""
    host = HostBackend(top_n=10_000)  # all of them: the machine may be busy with others
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(max(2, os.cpu_count() or 2))
    ]
    stop = threading.Event()
    spinner = threading.Thread(target=_spin, args=(stop,))
    try:
        time.sleep(0.3)  # let the burners get past interpreter start-up
        host.read_host(scan=True)  # the CPU-share baseline
        start = host.read_counters()
        spinner.start()
        time.sleep(1.5)
        reading = host.read_host(scan=True)
        end = host.read_counters()
        stop.set()
        spinner.join()
        names = {b.pid: psutil.Process(b.pid).name() for b in burners}
    finally:
        stop.set()
        for b in burners:
            os.kill(b.pid, signal.SIGKILL)
            b.wait()
    foreign = {p.pid: p for p in reading.top_foreign}
    for pid, name in names.items():
        assert pid in foreign, f"burner {pid} missing from {reading.top_foreign}"
        assert foreign[pid].name == name
        assert foreign[pid].cpu_pct > 1
    assert os.getpid() not in foreign
    assert end.cpu_seconds is not None and start.cpu_seconds is not None
    assert end.cpu_seconds > start.cpu_seconds
    if HAS_SCHEDSTAT:
        assert start.run_delay_ns is not None and end.run_delay_ns is not None
        # More runnable threads than CPUs: our spinner waits a share of the 1.5 s.
        assert end.run_delay_ns - start.run_delay_ns > 10_000_000
