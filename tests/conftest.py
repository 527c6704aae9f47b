"""Shared fixtures: a private cache and data directory for the whole session, the tiny
checkpoint built once in it, and one loaded tiny Engine on the CPU.

The session points ``XDG_CACHE_HOME`` and ``XDG_DATA_HOME`` at temporary folders in
``os.environ``, so subprocesses (the real ``steadygen`` command) find the same tiny build
and nothing is written to the user's home.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from steadygen.request import GenerationRequest

TINY = "zimage-tiny"
TORCH_THREADS = 1
PROMPT = "a lighthouse at dusk"


@pytest.fixture(scope="session", autouse=True)
def xdg_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """XDG cache and data homes private to this test session (set for subprocesses too)."""
    dirs = {
        "XDG_CACHE_HOME": tmp_path_factory.mktemp("xdg-cache"),
        "XDG_DATA_HOME": tmp_path_factory.mktemp("xdg-data"),
    }
    mp = pytest.MonkeyPatch()
    for name, path in dirs.items():
        mp.setenv(name, str(path))
    mp.setenv("HF_HUB_OFFLINE", "1")  # the tiny model never needs the hub
    if "OMP_NUM_THREADS" not in os.environ:
        # One intra-op thread for subprocesses too: on a small shared CPU, torch's spinning
        # worker threads make a tiny generation up to 10x slower when other work runs.
        mp.setenv("OMP_NUM_THREADS", str(TORCH_THREADS))
    yield dirs
    mp.undo()


@pytest.fixture(scope="session")
def cache_dir(xdg_dirs: dict[str, Path]) -> Path:
    """steadygen's cache directory, where Settings() puts it under XDG_CACHE_HOME."""
    return xdg_dirs["XDG_CACHE_HOME"] / "steadygen"


@pytest.fixture(scope="session")
def tiny_checkpoint(cache_dir: Path) -> Path:
    """The tiny checkpoint, built once per session (a few seconds)."""
    import torch

    from steadygen.engine.tiny import ensure_tiny_checkpoint

    torch.set_num_threads(TORCH_THREADS)  # see xdg_dirs; the tiny model gains nothing from more
    return ensure_tiny_checkpoint(cache_dir)


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint: Path, cache_dir: Path) -> Iterator[Any]:
    """One loaded tiny Engine on the CPU, warmed once so no test pays first-run costs.

    Tests that change it (fault_hook) must put it back; ``engine`` below does that.
    """
    from steadygen.engine.engine import Engine

    saved = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
    engine = Engine.create(model=TINY, device="cpu", cache_dir=cache_dir)
    engine.load()
    engine.warmup([(256, 256)], steps=2)
    yield engine
    if saved is None:  # configure_allocator set it for the process; give it back
        os.environ.pop("PYTORCH_CUDA_ALLOC_CONF", None)
    else:
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = saved


@pytest.fixture
def engine(tiny_engine: Any) -> Iterator[Any]:
    """The session engine, with any fault hook a test installed removed afterwards."""
    yield tiny_engine
    tiny_engine.fault_hook = None


def make_request(**overrides: Any) -> GenerationRequest:
    """A valid tiny request at 256x256, 8 steps, seed 1; keyword arguments replace fields."""
    fields: dict[str, Any] = {
        "prompt": PROMPT,
        "width": 256,
        "height": 256,
        "steps": 8,
        "guidance": 0.0,
        "seed": 1,
        "n": 1,
        "model": TINY,
    }
    fields.update(overrides)
    return GenerationRequest(**fields)


@pytest.fixture
def make_req() -> Any:
    """``make_req(**overrides)``: a valid tiny GenerationRequest (see make_request)."""
    return make_request


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def steadygen_command() -> list[str]:
    """The installed console script when present, else the module (same code either way)."""
    script = Path(sys.executable).with_name("steadygen")
    if script.is_file():
        return [str(script)]
    found = shutil.which("steadygen")
    return [found] if found else [sys.executable, "-m", "steadygen.cli"]


@pytest.fixture(scope="session")
def run_cli() -> Any:
    """Run ``steadygen ARGS`` as a real subprocess with the session's environment."""

    def run(*args: str, timeout: float = 120.0, cwd: Path | None = None) -> CliResult:
        env = dict(os.environ)
        env.setdefault("COLUMNS", "120")
        proc = subprocess.run(
            [*steadygen_command(), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=cwd,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run
