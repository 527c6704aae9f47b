"""A real CUDA out-of-memory error in the middle of a generation (GPU only): the tiny model
on the GPU, and an engine fault hook that allocates 1 GiB blocks at step 2 until the
device refuses. The job fails with OutOfMemory, the memory comes back (allocated and
reserved), and the next generation succeeds.

    pytest tests/reliability/test_gpu_oom.py -m gpu      # skipped without CUDA

The CPU suite injects the same failure through ``STEADYGEN_TEST_FAULT`` in a real server
(test_faults.py); this one lets PyTorch's allocator raise it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from steadygen.errors import OutOfMemory

GiB = 1 << 30

pytestmark = pytest.mark.gpu


@pytest.fixture
def gpu_engine(tiny_checkpoint: Path, cache_dir: Path) -> Any:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from steadygen.engine.engine import Engine

    engine = Engine.create(model="zimage-tiny", device="cuda:0", cache_dir=cache_dir)
    engine.load()
    engine.warmup([(256, 256)], steps=2)
    yield engine
    engine.fault_hook = None


def test_a_real_cuda_oom_fails_the_job_returns_the_memory_and_the_next_job_runs(
    gpu_engine: Any, make_req: Any, tmp_path: Path
) -> None:
    import torch

    dev = torch.device("cuda:0")
    gpu_engine.generate(make_req(steps=4), save_dir=tmp_path / "warm")
    torch.cuda.synchronize(dev)
    allocated0 = torch.cuda.memory_allocated(dev)
    reserved0 = torch.cuda.memory_reserved(dev)
    blocks_held = [0]

    def fill_the_device(where: str) -> None:
        if where != "step:2":
            return
        hoard = []  # held by this frame, so by the traceback, as a real job's tensors are
        while True:  # raises torch.OutOfMemoryError when the device is full
            hoard.append(torch.empty(GiB, dtype=torch.uint8, device=dev))
            blocks_held[0] = len(hoard)

    gpu_engine.fault_hook = fill_the_device
    with pytest.raises(OutOfMemory, match="out of memory") as failure:
        gpu_engine.generate(make_req(steps=4, seed=2), save_dir=tmp_path / "oom")
    del failure  # the caller lets go of the error, as the queue's worker does
    gpu_engine.fault_hook = None
    assert blocks_held[0] > 0
    torch.cuda.synchronize(dev)
    assert torch.cuda.memory_allocated(dev) <= allocated0 + 64 * (1 << 20)

    result = gpu_engine.generate(make_req(steps=4, seed=3), save_dir=tmp_path / "after")
    assert result.paths and result.paths[0].is_file()
    # "Memory was returned": the cache does not keep the device full for other processes.
    assert torch.cuda.memory_reserved(dev) <= reserved0 + 2 * GiB, (
        torch.cuda.memory_reserved(dev), reserved0)
