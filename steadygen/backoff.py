"""Retrying with exponential backoff: the one helper every retry loop uses.

``Backoff`` hands out delays that double from ``first_s`` up to ``max_s`` and counts the
failures since the last success; ``retry`` calls a function until it succeeds, a bounded
number of times, logging each failed attempt with what it was trying to do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass
class Backoff:
    first_s: float = 0.5
    max_s: float = 30.0
    failures: int = 0
    _next_s: float = field(default=0.0, repr=False)

    def next_s(self) -> float:
        """The delay before the next attempt (and one more failure counted)."""
        delay = self._next_s or self.first_s
        self._next_s = min(delay * 2, self.max_s)
        self.failures += 1
        return delay

    def reset(self) -> None:
        """After a success: the next failure waits ``first_s`` again."""
        self._next_s = 0.0
        self.failures = 0


def retry(
    fn: Callable[[], T],
    *,
    what: str,
    attempts: int,
    retry_on: tuple[type[BaseException], ...],
    log: logging.Logger,
    backoff: Backoff | None = None,
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """``fn()`` until it returns, at most ``attempts`` times; the last failure is raised.
    Each failed attempt is logged as a warning naming ``what``."""
    backoff = backoff or Backoff()
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except retry_on as exc:
            if attempt == attempts:
                raise
            delay = backoff.next_s()
            log.warning("%s failed (attempt %d of %d): %s; retrying in %.1f s", what, attempt,
                        attempts, exc, delay)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover - attempts >= 1
