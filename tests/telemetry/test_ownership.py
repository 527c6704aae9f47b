"""Our own GPU process in a container: NVML's pids are the host's, none equals
``os.getpid()``, and ours is found by our allocator's memory and by when it appeared."""

from __future__ import annotations

import os

from steadygen.telemetry import Sampler
from steadygen.telemetry.nvml import NvmlBackend
from steadygen.telemetry.ownership import CONTEXT_MAX_BYTES, OwnProcessMatcher

from .fake_pynvml import FakeNvml, FakeProcess

HOST_PID_OURS = 3_170_001  # what NVML reports for us: a pid of the host's namespace
HOST_PID_OTHER = 3_170_777
GIB = 1 << 30


class Reserved:
    """Our allocator's reserved bytes per GPU, as the engine would report them."""

    def __init__(self, value: int = 0):
        self.value = value

    def __call__(self, index: int) -> int:
        return self.value


def sampler_with(own_gpu_bytes: Reserved | None) -> Sampler:
    return Sampler(interval_s=0, gpu_backend=NvmlBackend([0]), own_gpu_bytes=own_gpu_bytes)


def ours_and_foreign(sampler: Sampler) -> tuple[set[int], set[int]]:
    procs = sampler._read_processes() or []
    return {p.pid for p in procs if p.ours}, {p.pid for p in procs if not p.ours}


def test_the_fake_reports_pids_that_are_not_ours(fake_nvml: FakeNvml) -> None:
    assert os.getpid() not in (HOST_PID_OURS, HOST_PID_OTHER)


def test_without_help_pid_equality_calls_our_own_process_foreign(fake_nvml: FakeNvml) -> None:
    dev = fake_nvml.devices[0]
    dev.add_process(FakeProcess(pid=HOST_PID_OURS, used_bytes=20 * GIB + (500 << 20)))
    assert ours_and_foreign(sampler_with(None)) == (set(), {HOST_PID_OURS})


def test_our_process_is_matched_by_our_allocators_memory(fake_nvml: FakeNvml) -> None:
    dev = fake_nvml.devices[0]
    dev.add_process(FakeProcess(pid=HOST_PID_OTHER, used_bytes=21 * GIB))  # bigger, not ours
    dev.add_process(FakeProcess(pid=HOST_PID_OURS, used_bytes=20 * GIB + (500 << 20)))
    dev.add_process(FakeProcess(pid=4242, used_bytes=19 * GIB))  # below our reservation
    ours, foreign = ours_and_foreign(sampler_with(Reserved(20 * GIB)))
    assert ours == {HOST_PID_OURS} and foreign == {HOST_PID_OTHER, 4242}


def test_a_process_there_before_our_context_is_never_ours(fake_nvml: FakeNvml) -> None:
    dev = fake_nvml.devices[0]
    dev.add_process(FakeProcess(pid=HOST_PID_OTHER, used_bytes=6 * GIB + (400 << 20)))
    reserved = Reserved(0)  # the engine has not created its CUDA context yet
    sampler = sampler_with(reserved)
    assert ours_and_foreign(sampler) == (set(), {HOST_PID_OTHER})
    # our context appears with 6 GiB reserved: the other process would fit by memory, but
    # it was there before us; the new one is ours
    reserved.value = 6 * GIB
    dev.add_process(FakeProcess(pid=HOST_PID_OURS, used_bytes=6 * GIB + (600 << 20)))
    assert ours_and_foreign(sampler) == ({HOST_PID_OURS}, {HOST_PID_OTHER})


def test_the_identified_process_is_kept_while_it_still_fits(fake_nvml: FakeNvml) -> None:
    dev = fake_nvml.devices[0]
    dev.add_process(FakeProcess(pid=HOST_PID_OURS, used_bytes=10 * GIB + (300 << 20)))
    reserved = Reserved(10 * GIB)
    sampler = sampler_with(reserved)
    assert ours_and_foreign(sampler)[0] == {HOST_PID_OURS}
    # another process arrives whose memory is even closer to ours: ours stays ours
    dev.add_process(FakeProcess(pid=HOST_PID_OTHER, used_bytes=10 * GIB + (100 << 20)))
    assert ours_and_foreign(sampler) == ({HOST_PID_OURS}, {HOST_PID_OTHER})


def test_nothing_fits_nothing_is_marked(fake_nvml: FakeNvml) -> None:
    dev = fake_nvml.devices[0]
    dev.add_process(FakeProcess(pid=HOST_PID_OTHER, used_bytes=30 * GIB))
    ours, _ = ours_and_foreign(sampler_with(Reserved(30 * GIB - CONTEXT_MAX_BYTES - 1)))
    assert ours == set()  # more than a context beyond our reservation: someone else


def test_pid_equality_still_wins_where_it_works(fake_nvml: FakeNvml) -> None:
    dev = fake_nvml.devices[0]
    dev.add_process(FakeProcess(pid=os.getpid(), used_bytes=5 * GIB))
    dev.add_process(FakeProcess(pid=HOST_PID_OTHER, used_bytes=5 * GIB + (100 << 20)))
    ours, foreign = ours_and_foreign(sampler_with(Reserved(5 * GIB)))
    assert ours == {os.getpid()} and foreign == {HOST_PID_OTHER}


def test_a_failing_callback_costs_the_match_only() -> None:
    def broken(index: int) -> int:
        raise RuntimeError("no allocator")

    from steadygen.telemetry.sample import GpuProcess

    p = GpuProcess(0, HOST_PID_OURS, None, 5 * GIB, None, False, "compute")
    assert OwnProcessMatcher({1}, broken).mark([p]) == [p]
