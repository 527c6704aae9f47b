"""The exceptions steadygen raises, turned into clear messages at the edge (CLI, HTTP).

    SteadygenError
    ├── InvalidRequest          a request broke a validation rule; carries FieldError list
    ├── ConfigError             a setting is wrong; says which and how to fix it
    ├── ModelError
    │   ├── UnknownModel        a model name that is not in the registry
    │   └── ModelUnavailable    registered, but cannot run here (no GPU, no weights)
    ├── GenerationError         one generation failed; the engine stays usable
    │   ├── Cancelled           the caller asked to stop between steps
    │   └── OutOfMemory         the device ran out of memory; memory was returned
    ├── QueueError
    │   ├── QueueFull           the bounded queue is at its limit (HTTP 429)
    │   ├── JobNotFound         no job with that id (HTTP 404)
    │   └── QueueUnavailable    the queue backend (Redis) cannot be reached
    └── StorageError            the data directory or database cannot be written
        └── StorageBusy         another process holds the database's lock; retry soon
"""

from __future__ import annotations

from dataclasses import dataclass


class SteadygenError(Exception):
    """Base of every error steadygen raises on purpose."""


@dataclass(frozen=True)
class FieldError:
    """One broken rule: which field, and a sentence with the rule, the value and the fix."""

    field: str
    message: str


class InvalidRequest(SteadygenError):
    def __init__(self, errors: list[FieldError]):
        self.errors = list(errors)
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in self.errors))

    @property
    def first(self) -> FieldError:
        return self.errors[0]


class ConfigError(SteadygenError):
    pass


class ModelError(SteadygenError):
    pass


class UnknownModel(ModelError):
    pass


class ModelUnavailable(ModelError):
    pass


class GenerationError(SteadygenError):
    pass


class Cancelled(GenerationError):
    def __init__(self, at_step: int = 0):
        self.at_step = at_step
        super().__init__(f"cancelled at step {at_step}")


class OutOfMemory(GenerationError):
    pass


class QueueError(SteadygenError):
    pass


class QueueFull(QueueError):
    def __init__(self, limit: int, retry_after_s: float):
        self.limit = limit
        self.retry_after_s = retry_after_s
        super().__init__(
            f"the queue is full ({limit} jobs waiting); retry in about {retry_after_s:.0f} s"
        )


class JobNotFound(QueueError):
    def __init__(self, job_id: str):
        self.job_id = job_id
        super().__init__(f"no job with id {job_id!r}")


class QueueUnavailable(QueueError):
    pass


class StorageError(SteadygenError):
    pass


class StorageBusy(StorageError):
    pass
