"""What the HTTP layer needs from the rest of steadygen, in one place.

The routes see a queue (the ``JobQueue`` contract: SQLite or Redis), the served model's
name and default size, the validation limits, where images live, the metrics recorder,
the telemetry source when this process has one, and the process's readiness.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steadygen.config import Limits
from steadygen.request import GenerationRequest, validate_request
from steadygen.server.metrics import Metrics

if TYPE_CHECKING:
    from steadygen.queue.contract import JobQueue


@dataclass(frozen=True)
class Readiness:
    """Whether this process can serve generations now, and if not, why."""

    loaded: bool = False  # the model is loaded (API-only mode: Redis answers)
    warm: bool = False  # warm-up has run
    accepting: bool = True  # False once shutting down
    error: str | None = None  # why it cannot start, when it cannot

    @property
    def ready(self) -> bool:
        return self.loaded and self.warm and self.accepting

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Service:
    queue: JobQueue
    model_name: str
    default_side: int
    limits: Limits
    images_dir: Path
    metrics: Metrics
    device: str = "cpu"
    sampler: Any = None  # a telemetry Sampler, or the workers' telemetry in Redis mode
    state: Callable[[], Readiness] = field(default=lambda: Readiness(True, True))

    def validate(self, raw: dict[str, Any]) -> GenerationRequest:
        """The shared rules, with this server's model and its default size filled in."""
        raw = {k: v for k, v in raw.items() if v is not None}
        raw.setdefault("width", self.default_side)
        raw.setdefault("height", self.default_side)
        return validate_request(
            raw, limits=self.limits, models=[self.model_name], default_model=self.model_name
        )

    def ready(self) -> bool:
        return self.state().ready
