"""The one retry helper: delays double up to a cap, reset after a success, and retry()
gives up after its attempts with the last error, logging each failed attempt."""

from __future__ import annotations

import logging

import pytest

from steadygen.backoff import Backoff, retry


def test_delays_double_up_to_the_cap_and_reset() -> None:
    b = Backoff(0.5, 3.0)
    assert [b.next_s() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert b.failures == 5
    b.reset()
    assert (b.next_s(), b.failures) == (0.5, 1)


def test_retry_returns_once_the_call_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    calls, slept = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "up"

    caplog.set_level(logging.WARNING)
    out = retry(flaky, what="reaching it", attempts=5, retry_on=(ConnectionError,),
                log=logging.getLogger("t"), backoff=Backoff(0.1, 1.0), sleep=slept.append)
    assert out == "up" and len(calls) == 3 and slept == [0.1, 0.2]
    assert [r.message.split(":")[0] for r in caplog.records] == [
        "reaching it failed (attempt 1 of 5)", "reaching it failed (attempt 2 of 5)"]


def test_retry_raises_the_last_error_and_lets_others_through() -> None:
    slept: list[float] = []
    with pytest.raises(ConnectionError, match="still down"):
        retry(lambda: (_ for _ in ()).throw(ConnectionError("still down")), what="x",
              attempts=3, retry_on=(ConnectionError,), log=logging.getLogger("t"),
              sleep=slept.append)
    assert len(slept) == 2
    with pytest.raises(ValueError):  # not a retryable error: raised at once
        retry(lambda: int("x"), what="x", attempts=3, retry_on=(ConnectionError,),
              log=logging.getLogger("t"), sleep=slept.append)
    assert len(slept) == 2
