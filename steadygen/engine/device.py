"""Facts about the device our process runs on: CUDA availability, the allocator's
configuration and statistics, and what an out-of-memory error looks like."""

from __future__ import annotations

import os

ALLOC_CONF = "expandable_segments:True"


def configure_allocator() -> bool:
    """Ask for expandable segments before CUDA initialises, unless the user chose already."""
    if "PYTORCH_CUDA_ALLOC_CONF" in os.environ or "PYTORCH_ALLOC_CONF" in os.environ:
        return False
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = ALLOC_CONF
    return True


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def memory_stats(dev: str) -> dict[str, float]:
    """torch's allocator statistics for our process on a CUDA device, in bytes: allocated,
    reserved, the gap between them as a fragmentation ratio, allocation retries, OOMs."""
    import torch

    stats = torch.cuda.memory_stats(torch.device(dev))
    allocated = float(stats.get("allocated_bytes.all.current", 0))
    reserved = float(stats.get("reserved_bytes.all.current", 0))
    return {
        "allocated_bytes": allocated,
        "reserved_bytes": reserved,
        "peak_allocated_bytes": float(stats.get("allocated_bytes.all.peak", 0)),
        "fragmentation_ratio": (reserved - allocated) / reserved if reserved else 0.0,
        "alloc_retries": float(stats.get("num_alloc_retries", 0)),
        "ooms": float(stats.get("num_ooms", 0)),
    }


def reset_peak(dev: str) -> None:
    """Start a new peak: ``memory_stats``' peak is then this job's (a memory mode's cost)."""
    import torch

    torch.cuda.reset_peak_memory_stats(torch.device(dev))


def is_oom(exc: BaseException) -> bool:
    import torch

    oom_types: tuple[type[BaseException], ...] = (MemoryError,)
    if hasattr(torch, "OutOfMemoryError"):
        oom_types += (torch.OutOfMemoryError,)
    return isinstance(exc, oom_types) or "out of memory" in str(exc).lower()
