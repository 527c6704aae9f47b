"""The durable job store: SQLite in WAL mode in the data directory.

A job is committed with synchronous=FULL (on disk) before the client hears 202, so an
accepted job survives a crash or a power loss; so is a cancel. The other writes (claim,
events, results) use synchronous=NORMAL: in WAL mode they survive the process crashing, and
the next FULL commit puts them on disk too. At worst a power loss makes a finished job run
again; it saves three fsyncs per job on the request path. Lifecycle events are stored too,
so a client that reconnects with Last-Event-ID after a restart still sees how its job ended.
One connection, guarded by a lock: SQLite serialises writers anyway and our write rate is a
few per job.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from steadygen.errors import JobNotFound, StorageBusy, StorageError
from steadygen.queue.job import Job, JobEvent, JobState
from steadygen.request import GenerationRequest

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    request TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    result TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, priority DESC, seq);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    n INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    t REAL NOT NULL,
    PRIMARY KEY (job_id, attempt, n)
);
"""

_COLUMNS = (
    "seq, id, state, priority, request, created_at, started_at, finished_at, attempts, "
    "error, cancel_requested, worker, result"
)


class JobStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, timeout=10.0, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open the job database {self.path}: {exc}") from exc
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self, on_disk: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction; SQLite errors become StorageError, the store stays usable.
        ``on_disk``: the commit waits for the disk (synchronous=FULL)."""
        with self._lock:
            try:
                if on_disk:
                    self._db.execute("PRAGMA synchronous=FULL")
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        yield self._db
                    except BaseException:
                        self._db.execute("ROLLBACK")
                        raise
                    self._db.execute("COMMIT")
                finally:
                    if on_disk:
                        self._db.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise _storage_error("write", exc) from exc

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise _storage_error("read", exc) from exc

    # -- jobs ----------------------------------------------------------------------------

    def insert(self, job: Job, event: JobEvent) -> Job:
        """Store a new job and its 'queued' event in one durable transaction."""
        with self._tx(on_disk=True) as db:
            cur = db.execute(
                "INSERT INTO jobs (id, state, priority, request, created_at) VALUES (?,?,?,?,?)",
                (
                    job.id,
                    job.state.value,
                    job.priority,
                    json.dumps(job.request.to_dict()),
                    job.created_at,
                ),
            )
            job.seq = int(cur.lastrowid or 0)
            self._insert_event(db, event)
        return job

    def claim_next(self, worker: str, max_attempts: int | None = None) -> Job | None:
        """Mark the next queued job (priority, then arrival) running for ``worker`` and
        store its 'started' event (attempt k's first event, (k, 0), unless a hand-back made
        it run attempt k again) in the same transaction. A job that already started
        ``max_attempts`` times without finishing (its process died each time) ends failed
        as a dead letter instead."""
        while True:
            with self._tx() as db:
                row = db.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE state = 'queued' "
                    "ORDER BY priority DESC, seq LIMIT 1"
                ).fetchone()
                if row is None:
                    return None
                job = _job_from_row(row)
                now = time.time()
                if max_attempts is not None and job.attempts >= max_attempts:
                    error = (f"dead letter: started {job.attempts} times without finishing "
                             "(the server stopped or crashed each time)")
                    db.execute(
                        "UPDATE jobs SET state='failed', finished_at=?, error=?, result=? "
                        "WHERE id=?", (now, error, json.dumps({"dead_letter": True}), job.id))
                    n = self._next_n(db, job.id, job.attempts)
                    self._insert_event(db, JobEvent(job.id, job.attempts, n, "failed",
                                                    {"error": error, "dead_letter": True}))
                    continue
                db.execute(
                    "UPDATE jobs SET state='running', started_at=?, attempts=attempts+1, "
                    "worker=? WHERE id=?",
                    (now, worker, job.id),
                )
                job.state, job.started_at, job.attempts, job.worker = (
                    JobState.RUNNING, now, job.attempts + 1, worker,
                )
                # (attempt, 0), or the next number when a handed-back job runs its attempt
                # again: event ids stay unique.
                n = self._next_n(db, job.id, job.attempts)
                self._insert_event(db, JobEvent(job.id, job.attempts, n, "started",
                                                {"attempt": job.attempts, "worker": worker}))
            return job

    def started_event(self, job_id: str) -> JobEvent | None:
        """The job's latest 'started' event (its id continues the numbering)."""
        rows = self._read("SELECT attempt, n, data FROM events WHERE job_id=? AND "
                          "type='started' ORDER BY attempt DESC, n DESC LIMIT 1", (job_id,))
        if not rows:
            return None
        attempt, n, data = rows[0]
        return JobEvent(job_id, int(attempt), int(n), "started", json.loads(data))

    def finish(
        self,
        job_id: str,
        state: JobState,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        event: JobEvent | None = None,
        attempt: int | None = None,
    ) -> bool:
        """Write a job's end. The first terminal write wins (False: it had ended already);
        with ``attempt``, only while that attempt is the job's current one."""
        fence = " AND attempts=?" if attempt is not None else ""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET state=?, finished_at=?, result=?, error=? "
                f"WHERE id=? AND state NOT IN ('succeeded', 'failed', 'cancelled'){fence}",
                (
                    state.value,
                    time.time(),
                    json.dumps(result) if result is not None else None,
                    error,
                    job_id,
                    *((attempt,) if attempt is not None else ()),
                ),
            )
            if cur.rowcount and event is not None:
                self._insert_event(db, event)
            return bool(cur.rowcount)

    def requeue(self, job_id: str, attempt: int, event: JobEvent, *,
                handing_back: bool = False) -> bool:
        """Put a running job back in the queue (a failed attempt, or a stopping worker
        handing it back, which does not count as an attempt)."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET state='queued', started_at=NULL, worker=NULL, "
                "attempts=attempts-? WHERE id=? AND state='running' AND attempts=?",
                (int(handing_back), job_id, attempt),
            )
            if cur.rowcount:
                self._insert_event(db, event)
            return bool(cur.rowcount)

    def cancel_queued(self, job_id: str, event: JobEvent) -> bool:
        """Cancel a job that is still queued; False if it already left the queue."""
        with self._tx(on_disk=True) as db:
            cur = db.execute(
                "UPDATE jobs SET state='cancelled', finished_at=?, cancel_requested=1 "
                "WHERE id=? AND state='queued'",
                (time.time(), job_id),
            )
            if cur.rowcount:
                self._insert_event(db, event)
            return bool(cur.rowcount)

    def request_cancel(self, job_id: str) -> None:
        with self._tx(on_disk=True) as db:
            db.execute("UPDATE jobs SET cancel_requested=1 WHERE id=?", (job_id,))

    def requeue_interrupted(self) -> list[str]:
        """After a crash or restart: jobs left 'running' go back to the queue, from the start."""
        with self._tx() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE state='running'")]
            db.execute(
                "UPDATE jobs SET state='queued', started_at=NULL, worker=NULL "
                "WHERE state='running'"
            )
        return ids

    def get(self, job_id: str) -> Job:
        rows = self._read(f"SELECT {_COLUMNS} FROM jobs WHERE id=?", (job_id,))
        if not rows:
            raise JobNotFound(job_id)
        return _job_from_row(rows[0])

    def list(self, limit: int = 50, state: JobState | None = None) -> list[Job]:
        if state is None:
            rows = self._read(f"SELECT {_COLUMNS} FROM jobs ORDER BY seq DESC LIMIT ?", (limit,))
        else:
            rows = self._read(
                f"SELECT {_COLUMNS} FROM jobs WHERE state=? ORDER BY seq DESC LIMIT ?",
                (state.value, limit),
            )
        return [_job_from_row(r) for r in rows]

    def queued(self) -> list[Job]:
        """Queued jobs in the order they will run."""
        rows = self._read(
            f"SELECT {_COLUMNS} FROM jobs WHERE state='queued' ORDER BY priority DESC, seq"
        )
        return [_job_from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self._read("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        out = {s.value: 0 for s in JobState}
        out.update({state: int(n) for state, n in rows})
        return out

    def recent_succeeded(self, limit: int) -> list[Job]:
        rows = self._read(
            f"SELECT {_COLUMNS} FROM jobs WHERE state='succeeded' ORDER BY seq DESC LIMIT ?",
            (limit,),
        )
        return [_job_from_row(r) for r in reversed(rows)]

    # -- events --------------------------------------------------------------------------

    def add_event(self, event: JobEvent) -> None:
        with self._tx() as db:
            self._insert_event(db, event)

    @staticmethod
    def _next_n(db: sqlite3.Connection, job_id: str, attempt: int) -> int:
        row = db.execute("SELECT MAX(n) FROM events WHERE job_id=? AND attempt=?",
                         (job_id, attempt)).fetchone()
        return 0 if row is None or row[0] is None else int(row[0]) + 1

    @staticmethod
    def _insert_event(db: sqlite3.Connection, event: JobEvent) -> None:
        db.execute(
            "INSERT OR IGNORE INTO events (job_id, attempt, n, type, data, t) "
            "VALUES (?,?,?,?,?,?)",
            (event.job_id, event.attempt, event.n, event.type, json.dumps(event.data), time.time()),
        )

    def events(self, job_id: str) -> list[JobEvent]:
        rows = self._read(
            "SELECT attempt, n, type, data FROM events WHERE job_id=? ORDER BY attempt, n",
            (job_id,),
        )
        return [JobEvent(job_id, a, n, t, json.loads(d)) for a, n, t, d in rows]

    def check(self) -> str:
        """SQLite's own integrity check ('ok' when consistent)."""
        return str(self._read("PRAGMA integrity_check")[0][0])


def _storage_error(what: str, exc: sqlite3.Error) -> StorageError:
    """SQLite's busy/locked (another process held the write lock past busy_timeout) is
    StorageBusy, worth a retry; anything else is a StorageError."""
    code = getattr(exc, "sqlite_errorcode", None)
    busy_codes = {getattr(sqlite3, n, -1) for n in ("SQLITE_BUSY", "SQLITE_LOCKED")}
    busy = (code is not None and code & 0xFF in busy_codes) or (
        code is None and ("database is locked" in str(exc) or "database is busy" in str(exc)))
    kind = StorageBusy if busy else StorageError
    return kind(f"job database {what} failed: {exc}")


def _job_from_row(row: tuple[Any, ...]) -> Job:
    (seq, id_, state, priority, request, created, started, finished, attempts, error, cancel,
     worker, result) = row
    return Job(
        id=id_,
        request=GenerationRequest.from_dict(json.loads(request)),
        state=JobState(state),
        priority=priority,
        created_at=created,
        started_at=started,
        finished_at=finished,
        attempts=attempts,
        error=error,
        cancel_requested=bool(cancel),
        worker=worker,
        result=json.loads(result) if result else None,
        seq=seq,
    )
