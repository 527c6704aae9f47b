"""Test hooks, not features: faults a test arms through the environment to see how the
server and the workers behave when a generation fails. Both are off unless their variable
is set, and each logs a warning when armed.

- ``STEADYGEN_TEST_FAULT=KIND@WHERE[*COUNT]``: the engine fails at a point of its run
  (``InjectedFault``; tests/reliability/test_faults.py).
- ``STEADYGEN_TEST_FAIL_PROMPT=TEXT``: a job with exactly that prompt fails on every
  attempt (``fail_prompt_check``; dead-letter tests in tests/queue/).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from steadygen.errors import ConfigError, GenerationError

log = logging.getLogger("steadygen.faults")

FAIL_PROMPT_ENV = "STEADYGEN_TEST_FAIL_PROMPT"
TEST_FAULT_ENV = "STEADYGEN_TEST_FAULT"


class InjectedFault:
    """A test hook, not a feature: ``STEADYGEN_TEST_FAULT="KIND@WHERE[*COUNT]"`` makes the
    engine fail at WHERE (start, encode, step:N, decode, save: ``Engine.fault_hook``'s
    points) in the first COUNT generations that reach it after warm-up (default 1).

    KIND ``oom`` raises MemoryError("CUDA out of memory (injected)"), which the engine
    reports as OutOfMemory, while holding 128 MiB of written memory, as a generation that
    ran out of memory part-way would: if anything kept the failure alive, the server's
    memory would show it. KIND ``error`` raises RuntimeError("injected fault").
    Example: ``STEADYGEN_TEST_FAULT=oom@step:50`` (tests/reliability/test_faults.py).
    """

    KINDS = ("oom", "error")
    BALLAST_BYTES = 128 << 20

    def __init__(self, spec: str):
        self.spec = spec
        kind, _, rest = spec.partition("@")
        where, _, count = rest.partition("*")
        if kind not in self.KINDS or not where or (count and not count.isdigit()):
            raise ConfigError(
                f"{TEST_FAULT_ENV} must look like KIND@WHERE[*COUNT] with KIND one of "
                f"{', '.join(self.KINDS)}, e.g. oom@step:2 (got {spec!r})"
            )
        self.kind, self.where = kind, where
        self.remaining = int(count) if count else 1
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> InjectedFault | None:
        spec = os.environ.get(TEST_FAULT_ENV)
        return cls(spec) if spec else None

    def __call__(self, where: str) -> None:
        if where != self.where:
            return
        with self._lock:
            if self.remaining <= 0:
                return
            self.remaining -= 1
        if self.kind == "error":
            raise RuntimeError("injected fault")
        ballast = b"\x01" * self.BALLAST_BYTES  # held by this frame, so by the traceback
        raise MemoryError(f"CUDA out of memory (injected; {len(ballast)} bytes held)")


def fail_prompt_check() -> Callable[[Any], None] | None:
    """A check the job worker runs before each job, when FAIL_PROMPT_ENV is set."""
    prompt = os.environ.get(FAIL_PROMPT_ENV) or None
    if prompt is None:
        return None
    log.warning("test hook %s is armed: jobs with that prompt fail on purpose", FAIL_PROMPT_ENV)

    def check(job: Any) -> None:
        if job.request.prompt == prompt:
            raise GenerationError(f"{FAIL_PROMPT_ENV} matched: this job fails on purpose")

    return check
