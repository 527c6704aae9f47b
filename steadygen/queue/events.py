"""Job events in memory, handed from worker threads to asyncio subscribers (SSE streams).

Workers publish from their own threads; each subscriber is an asyncio.Queue fed through
``loop.call_soon_threadsafe``. A bounded log per job lets a reconnecting client resume
after its Last-Event-ID; lifecycle events are also in the job store, which covers restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator, Iterable

from steadygen.queue.job import JobEvent

_ALL = "*"


class EventHub:
    def __init__(self, max_events_per_job: int = 512, max_jobs: int = 2000):
        self._lock = threading.Lock()
        self._logs: OrderedDict[str, list[JobEvent]] = OrderedDict()
        self._subs: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]]] = (
            defaultdict(list)
        )
        self.max_events = max_events_per_job
        self.max_jobs = max_jobs

    def publish(self, event: JobEvent) -> None:
        """Record and deliver an event; safe from any thread."""
        with self._lock:
            log = self._logs.setdefault(event.job_id, [])
            self._logs.move_to_end(event.job_id)
            log.append(event)
            if len(log) > self.max_events:
                del log[: len(log) - self.max_events]
            while len(self._logs) > self.max_jobs:
                self._logs.popitem(last=False)
            targets = list(self._subs.get(event.job_id, ())) + list(self._subs.get(_ALL, ()))
        for loop, queue in targets:
            # RuntimeError: that loop is closed, so its subscriber is gone
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, event)

    def history(self, job_id: str) -> list[JobEvent]:
        with self._lock:
            return list(self._logs.get(job_id, ()))

    def last_n(self, job_id: str) -> int:
        """The highest event number in memory for the job's latest attempt, or -1."""
        with self._lock:
            log = self._logs.get(job_id)
            return log[-1].n if log else -1

    def open(self, job_id: str | None = None) -> Subscription:
        """Start receiving events now (all jobs when job_id is None); must be closed."""
        key = job_id or _ALL
        sub = Subscription(self, key, asyncio.get_running_loop())
        with self._lock:
            self._subs[key].append(sub.entry)
        return sub

    def _close(self, key: str, entry: tuple[asyncio.AbstractEventLoop, asyncio.Queue]) -> None:
        with self._lock:
            subs = self._subs.get(key, [])
            if entry in subs:
                subs.remove(entry)
            if not subs:
                self._subs.pop(key, None)

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._subs.values())


class Subscription:
    """Events published after ``EventHub.open``, in order; use as an async iterator."""

    def __init__(self, hub: EventHub, key: str, loop: asyncio.AbstractEventLoop):
        self._hub = hub
        self._key = key
        self.queue: asyncio.Queue[JobEvent] = asyncio.Queue()
        self.entry = (loop, self.queue)

    async def get(self) -> JobEvent:
        return await self.queue.get()

    def __aiter__(self) -> AsyncIterator[JobEvent]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[JobEvent]:
        while True:
            yield await self.queue.get()

    def close(self) -> None:
        self._hub._close(self._key, self.entry)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def merge_events(*sources: Iterable[JobEvent]) -> list[JobEvent]:
    """Events from several places (store, memory), each once, in (attempt, n) order."""
    seen: dict[tuple[int, int], JobEvent] = {}
    for source in sources:
        for event in source:
            seen.setdefault(event.key, event)
    return [seen[k] for k in sorted(seen)]
