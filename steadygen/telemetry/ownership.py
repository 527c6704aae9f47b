"""Which GPU process is ours, when pids cannot say.

NVML reports pids in the host's pid namespace. In a container without the host's pid
namespace (Kubernetes without ``hostPID``, Docker without ``--pid=host``) our own pid is a
different number, and a server that trusted pid equality would find itself among the
"foreign" processes and blame itself. So, when no process on a GPU has one of our pids,
ours is found by what only it can match:

- our allocator's reserved bytes on that GPU (a plain callback the composer passes in; the
  engine's allocator knows them, telemetry never imports torch): NVML's used memory of our
  process is those bytes plus the CUDA context and library workspaces, which are never
  negative and stay within ``CONTEXT_MAX_BYTES``;
- the process appears when our CUDA context is created: a pid already on the GPU while our
  allocator held nothing there is not ours.

Among the processes that fit, the one already identified is kept, else the one whose
memory is nearest to ours. With no callback (or nothing reserved yet) nothing is marked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from steadygen.telemetry.sample import GpuProcess

log = logging.getLogger("steadygen.telemetry")

# What NVML counts for a process beyond its allocator's reservations: the CUDA context
# (hundreds of MiB), cuBLAS/cuDNN workspaces and kernels loaded; generous on purpose.
CONTEXT_MAX_BYTES = 4 << 30

OwnGpuBytes = Callable[[int], int | None]  # GPU index -> our allocator's reserved bytes


class OwnProcessMatcher:
    """Marks our GPU process in process lists, by pid when it can, else by memory."""

    def __init__(self, own_pids: set[int], own_gpu_bytes: OwnGpuBytes | None = None):
        self.own_pids = set(own_pids)
        self._own_gpu_bytes = own_gpu_bytes
        self._before: dict[int, set[int]] = {}  # per GPU: pids there before our context
        self._known: dict[int, int] = {}  # per GPU: the pid identified as ours
        self._warned: set[int] = set()

    def mark(self, procs: list[GpuProcess]) -> list[GpuProcess]:
        by_gpu: dict[int, list[GpuProcess]] = {}
        for p in procs:
            by_gpu.setdefault(p.gpu_index, []).append(p)
        ours: set[tuple[int, int]] = set()
        for index, on_gpu in by_gpu.items():
            if any(p.ours or p.pid in self.own_pids for p in on_gpu):
                continue  # pid equality works here (the host's pid namespace)
            pid = self._match(index, on_gpu)
            if pid is not None:
                ours.add((index, pid))
        if not ours:
            return procs
        return [replace(p, ours=True) if (p.gpu_index, p.pid) in ours else p for p in procs]

    def _match(self, index: int, procs: list[GpuProcess]) -> int | None:
        reserved = self._reserved(index)
        if reserved is None:
            return None
        if reserved == 0:  # no context of ours yet: whoever is there is someone else
            self._before.setdefault(index, set()).update(p.pid for p in procs)
            return None
        before = self._before.get(index, set())
        fits = [p for p in procs if p.pid not in before and p.used_bytes is not None
                and 0 <= p.used_bytes - reserved <= CONTEXT_MAX_BYTES]
        if not fits:
            if index not in self._warned:
                self._warned.add(index)
                log.warning("GPU %d: none of the %d GPU processes matches our %d reserved "
                            "bytes; our own process may be counted as foreign", index,
                            len(procs), reserved)
            return None
        known = self._known.get(index)
        if known is not None and any(p.pid == known for p in fits):
            return known
        best = min(fits, key=lambda p: (p.used_bytes or 0) - reserved)
        self._known[index] = best.pid
        return best.pid

    def _reserved(self, index: int) -> int | None:
        if self._own_gpu_bytes is None:
            return None
        try:
            value = self._own_gpu_bytes(index)
        except Exception:  # a fact we could not get costs the match, never the sample
            log.exception("own GPU memory callback failed")
            return None
        return None if value is None else int(value)
