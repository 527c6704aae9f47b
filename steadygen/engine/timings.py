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
    adapter_s: float = 0.0  # loading and switching LoRA adapters (0 when unchanged)
    image_prep_s: float = 0.0  # reading, resizing and masking the input images
    vae_encode_s: float = 0.0  # VAE encode of the input / control images (inside the call)
    prepare_s: float = 0.0  # latents, timesteps: from the end of encoding to the first step
    steps_s: list[float] = field(default_factory=list)  # each denoising step
    decode_s: float = 0.0  # VAE decode and conversion to images
    save_s: float = 0.0  # PNG encode and write
    memory_s: float = 0.0  # per-request cache emptying (off by default)
    # moving weights between devices inside this job (memory modes balanced and low); taken
    # out of the phase it happened in (encode, prepare or decode), by phase in offload_phases
    offload_s: float = 0.0
    callbacks_s: float = 0.0  # inside progress callbacks between steps (events, cancel check)
    total_s: float = 0.0  # from the engine's entry to its exit
    queue_wait_s: float = 0.0  # filled by the queue: accepted -> started
    first_of_shape: bool = False  # the first run of this shape in this process
    prompt_cache_hit: bool = False
    # monotonic timestamps: "start", "encode_end", "prepare_end", "denoise_end",
    # "decode_end", "save_end", "end"; and the end of every step
    marks: dict[str, float] = field(default_factory=dict)
    step_ends: list[float] = field(default_factory=list)
    offload_phases: dict[str, float] = field(default_factory=dict)

    @property
    def denoise_s(self) -> float:
        return sum(self.steps_s)

    @property
    def other_s(self) -> float:
        parts = (
            self.load_s
            + self.warmup_s
            + self.encode_s
            + self.adapter_s
            + self.image_prep_s
            + self.vae_encode_s
            + self.prepare_s
            + self.denoise_s
            + self.decode_s
            + self.save_s
            + self.memory_s
            + self.offload_s
            + self.callbacks_s
        )
        return max(0.0, self.total_s - parts)

    def phases(self) -> dict[str, float]:
        """Phase name -> seconds, in the order they happen (queue first)."""
        return {
            "queue": self.queue_wait_s,
            "load": self.load_s,
            "warmup": self.warmup_s,
            "encode": self.encode_s,
            "adapter": self.adapter_s,
            "image_prep": self.image_prep_s,
            "vae_encode": self.vae_encode_s,
            "prepare": self.prepare_s,
            "steps": self.denoise_s,
            "decode": self.decode_s,
            "save": self.save_s,
            "memory": self.memory_s,
            "offload": self.offload_s,
            "callbacks": self.callbacks_s,
            "other": self.other_s,
        }

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["denoise_s"] = self.denoise_s
        out["other_s"] = self.other_s
        return out

    def public(self) -> dict[str, Any]:
        """The timings as job records, PNG metadata and the CLI show them: every phase and
        step in seconds, without the raw monotonic timestamps."""
        out = self.to_dict()
        out.pop("marks", None)
        out.pop("step_ends", None)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Timings:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


class StepClock:
    """Per-step times. On CPU: host timestamps. On CUDA: events, resolved once at the end.

    ``start()`` is called when the transformer is first entered, ``end()`` when a step's
    callback is entered and ``resume()`` when it returns. Step i lasts from the previous
    resume (or the first start) to its end, so scheduler work between forwards counts as
    step time, while the time spent in progress callbacks (events, cancel checks) is kept
    apart as ``callbacks_s``.
    """

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self._starts: list[float] = []
        self._ends: list[float] = []
        self._start_events: list[Any] = []
        self._end_events: list[Any] = []

    def _event(self) -> Any:
        import torch

        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def start(self) -> None:
        if self._starts:
            return
        self._starts.append(time.monotonic())
        if self.cuda:
            self._start_events.append(self._event())

    def end(self) -> None:
        self._ends.append(time.monotonic())
        if self.cuda:
            self._end_events.append(self._event())

    def resume(self) -> None:
        self._starts.append(time.monotonic())
        if self.cuda:
            self._start_events.append(self._event())

    @property
    def completed(self) -> int:
        return len(self._ends)

    @property
    def first_start(self) -> float | None:
        return self._starts[0] if self._starts else None

    def host_step_s(self) -> float:
        """The host-side length of the step just ended (progress and ETA only)."""
        if not self._ends:
            return 0.0
        return self._ends[-1] - self._starts[len(self._ends) - 1]

    def resolve(self, denoise_end: float) -> tuple[list[float], list[float], float]:
        """(step durations, step end timestamps, seconds in callbacks), after the caller
        synchronised the device."""
        n = len(self._ends)
        if not n or not self._starts:
            return [], [], 0.0
        if not self.cuda:
            durations = [self._ends[i] - self._starts[i] for i in range(n)]
            pairs = range(min(n, len(self._starts) - 1))
            gaps = [self._starts[i + 1] - self._ends[i] for i in pairs]
            return durations, list(self._ends), sum(gaps)
        starts, ends = self._start_events, self._end_events
        durations = [starts[i].elapsed_time(ends[i]) / 1000.0 for i in range(n)]
        gaps = [
            ends[i].elapsed_time(starts[i + 1]) / 1000.0 for i in range(min(n, len(starts) - 1))
        ]
        # Place the GPU's step ends on the host clock, counting back from the synchronised end.
        span = starts[0].elapsed_time(ends[-1]) / 1000.0
        first = denoise_end - span
        step_ends = [first + starts[0].elapsed_time(ev) / 1000.0 for ev in ends]
        return durations, step_ends, sum(gaps)
