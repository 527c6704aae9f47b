"""Heartbeats: an interferer proves it is interfering, all through a round.

Each interferer process writes one JSON object per line to its stdout, at least every
``BEAT_EVERY_S`` seconds, saying what it achieves:

    {"kind": "cpu", "cpu_s": 12.5}        # its own CPU seconds so far (os.times)
    {"kind": "gpu", "tflops": 310.2}      # matrix throughput since its previous beat
    {"kind": "vram", "gib_held": 4.0}     # GPU memory it holds

The bench stamps each line with its own ``time.monotonic()`` on receipt (times are never
compared across processes) and, for a round, asks whether every interferer beat all
through it, with no gap past ``MAX_GAP_S``, and achieved something: CPU burners at least
``MIN_CPU_PCT`` of a core, a GPU burner a positive TFLOP/s, a memory holder at least
``MIN_HELD_SHARE`` of what it was asked to hold. A round without that is invalid.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

BEAT_EVERY_S = 0.5
MAX_GAP_S = 3.0  # an interferer silent this long is not known to interfere
MIN_CPU_PCT = 2.0  # a CPU burner below this share of a core is stopped, not competing
MIN_HELD_SHARE = 0.9


@dataclass(frozen=True)
class Beat:
    t_mono: float  # the bench's clock when the line arrived
    data: dict[str, Any]


@dataclass
class BeatLog:
    """The beats of one interferer process, read by a daemon thread from its stdout."""

    pid: int
    kind: str
    clock: Callable[[], float] = time.monotonic
    beats: list[Beat] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def follow(self, stream: IO[str]) -> threading.Thread:
        thread = threading.Thread(target=self._read, args=(stream,), daemon=True,
                                  name=f"heartbeat-{self.pid}")
        thread.start()
        return thread

    def _read(self, stream: Iterable[str]) -> None:
        for line in stream:
            self.add(line)

    def add(self, line: str) -> None:
        try:
            data = json.loads(line)
        except ValueError:
            return  # anything else the process prints is not a beat
        if isinstance(data, dict) and data.get("kind") == self.kind:
            with self._lock:
                self.beats.append(Beat(self.clock(), data))

    def between(self, t0: float, t1: float) -> list[Beat]:
        with self._lock:
            return [b for b in self.beats if t0 - MAX_GAP_S <= b.t_mono <= t1 + MAX_GAP_S]

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.beats)


@dataclass(frozen=True)
class InterferenceCheck:
    """Whether the interference was there all through ``[t0, t1]``, and what it achieved."""

    valid: bool
    reason: str  # why not, when invalid
    achieved: dict[str, float]  # cpu_pct (summed), tflops (mean), gib_held (min)

    def to_dict(self) -> dict[str, Any]:
        return {"valid": self.valid, "reason": self.reason, "achieved": self.achieved}


def check_round(logs: list[BeatLog], t0: float, t1: float, expect_gib: float = 0.0,
                max_gap_s: float = MAX_GAP_S) -> InterferenceCheck:
    """Every interferer beat within ``max_gap_s`` of the round's start, never fell silent
    longer during it, beat within ``max_gap_s`` of its end, and achieved enough."""
    achieved: dict[str, float] = {}
    for log in logs:
        beats = [b for b in log.between(t0, t1) if t0 - max_gap_s <= b.t_mono <= t1 + max_gap_s]
        silent = _longest_silence([b.t_mono for b in beats], t0, t1)
        if silent > max_gap_s:
            what = ("sent no heartbeat during the round" if not beats else
                    f"was silent for {silent:.1f} s in the round (more than {max_gap_s:.1f} s)")
            return InterferenceCheck(False, f"the {log.kind} interferer (pid {log.pid}) {what}",
                                     achieved)
        short = _achieved(log.kind, beats, expect_gib, achieved)
        if short:
            return InterferenceCheck(False, f"the {log.kind} interferer (pid {log.pid}) "
                                     f"{short}", achieved)
    return InterferenceCheck(True, "", achieved)


def _longest_silence(times: list[float], t0: float, t1: float) -> float:
    """The longest stretch of ``[t0, t1]`` without a beat (beats just before t0 and just
    after t1 count: they bound the round's first and last stretches)."""
    if not times:
        return float("inf")
    edges = sorted(times)
    gaps = [max(0.0, edges[0] - t0), max(0.0, t1 - edges[-1])]
    gaps += [min(b, t1) - max(a, t0) for a, b in zip(edges, edges[1:], strict=False)
             if b > t0 and a < t1]
    return max(gaps)


def _achieved(kind: str, beats: list[Beat], expect_gib: float, out: dict[str, float]) -> str:
    """Add this interferer's achievement to ``out``; a reason when it is too little."""
    if kind == "cpu":
        span = beats[-1].t_mono - beats[0].t_mono
        if len(beats) < 2 or span <= 0:
            return "sent one heartbeat only: its CPU share is unknown"
        pct = 100.0 * (float(beats[-1].data["cpu_s"]) - float(beats[0].data["cpu_s"])) / span
        out["cpu_pct"] = out.get("cpu_pct", 0.0) + pct
        return "" if pct >= MIN_CPU_PCT else f"ran {pct:.0f}% of a core (< {MIN_CPU_PCT:.0f}%)"
    if kind == "gpu":
        rates = [float(b.data.get("tflops", 0.0)) for b in beats]
        out["tflops"] = sum(rates) / len(rates)
        return "" if min(rates) > 0 else "reported no GPU throughput"
    held = min(float(b.data.get("gib_held", 0.0)) for b in beats)
    out["gib_held"] = min(out.get("gib_held", held), held)
    ok = held >= MIN_HELD_SHARE * expect_gib
    return "" if ok else f"held {held:.2f} GiB of {expect_gib:.2f} GiB asked"
