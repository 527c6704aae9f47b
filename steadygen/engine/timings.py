"""Timings of one generation, and the clocks that measure them.

Raw monotonic timestamps are taken at phase edges (``time.monotonic()``, the clock the
telemetry sampler uses, so a job's samples can be cut by phase and step) and the intervals
are derived once, at the end. On CUDA the per-step times come from CUDA events recorded
between kernels, read after one synchronise at the end of the denoising loop; no host sync
per step.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Timings:
    """Seconds spent in each phase of one job. ``other_s`` is what no phase accounts for."""

    load_s: float = 0.0  # model load, when this job paid for it
    warmup_s: float = 0.0  # warm-up or compile paid inside this job
    encode_s: float = 0.0  # text encoder
    prepare_s: float = 0.0  # latents, timesteps: from the end of encoding to the first step
    steps_s: list[float] = field(default_factory=list)  # each denoising step
    decode_s: float = 0.0  # VAE decode and conversion to images
    save_s: float = 0.0  # PNG encode and write
    memory_s: float = 0.0  # per-request cache emptying (off by default)
    total_s: float = 0.0  # from the engine's entry to its exit
    queue_wait_s: float = 0.0  # filled by the queue: accepted -> started
    first_of_shape: bool = False  # the first run of this shape in this process
    prompt_cache_hit: bool = False
    # monotonic timestamps: "start", "encode_end", "prepare_end", "denoise_end",
    # "decode_end", "save_end", "end"; and the end of every step
    marks: dict[str, float] = field(default_factory=dict)
    step_ends: list[float] = field(default_factory=list)

    @property
    def denoise_s(self) -> float:
        return sum(self.steps_s)

    @property
    def other_s(self) -> float:
        parts = (
            self.load_s
            + self.warmup_s
            + self.encode_s
            + self.prepare_s
            + self.denoise_s
            + self.decode_s
            + self.save_s
            + self.memory_s
        )
        return max(0.0, self.total_s - parts)

    def phases(self) -> dict[str, float]:
        """Phase name -> seconds, in the order they happen (queue first)."""
        return {
            "queue": self.queue_wait_s,
            "load": self.load_s,
            "warmup": self.warmup_s,
            "encode": self.encode_s,
            "prepare": self.prepare_s,
            "steps": self.denoise_s,
            "decode": self.decode_s,
            "save": self.save_s,
            "memory": self.memory_s,
            "other": self.other_s,
        }

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["denoise_s"] = self.denoise_s
        out["other_s"] = self.other_s
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Timings:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


class StepClock:
    """Per-step times. On CPU: host timestamps. On CUDA: events, resolved once at the end.

    ``start()`` is called when the transformer is first entered in a step, ``end()`` when
    the step's callback runs. Step i lasts from the end of step i-1 (or the first start)
    to its own end, so scheduler work between forwards is counted, not lost.
    """

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self._first_host: float | None = None
        self._first_event: Any = None
        self._host_ends: list[float] = []
        self._events: list[Any] = []

    def start(self) -> None:
        if self._first_host is not None:
            return
        self._first_host = time.monotonic()
        if self.cuda:
            import torch

            self._first_event = torch.cuda.Event(enable_timing=True)
            self._first_event.record()

    def end(self) -> None:
        self._host_ends.append(time.monotonic())
        if self.cuda:
            import torch

            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._events.append(ev)

    @property
    def completed(self) -> int:
        return len(self._host_ends)

    @property
    def first_start(self) -> float | None:
        return self._first_host

    def host_step_s(self) -> float:
        """The host-side length of the step just ended (progress and ETA only)."""
        ends = self._host_ends
        if not ends:
            return 0.0
        prev = ends[-2] if len(ends) > 1 else (self._first_host or ends[-1])
        return ends[-1] - prev

    def resolve(self, denoise_end: float) -> tuple[list[float], list[float]]:
        """(step durations, step end timestamps), after the caller synchronised the device."""
        if not self._host_ends or self._first_host is None:
            return [], []
        if not self.cuda:
            edges = [self._first_host, *self._host_ends]
            durations = [b - a for a, b in zip(edges, edges[1:], strict=False)]
            return durations, list(self._host_ends)
        edges_ev = [self._first_event, *self._events]
        durations = [
            a.elapsed_time(b) / 1000.0 for a, b in zip(edges_ev, edges_ev[1:], strict=False)
        ]
        # Place the GPU's step ends on the host clock, walking back from the synchronised end.
        ends: list[float] = []
        t = denoise_end
        for d in reversed(durations):
            ends.append(t)
            t -= d
        return durations, list(reversed(ends))
