"""CUDA graphs for the denoising transformer, one per warm shape bucket.

A step at 1024x1024 launches a few thousand kernels. When another program keeps every host
core busy, the launching thread waits for a core between launches and the GPU idles: the
step gets slower for reasons that are not the GPU's. A CUDA graph replays the whole forward
with one launch, so a busy host can delay a step by one scheduling slice instead of
thousands. One graph is captured per input shape (image size x caption bucket x batch),
the first time the shape is met, and replayed from then on; that first call (eager warm-up
runs, capture) is cold start and is reported as such (``GraphRunner.drain_events``).

The transformer's forward has no host synchronisation and, without an attention mask, no
host-to-device copies, so it captures as is. A capture that fails leaves that shape eager
and says why (``GraphRunner.failures``). On a CPU there is nothing to capture: the option
is skipped with a notice. ``replay="eager"`` runs the same buffer plumbing without a
graph (the forward re-run on the static inputs), which is how the CPU tests check it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from steadygen.engine.speed import CompileEvent

log = logging.getLogger("steadygen.engine")
# Shapes kept (least recently used leaves first). The key is the exact caption length, not
# its 32-token bucket: diffusers pads inside the forward (pad positions get a learned token
# and their own positions), which an outside padding cannot reproduce.
MAX_GRAPHS = 16
WARMUP_CALLS = 2  # eager calls on a side stream before a capture, as torch asks


@dataclass
class _Entry:
    inputs: tuple[list[Any], Any, list[Any]]  # static x list, timestep, caption list
    outputs: list[Any]
    replay: Any  # the graph's replay, or the eager re-run


@dataclass
class GraphRunner:
    """Wraps ``transformer.forward``: per input shape, capture once, then copy in and replay."""

    transformer: Any
    replay_mode: str = "cuda"  # cuda | eager (CPU tests)
    max_graphs: int = MAX_GRAPHS
    entries: dict[tuple[Any, ...], _Entry] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    replays: int = 0
    _events: list[CompileEvent] = field(default_factory=list)
    _eager: Any = None
    _pool: Any = None

    def install(self) -> None:
        self._eager = self.transformer.forward
        self.transformer.forward = self.forward

    def uninstall(self) -> None:
        if self._eager is not None:
            self.transformer.__dict__.pop("forward", None)
            self._eager = None

    @staticmethod
    def key(x: list[Any], t: Any, cap: list[Any]) -> tuple[Any, ...]:
        return (tuple(tuple(v.shape) for v in x), tuple(t.shape),
                tuple(tuple(c.shape) for c in cap), x[0].dtype, str(x[0].device))

    def forward(self, x: list[Any], t: Any, cap: list[Any], *args: Any,
                return_dict: bool = True, **kwargs: Any) -> Any:
        extra = args or {k: v for k, v in kwargs.items() if v is not None}
        if extra:  # anything beyond the plain call (patches, omni inputs) stays eager
            return self._eager(x, t, cap, *args, return_dict=return_dict, **kwargs)
        key = self.key(x, t, cap)
        entry = self.entries.get(key)
        if entry is None and str(key) not in self.failures:
            entry = self._capture(key, x, t, cap)
        elif entry is not None:  # most recently used last; the oldest leaves first
            self.entries[key] = self.entries.pop(key)
        if entry is None:
            return self._eager(x, t, cap, return_dict=return_dict)
        for dst, src in zip(entry.inputs[0], x, strict=True):
            dst.copy_(src)
        entry.inputs[1].copy_(t)
        for dst, src in zip(entry.inputs[2], cap, strict=True):
            dst.copy_(src)
        entry.replay()
        self.replays += 1
        out = [o.clone() for o in entry.outputs]  # the next replay overwrites the buffers
        return (out,) if not return_dict else _output(out)

    def _capture(self, key: tuple[Any, ...], x: list[Any], t: Any,
                 cap: list[Any]) -> _Entry | None:
        import torch

        t0 = time.monotonic()
        inputs = ([v.clone() for v in x], t.clone(), [c.clone() for c in cap])
        try:
            if self.replay_mode == "eager":
                entry = self._capture_eager(inputs)
            else:
                entry = self._capture_cuda(inputs, torch)
        except Exception as exc:  # a shape that cannot be captured stays eager, said once
            self.failures[str(key)] = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("CUDA graph capture failed for %s; running it eager: %s", key, exc)
            return None
        self.entries[key] = entry
        while len(self.entries) > self.max_graphs:
            self.entries.pop(next(iter(self.entries)))
        self._events.append(CompileEvent(t0, time.monotonic(), "CUDAGRAPH_CAPTURE"))
        return entry

    def _run(self, inputs: tuple[list[Any], Any, list[Any]]) -> list[Any]:
        return list(self._eager(inputs[0], inputs[1], inputs[2], return_dict=False)[0])

    def _capture_eager(self, inputs: tuple[list[Any], Any, list[Any]]) -> _Entry:
        entry = _Entry(inputs, self._run(inputs), replay=None)

        def replay() -> None:
            for dst, src in zip(entry.outputs, self._run(inputs), strict=True):
                dst.copy_(src)

        entry.replay = replay
        return entry

    def _capture_cuda(self, inputs: tuple[list[Any], Any, list[Any]], torch: Any) -> _Entry:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self._run(inputs)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: the server's other threads (metrics, telemetry) may touch CUDA
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            outputs = self._run(inputs)
        graph.replay()  # the capture itself computed nothing
        return _Entry(inputs, outputs, replay=graph.replay)

    def reset(self) -> None:
        """Forget every graph: call after the transformer's weights or modules change other
        than in place (a LoRA loaded unfused, a new adapter), which a graph would miss."""
        self.entries.clear()
        self.failures.clear()

    def drain_events(self) -> list[CompileEvent]:
        """The captures since the last call (cold start, like a compile)."""
        events, self._events = self._events, []
        return events

    def summary(self) -> dict[str, Any]:
        return {"graphs": len(self.entries), "replays": self.replays,
                "failures": dict(self.failures)}


def _output(sample: list[Any]) -> Any:
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    return Transformer2DModelOutput(sample=sample)


def install(transformer: Any, enabled: bool, device: str,
            weights_move: bool) -> tuple[GraphRunner | None, str]:
    """(the runner, or None; what was applied and why)."""
    if not enabled:
        return None, "off"
    if not device.startswith("cuda"):
        log.info("CUDA graphs need a CUDA device; the transformer runs eager here")
        return None, "skipped: CUDA graphs need a CUDA device (the transformer runs eager here)"
    if weights_move:
        return None, ("skipped: memory low moves the transformer's weights between jobs, "
                      "and a captured graph keeps their old addresses")
    runner = GraphRunner(transformer)
    runner.install()
    return runner, f"one CUDA graph per input shape (up to {runner.max_graphs}), captured at " \
        "its first run"
