"""What steadygen is called in AUTOMATIC1111's vocabulary: the sampler, the scheduler, the
checkpoint title and hash, and the checks of the names clients send back.

Z-Image-Turbo has one sampler (flow-matching Euler, diffusers' FlowMatchEulerDiscreteScheduler)
and one noise schedule (its shifted sigmas). A1111 calls the plain Euler sampler "Euler"
(alias ``k_euler``) and the schedule a sampler brings along "automatic"; those names, and
steadygen's own, are accepted. Any other name would silently give a different method than
asked, so it is refused with the names that work.
"""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import HTTPException

from steadygen.engine.models import builtin_models
from steadygen.errors import FieldError, InvalidRequest

SAMPLER = "Euler"
SAMPLER_ALIASES = ["k_euler", "FlowMatch Euler", "flow_match_euler"]
SCHEDULER = "automatic"
SCHEDULER_LABEL = "Automatic"


def samplers() -> list[dict[str, Any]]:
    """GET /sdapi/v1/samplers: A1111's SamplerItem (name, aliases, options)."""
    return [{"name": SAMPLER, "aliases": list(SAMPLER_ALIASES),
             "options": {"scheduler": "flow-match, shifted sigmas"}}]


def schedulers() -> list[dict[str, Any]]:
    """GET /sdapi/v1/schedulers: A1111's SchedulerItem."""
    return [{"name": SCHEDULER, "label": SCHEDULER_LABEL, "aliases": None,
             "default_rho": -1.0, "need_inner_model": False}]


def check_sampler(field: str, value: str | None) -> None:
    """A sampler name from a client: empty, or one of the flow-matching Euler's names."""
    if not value:
        return
    names = [SAMPLER, *SAMPLER_ALIASES]
    if value.strip().lower() not in {n.lower() for n in names}:
        raise InvalidRequest([FieldError(
            field, f"must be one of {', '.join(names)}: Z-Image runs the flow-matching Euler "
                   f"sampler only (got {value!r})")])


def check_scheduler(field: str, value: str | None) -> None:
    if not value:
        return
    if value.strip().lower() not in {SCHEDULER, SCHEDULER_LABEL.lower()}:
        raise InvalidRequest([FieldError(
            field, f"must be {SCHEDULER!r}: Z-Image's sampler brings its own shifted "
                   f"flow-matching schedule (got {value!r})")])


def model_hash(model: str) -> str:
    """A stable identifier in the place of A1111's checkpoint sha256. steadygen's models are
    diffusers folders (or built here), not one file, so this is the sha256 of the model's
    registered name, not of weights; clients only compare it with itself."""
    return hashlib.sha256(f"steadygen:{model}".encode()).hexdigest()


def model_title(model: str) -> str:
    """A1111's checkpoint title: 'name [first 10 hex of the hash]'."""
    return f"{model} [{model_hash(model)[:10]}]"


def sd_model(model: str) -> dict[str, Any]:
    """One entry of GET /sdapi/v1/sd-models (A1111's SDModelItem)."""
    return {"title": model_title(model), "model_name": model, "hash": model_hash(model)[:10],
            "sha256": model_hash(model), "filename": model, "config": None}


def check_checkpoint(field: str, value: Any, served: str) -> None:
    """A checkpoint a client asks for: the served one (by title, name or short hash) is
    fine; another model steadygen knows is a 409 (one model per process); anything else
    is a 400 naming the served model."""
    if value is None or value == "":
        return
    text = str(value).strip()
    if text in {served, model_title(served), model_hash(served)[:10], model_hash(served)}:
        return
    name = text.split(" [", 1)[0]
    if name == served:  # the served name with some other hash text: still the same model
        return
    if name in builtin_models():
        raise HTTPException(409, f"{field}: this server runs {served} and cannot switch "
                                 f"models yet; start one with --model {name} for {name!r}")
    raise InvalidRequest([FieldError(
        field, f"must be the served model, {model_title(served)!r} (got {text!r})")])
