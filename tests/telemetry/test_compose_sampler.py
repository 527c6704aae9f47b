"""The composer hands telemetry our allocator's reserved bytes on CUDA (to recognise our own
GPU process in a container), as a plain callback: telemetry itself never imports torch."""

from __future__ import annotations

import subprocess
import sys

from steadygen.compose import build_sampler
from steadygen.config import Settings


def test_on_cuda_the_sampler_gets_our_allocators_reserved_bytes(no_nvidia_smi: None) -> None:
    sampler = build_sampler(Settings(sampler_hz=0), "cuda:0")
    try:
        reserved = sampler._owner._own_gpu_bytes
        assert reserved is not None
        assert reserved(0) == 0  # no CUDA context in this process: nothing reserved yet
    finally:
        sampler.stop()
    cpu = build_sampler(Settings(sampler_hz=0), "cpu")
    try:
        assert cpu._owner._own_gpu_bytes is None
    finally:
        cpu.stop()


def test_telemetry_does_not_import_torch() -> None:
    code = ("import sys, steadygen.telemetry, steadygen.telemetry.ownership, "
            "steadygen.telemetry.sampler; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
