"""Built-in interference for benchmarks: CPU burners, a CUDA matmul loop in another process,
a process holding GPU memory. Each runs as its own process, ends by itself after a bounded
time, reports a heartbeat with what it achieves (``heartbeat.py``), and is stopped by its
pid when the marked runs are over.

CPU burners can be pinned to CPUs (``cpus``: the machine shapes of the attribution tests)
and started outside our process tree and session (``detached``: as another user's program
would be, in its own scheduling group), and by default there is one per CPU our process
may use (its affinity), not per CPU of the host.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO

from steadygen.bench.heartbeat import (
    BEAT_EVERY_S,
    MAX_GAP_S,
    BeatLog,
    InterferenceCheck,
    check_round,
)
from steadygen.errors import ConfigError

KINDS = ("cpu", "gpu", "vram")
CPU_BURNER = f"""import json, os, time
end = time.monotonic() + {{seconds}}
beat = 0.0
while True:
    now = time.monotonic()
    if now >= end:
        break
    if now >= beat:
        t = os.times()
        print(json.dumps({{{{"kind": "cpu", "cpu_s": t.user + t.system}}}}), flush=True)
        beat = now + {BEAT_EVERY_S}
"""
# Starts a burner in a new session and exits: the burner is then nobody's child here
# (re-parented to init), in its own session and scheduling group, as another user's is.
DETACH = """import subprocess, sys
p = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, start_new_session=True)
print(p.pid, flush=True)
"""
READY_TIMEOUT_S = 60.0  # the first heartbeat: a GPU burner imports torch first


def usable_cpus() -> list[int]:
    """The CPUs our process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


@dataclass(frozen=True)
class InterferenceSpec:
    """``cpu[:procs=2]``, ``gpu[:size=8192]``, ``vram[:gib=4]``; ``seconds`` bounds each."""

    kind: str
    procs: int = 0  # cpu: burner processes (default: one per CPU our process may use)
    size: int = 8192
    gib: float = 4.0
    seconds: float = 600.0
    device: str = "cuda:0"
    cpus: tuple[int, ...] = ()  # cpu: pin the burners to these CPUs ("cpus=0+1")
    detached: bool = False  # cpu: outside our process tree and session ("detached=1")

    @classmethod
    def parse(cls, text: str) -> InterferenceSpec:
        kind, _, rest = text.partition(":")
        if kind not in KINDS:
            raise ConfigError(f"--interfere must be one of {', '.join(KINDS)} (got {kind!r})")
        values: dict[str, object] = {}
        for part in filter(None, rest.split(",")):
            name, _, raw = part.partition("=")
            if name not in ("procs", "size", "gib", "seconds", "device", "cpus", "detached"):
                raise ConfigError(
                    f"--interfere option {name!r} is unknown; use procs, size, gib, seconds, "
                    "device, cpus, detached"
                )
            try:
                if name == "cpus":
                    values[name] = tuple(int(c) for c in raw.split("+"))
                    continue
                if name == "detached":
                    values[name] = raw.lower() in ("1", "true", "yes")
                    continue
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
    commands: list[list[str]] | None = None  # tests: other programs in place of the burners
    ready_timeout_s: float = READY_TIMEOUT_S
    _procs: list[subprocess.Popen] = field(default_factory=list)
    _logs: list[BeatLog] = field(default_factory=list)
    _readers: list[tuple[threading.Thread, IO[str]]] = field(default_factory=list)

    def start(self) -> Interferer:
        """Start the interferers and wait for each one's first heartbeat (or its death, or
        ``ready_timeout_s``; then the rounds' checks say it was missing)."""
        cmds = self.commands or self._commands()
        for cmd in cmds:
            if self.spec.detached:
                self._start_detached(cmd)
            else:
                p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
                self._track(p.pid, p)
                assert p.stdout is not None
                self._follow(p.stdout)
        self._pin()
        self._wait_first_beats()
        self._check_alive()
        return self

    def _commands(self) -> list[list[str]]:
        s = self.spec
        if s.kind == "cpu":
            n = s.procs or len(s.cpus or usable_cpus())
            return [[sys.executable, "-c", CPU_BURNER.format(seconds=s.seconds)]] * n
        if s.kind == "gpu":
            return [[sys.executable, "-m", "steadygen.engine.burn", "gpu", "--seconds",
                     str(s.seconds), "--size", str(s.size), "--device", s.device]]
        return [[sys.executable, "-m", "steadygen.engine.burn", "vram", "--seconds",
                 str(s.seconds), "--gib", str(s.gib), "--device", s.device]]

    def _track(self, pid: int, proc: subprocess.Popen | None) -> None:
        self.pids.append(pid)
        if proc is not None:
            self._procs.append(proc)
        self._logs.append(BeatLog(pid=pid, kind=self.spec.kind))

    def _start_detached(self, cmd: list[str]) -> None:
        """Through a launcher in a new session that exits at once. The burner inherits the
        launcher's stdout, a pipe to us: its pid comes first, then its beats."""
        launcher = subprocess.Popen([sys.executable, "-c", DETACH, *cmd],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True,
                                    start_new_session=True)
        assert launcher.stdout is not None
        pid = int(launcher.stdout.readline())
        launcher.wait(timeout=60)
        self._track(pid, None)
        self._follow(launcher.stdout)

    def _follow(self, stream: IO[str]) -> None:
        self._readers.append((self._logs[-1].follow(stream), stream))

    def _pin(self) -> None:
        if self.spec.cpus and hasattr(os, "sched_setaffinity"):
            for pid in self.pids:
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setaffinity(pid, set(self.spec.cpus))

    def _wait_first_beats(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if all(log.count for log in self._logs) or self._dead():
                return
            time.sleep(0.02)

    def _dead(self) -> list[tuple[int, int | None]]:
        dead = [(p.pid, p.returncode) for p in self._procs if p.poll() is not None]
        dead += [(pid, None) for pid in self.pids if not _alive(pid)
                 and pid not in {p.pid for p in self._procs}]
        return dead

    def _check_alive(self) -> None:
        """An interferer that exited at once would leave the marked runs undisturbed and
        the report wrong: stop everything and say why."""
        dead = self._dead()
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

    def check(self, t0: float, t1: float) -> InterferenceCheck:
        """Whether every interferer beat all through ``[t0, t1]`` (monotonic seconds here)
        and achieved what it should. Waits for each one's first beat after ``t1`` (at most
        ``MAX_GAP_S``), so that a short round is judged on a beat at each end."""
        deadline = time.monotonic() + MAX_GAP_S
        while time.monotonic() < deadline and not all(
                any(b.t_mono >= t1 for b in log.between(t1, t1)) for log in self._logs):
            time.sleep(0.02)
        return check_round(self._logs, t0, t1, expect_gib=self.spec.gib)

    def stop(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
        own = {p.pid for p in self._procs}
        for pid in self.pids:  # detached burners: not our children, stopped by pid
            if pid not in own:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        self._procs.clear()
        for thread, stream in self._readers:  # their writers are gone: the reads end
            thread.join(timeout=10)
            stream.close()
        self._readers.clear()

    def __enter__(self) -> Interferer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
