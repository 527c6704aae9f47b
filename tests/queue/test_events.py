"""EventHub: events published from worker threads reach asyncio subscribers, in order;
bounded history; merge_events; event ids."""

from __future__ import annotations

import asyncio
import threading

from steadygen.queue.events import EventHub, Subscription, merge_events
from steadygen.queue.job import JobEvent, parse_event_id


def ev(job: str, attempt: int, n: int, kind: str = "step") -> JobEvent:
    return JobEvent(job, attempt, n, kind, {"n": n})


async def collect(sub: Subscription, count: int, timeout: float = 30.0) -> list[JobEvent]:
    return [await asyncio.wait_for(sub.get(), timeout) for _ in range(count)]


def test_events_from_worker_threads_reach_the_loop_in_order() -> None:
    hub = EventHub()
    per_thread = 200

    async def main() -> tuple[dict[str, list[int]], list[int], int]:
        with hub.open(None) as everything, hub.open("job-1") as one:
            def worker(j: int) -> None:
                for n in range(per_thread):
                    hub.publish(ev(f"job-{j}", 1, n))

            threads = [threading.Thread(target=worker, args=(j,)) for j in range(4)]
            for t in threads:
                t.start()
            got = await collect(everything, 4 * per_thread)
            mine = await collect(one, per_thread)
            for t in threads:
                t.join()
            await asyncio.sleep(0.05)
            return ({j: [e.n for e in got if e.job_id == j] for j in {e.job_id for e in got}},
                    [e.n for e in mine], one.queue.qsize())

    by_job, mine, left = asyncio.run(main())
    assert sorted(by_job) == ["job-0", "job-1", "job-2", "job-3"]
    for numbers in by_job.values():
        assert numbers == list(range(per_thread))  # each thread's order is kept
    assert mine == list(range(per_thread))  # only job-1's events
    assert left == 0
    assert hub.subscriber_count == 0  # closed by the with blocks


def test_a_subscription_sees_only_events_after_it_opened_and_none_after_close() -> None:
    hub = EventHub()
    hub.publish(ev("a", 1, 0))

    async def main() -> tuple[list[int], int]:
        sub = hub.open("a")
        hub.publish(ev("a", 1, 1))
        first = await collect(sub, 1)
        sub.close()
        hub.publish(ev("a", 1, 2))
        await asyncio.sleep(0.05)
        return [e.n for e in first], sub.queue.qsize()

    seen, after_close = asyncio.run(main())
    assert seen == [1]
    assert after_close == 0
    assert [e.n for e in hub.history("a")] == [0, 1, 2]
    assert hub.last_n("a") == 2 and hub.last_n("unknown") == -1


def test_publishing_to_a_subscriber_whose_loop_has_closed_does_not_raise() -> None:
    hub = EventHub()

    async def main() -> None:
        hub.open("a")  # never closed: its loop ends with asyncio.run

    asyncio.run(main())
    assert hub.subscriber_count == 1
    hub.publish(ev("a", 1, 0))  # the loop is gone; the event is still recorded
    assert [e.n for e in hub.history("a")] == [0]


def test_history_is_bounded_per_job_and_in_jobs() -> None:
    hub = EventHub(max_events_per_job=5, max_jobs=3)
    for n in range(12):
        hub.publish(ev("a", 1, n))
    assert [e.n for e in hub.history("a")] == [7, 8, 9, 10, 11]
    for job in ("b", "c", "d"):
        hub.publish(ev(job, 1, 0))
    assert hub.history("a") == []  # the least recently active job went first
    assert all(hub.history(j) for j in ("b", "c", "d"))


def test_merge_events_keeps_each_event_once_in_attempt_then_n_order() -> None:
    stored = [ev("a", 0, 0, "queued"), ev("a", 1, 0, "started"), ev("a", 2, 0, "started")]
    memory = [ev("a", 1, 0, "started"), ev("a", 1, 1), ev("a", 1, 2), ev("a", 2, 1)]
    merged = merge_events(stored, memory)
    assert [e.key for e in merged] == [(0, 0), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]
    assert merge_events([], []) == []
    # The first source wins when both hold an event.
    first = JobEvent("a", 1, 0, "started", {"from": "store"})
    assert merge_events([first], [ev("a", 1, 0, "started")])[0].data == {"from": "store"}


def test_event_ids_round_trip_and_bad_ids_mean_from_the_start() -> None:
    e = ev("a", 3, 7)
    assert e.id == "3.7" and parse_event_id(e.id) == e.key == (3, 7)
    for bad in (None, "", "x", "3", "a.b", "3.x"):
        assert parse_event_id(bad) == (-1, -1)
    assert ev("a", 1, 0, "succeeded").terminal and not ev("a", 1, 0, "step").terminal
