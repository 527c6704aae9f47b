"""What the HTTP layer needs from the rest of steadygen, in one place.

The routes see a queue (local or Redis: the same methods), the served model's name and
default size, the validation limits, where images live, the metrics recorder, and the
telemetry sampler when this process has one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steadygen.config import Limits
from steadygen.request import GenerationRequest, validate_request
from steadygen.server.metrics import Metrics


@dataclass
class Service:
    queue: Any  # LocalQueue or RedisQueue
    model_name: str
    default_side: int
    limits: Limits
    images_dir: Path
    metrics: Metrics
    device: str = "cpu"
    sampler: Any = None
    state: Callable[[], dict[str, Any]] = field(default=lambda: {"loaded": True, "warm": True})

    def validate(self, raw: dict[str, Any]) -> GenerationRequest:
        """The shared rules, with this server's model and its default size filled in."""
        raw = {k: v for k, v in raw.items() if v is not None}
        raw.setdefault("width", self.default_side)
        raw.setdefault("height", self.default_side)
        return validate_request(
            raw, limits=self.limits, models=[self.model_name], default_model=self.model_name
        )

    def ready(self) -> bool:
        s = self.state()
        return bool(s.get("loaded") and s.get("warm") and s.get("accepting", True))
