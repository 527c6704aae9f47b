"""Built-in interference for benchmarks: CPU burners, a CUDA matmul loop in another process,
a process holding GPU memory. Each runs as its own process, ends by itself after a bounded
time, and is stopped by its pid when the marked runs are over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from steadygen.errors import ConfigError

KINDS = ("cpu", "gpu", "vram")
CPU_BURNER = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass\n"


@dataclass(frozen=True)
class InterferenceSpec:
    """``cpu[:procs=2]``, ``gpu[:size=8192]``, ``vram[:gib=4]``; ``seconds`` bounds each."""

    kind: str
    procs: int = 0  # cpu: burner processes (default: one per core)
    size: int = 8192
    gib: float = 4.0
    seconds: float = 600.0
    device: str = "cuda:0"

    @classmethod
    def parse(cls, text: str) -> InterferenceSpec:
        kind, _, rest = text.partition(":")
        if kind not in KINDS:
            raise ConfigError(f"--interfere must be one of {', '.join(KINDS)} (got {kind!r})")
        values: dict[str, object] = {}
        for part in filter(None, rest.split(",")):
            name, _, raw = part.partition("=")
            if name not in ("procs", "size", "gib", "seconds", "device"):
                raise ConfigError(
                    f"--interfere option {name!r} is unknown; use procs, size, gib, seconds, device"
                )
            try:
                values[name] = raw if name == "device" else (
                    float(raw) if name in ("gib", "seconds") else int(raw)
                )
            except ValueError:
                raise ConfigError(f"--interfere {name} must be a number (got {raw!r})") from None
        return cls(kind=kind, **values)  # type: ignore[arg-type]

    @property
    def label(self) -> str:
        return self.kind


@dataclass
class Interferer:
    spec: InterferenceSpec
    pids: list[int] = field(default_factory=list)
    _procs: list[subprocess.Popen] = field(default_factory=list)

    def start(self) -> Interferer:
        s = self.spec
        if s.kind == "cpu":
            n = s.procs or (os.cpu_count() or 1)
            code = CPU_BURNER.format(seconds=s.seconds)
            cmds = [[sys.executable, "-c", code] for _ in range(n)]
        elif s.kind == "gpu":
            cmds = [[sys.executable, "-m", "steadygen.engine.burn", "gpu", "--seconds",
                     str(s.seconds), "--size", str(s.size), "--device", s.device]]
        else:
            cmds = [[sys.executable, "-m", "steadygen.engine.burn", "vram", "--seconds",
                     str(s.seconds), "--gib", str(s.gib), "--device", s.device]]
        for cmd in cmds:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            self._procs.append(p)
            self.pids.append(p.pid)
        if s.kind != "cpu":
            time.sleep(3.0)  # let CUDA initialise so the interference is real when runs start
        return self

    def stop(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            p.wait(timeout=10)
        self._procs.clear()

    def __enter__(self) -> Interferer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
