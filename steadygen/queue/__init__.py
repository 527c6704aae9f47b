"""Jobs: their contract, storage and transport, and the worker that runs them.

    contract.py   the JobQueue protocol both backends implement, and its shared types
    job.py        Job, JobState, JobEvent
    base.py       positions, ETAs and waiting, computed the same way for both backends
    eta.py        the one service-time model and ETA formula
    events.py     the in-process event hub that SSE streams read
    sqlite/       the single-process backend (store.py: the durable SQLite job store)
    redis/        the Redis Streams backend for many workers (connection, scripts, sides)
    runner.py     one job's run: telemetry window, engine, attribution, result record
    worker.py     the job worker: claim -> run -> classify -> finish, for both backends
"""
