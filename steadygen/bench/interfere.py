"""Built-in interference for benchmarks: CPU burners, a CUDA matmul loop in another process,
a process holding GPU memory. Each runs as its own process, ends by itself after a bounded
time, and is stopped by its pid when the marked runs are over."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from steadygen.errors import ConfigError

KINDS = ("cpu", "gpu", "vram")
CPU_BURNER = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass\n"
# A CPU burner counts as started once it has run this much CPU: the interpreter's start-up
# takes ~0.05 s of CPU, and on a loaded machine far longer in wall time, so without the wait
# the first marked run would meet little interference.
READY_CPU_S = 0.1
READY_TIMEOUT_S = 10.0


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
            if name == "procs" and values[name] < 0:  # type: ignore[operator]
                raise ConfigError(f"--interfere procs must be 0 (one per core) or more "
                                  f"(got {raw!r})")
            if name in ("size", "gib", "seconds") and values[name] <= 0:  # type: ignore[operator]
                raise ConfigError(f"--interfere {name} must be above 0 (got {raw!r})")
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
        if s.kind == "cpu":
            self._wait_running()
        else:
            time.sleep(3.0)  # let CUDA initialise so the interference is real when runs start
        self._check_alive()
        return self

    def _check_alive(self) -> None:
        """An interferer that exited at once would leave the marked runs undisturbed and
        the report wrong: stop everything and say why."""
        dead = [(p.pid, p.returncode) for p in self._procs if p.poll() is not None]
        if not dead:
            return
        self.stop()
        pid, code = dead[0]
        hint = " (2: no CUDA GPU here, or no such device)" if code == 2 else ""
        raise ConfigError(
            f"the {self.spec.kind} interferer (pid {pid}) exited at once with code {code}"
            f"{hint}; try it alone: python -m steadygen.engine.burn {self.spec.kind} --seconds 5"
            if self.spec.kind != "cpu" else
            f"a CPU burner (pid {pid}) exited at once with code {code}"
        )

    def _wait_running(self) -> None:
        """Return once every burner is spinning (or has died, or after READY_TIMEOUT_S)."""
        import psutil

        deadline = time.monotonic() + READY_TIMEOUT_S
        waiting = list(self._procs)
        while waiting and time.monotonic() < deadline:
            still = []
            for p in waiting:
                try:
                    times = psutil.Process(p.pid).cpu_times()
                except psutil.Error:
                    continue
                if p.poll() is None and times.user + times.system < READY_CPU_S:
                    still.append(p)
            waiting = still
            if waiting:
                time.sleep(0.02)

    def stop(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
        self._procs.clear()

    def __enter__(self) -> Interferer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
