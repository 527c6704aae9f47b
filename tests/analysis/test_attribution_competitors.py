"""Competitors from the real host scan: a burner started as another user's program would be
is found by pid, with the CPUs it may run on, and named as the one confined to our CPU."""

from __future__ import annotations

import os
import time

from steadygen.analysis.cpu import competitors
from steadygen.bench.interfere import InterferenceSpec, Interferer
from steadygen.telemetry import Sample
from steadygen.telemetry.host import HostBackend


def test_a_burner_outside_our_session_is_seen_with_its_cpus() -> None:
    """Another user's program (its own session, not our child), pinned to one CPU: the host
    scan sees its pid, its CPU share and where it may run, which is how attribution names
    it as the competitor confined to our CPU."""
    cpu = min(os.sched_getaffinity(0))
    host = HostBackend(top_n=10_000, scan_every_s=0.0)  # all of them: the machine is shared
    spec = InterferenceSpec("cpu", procs=1, cpus=(cpu,), seconds=30, detached=True)
    with Interferer(spec) as burner:
        (pid,) = burner.pids
        host.read_host(scan=True)
        time.sleep(1.0)
        reading = host.read_host(scan=True)
    seen = {p.pid: p for p in reading.top_foreign}
    assert pid in seen and seen[pid].cpu_affinity == (cpu,)
    assert seen[pid].cpu_pct > 0
    named = competitors([Sample(t_mono=0.0, t_wall=0.0, host=reading)], {cpu}, n=50)
    mine = next(c for c in named if pid in c["pids"])
    assert mine["confined_to_our_cpus"]
