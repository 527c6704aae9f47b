"""The edit fields of a request: mode, input references, strength, LoRA adapters, ControlNet
and AUTOMATIC1111's inpaint options; the ``<lora:name:weight>`` prompt syntax; the LoRA files
a server offers. ``validate_request`` (request.py) calls ``check_edits`` with its checker, so
every broken rule is reported with the others, naming the field, the rule and the value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from steadygen.config import Limits
from steadygen.errors import FieldError, InvalidRequest

MODES = ("txt2img", "img2img", "inpaint")
INPAINT_FILLS = ("original", "fill")  # A1111 inpainting_fill 1 and 0
RESIZE_MODES = ("resize", "crop", "fill")  # A1111 resize_mode 0, 1, 2
LORA_SUFFIX = ".safetensors"
LORA_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,127}$")
LORA_TAG_RE = re.compile(r"<lora:([^:>]*)(?::([^:>]*))?(?::[^>]*)?>", re.IGNORECASE)
DEFAULT_STRENGTH = {"txt2img": 1.0, "img2img": 0.75, "inpaint": 1.0}
DEFAULT_CONTROL_SCALE = 0.75
MAX_MASK_BLUR = 64
MAX_PADDING = 256


@dataclass(frozen=True)
class LoraSpec:
    """One adapter of a request: the file's stem in ``lora_dir`` and its weight."""

    name: str
    weight: float = 1.0

    @classmethod
    def parse(cls, item: Any) -> LoraSpec:
        if isinstance(item, LoraSpec):
            return item
        if isinstance(item, Mapping):
            return cls(str(item["name"]), float(item.get("weight", 1.0)))
        name, weight = item  # a [name, weight] pair from JSON
        return cls(str(name), float(weight))


class Checker(Protocol):  # request._Checker
    def fail(self, field: str, message: str) -> None: ...
    def number(self, field: str, value: Any, lo: float, hi: float) -> float | None: ...
    def integer(self, field: str, value: Any, lo: int, hi: int,
                rule: str | None = None) -> int | None: ...


def steps_run(steps: int, strength: float) -> int:
    """Denoising steps a diffusers img2img or inpaint call actually runs at ``strength``
    (its ``get_timesteps``): 8 steps at 0.3 run 3."""
    init = min(steps * strength, steps)
    return steps - int(max(steps - init, 0))


def split_lora_tags(prompt: str) -> tuple[str, list[dict[str, Any]]]:
    """AUTOMATIC1111's ``<lora:name:weight>`` (weight optional, 1.0) out of a prompt: the
    prompt without the tags, and the adapters as ``{"name", "weight"}`` (weight as written,
    checked later). A repeated name keeps its last weight."""
    found: dict[str, Any] = {}
    for match in LORA_TAG_RE.finditer(prompt):
        name, weight = match.group(1).strip(), match.group(2)
        found[name] = 1.0 if weight is None or not weight.strip() else weight.strip()
    clean = " ".join(LORA_TAG_RE.sub(" ", prompt).split())
    return clean, [{"name": k, "weight": w} for k, w in found.items()]


def lora_fields(prompt: str | None) -> dict[str, Any]:
    """Raw request fields from a prompt with LoRA tags: ``{"prompt", "loras"}`` (no loras
    key when there are no tags, so nothing changes for plain prompts)."""
    if not prompt or "<lora:" not in prompt.lower():
        return {}
    clean, loras = split_lora_tags(prompt)
    return {"prompt": clean, "loras": loras}


def available_loras(lora_dir: Path | str | None) -> list[str]:
    """The adapter names a server offers: ``*.safetensors`` stems in ``lora_dir``, sorted."""
    if lora_dir is None or not Path(lora_dir).is_dir():
        return []
    return sorted(
        p.name[: -len(LORA_SUFFIX)] for p in Path(lora_dir).iterdir()
        if p.name.endswith(LORA_SUFFIX) and p.is_file() and LORA_NAME_RE.match(p.stem)
    )


def lora_path(lora_dir: Path, name: str) -> Path:
    """The file of a validated adapter name (never outside ``lora_dir``)."""
    if not LORA_NAME_RE.match(name) or ".." in name:
        raise InvalidRequest([FieldError("loras", f"{name!r} is not a valid LoRA name")])
    return Path(lora_dir) / f"{name}{LORA_SUFFIX}"


def check_edits(c: Checker, raw: Mapping[str, Any], limits: Limits, steps: int | None) -> dict:
    """Check the edit fields of ``raw``; returns the GenerationRequest keyword arguments."""
    from steadygen import inputs

    out: dict[str, Any] = {}
    refs: dict[str, inputs.StoredInput] = {}
    for name in ("init_image", "mask", "control_image"):
        value = raw.get(name)
        if value is None:
            continue
        try:
            refs[name] = inputs.check_ref(value, name, limits.inputs_dir)
            out[name] = value
        except InvalidRequest as exc:
            for e in exc.errors:
                c.fail(e.field, e.message)
    mode = raw.get("mode") or ("inpaint" if raw.get("mask") is not None else
                               "img2img" if raw.get("init_image") is not None else "txt2img")
    if mode not in MODES:
        c.fail("mode", f"must be one of {', '.join(MODES)} (got {mode!r})")
        return out
    out["mode"] = mode
    _check_mode_inputs(c, raw, mode)
    if "mask" in refs and "init_image" in refs:
        img, mask = refs["init_image"], refs["mask"]
        if (img.width, img.height) != (mask.width, mask.height):
            c.fail("mask", f"must be the same size as init_image, {img.width}x{img.height} "
                           f"(got {mask.width}x{mask.height})")
    strength = raw.get("strength", DEFAULT_STRENGTH[mode])
    value = c.number("strength", strength, 0.0, 1.0)
    if value is not None and mode != "txt2img" and value <= 0:
        c.fail("strength", "must be above 0 and at most 1 (0 would leave the image unchanged)")
    elif value is not None:
        out["strength"] = value if mode != "txt2img" else 1.0
    if value is not None and mode == "txt2img" and value != 1.0 and "strength" in raw:
        c.fail("strength", f"applies to img2img and inpaint only; leave it out (got {value:g})")
    out["loras"] = _check_loras(c, raw.get("loras"), limits)
    _check_control(c, raw, limits, mode, out)
    out.update(_check_inpaint_options(c, raw))
    return out


def _check_mode_inputs(c: Checker, raw: Mapping[str, Any], mode: str) -> None:
    has_image, has_mask = raw.get("init_image") is not None, raw.get("mask") is not None
    if mode in ("img2img", "inpaint") and not has_image:
        c.fail("init_image", f"is required for {mode}")
    if mode == "inpaint" and not has_mask:
        c.fail("mask", "is required for inpaint (white = redo)")
    if mode != "inpaint" and has_mask:
        c.fail("mask", f"applies to inpaint only (mode is {mode})")
    if mode == "txt2img" and has_image:
        c.fail("init_image", "applies to img2img and inpaint only (mode is txt2img)")


def _check_loras(c: Checker, value: Any, limits: Limits) -> tuple[LoraSpec, ...]:
    if value is None or value == []:
        return ()
    if not isinstance(value, (list, tuple)):
        c.fail("loras", f"must be a list of {{name, weight}} (got {type(value).__name__})")
        return ()
    if len(value) > limits.max_loras:
        c.fail("loras", f"must have at most {limits.max_loras} adapters (got {len(value)})")
        return ()
    known = set(available_loras(limits.lora_dir))
    specs: list[LoraSpec] = []
    for k, item in enumerate(value):
        field = f"loras[{k}]"
        name = item.get("name") if isinstance(item, Mapping) else None
        if not isinstance(name, str) or not LORA_NAME_RE.match(name) or ".." in name:
            c.fail(f"{field}.name", "must be a LoRA file name without folder or suffix "
                                    f"(letters, digits, . _ - and spaces; got {name!r})")
            continue
        if limits.lora_dir is None:
            c.fail(f"{field}.name", f"no lora_dir is configured on this server (got {name!r})")
            continue
        if name not in known:
            offered = ", ".join(sorted(known)) or "none"
            c.fail(f"{field}.name", f"is not a LoRA in lora_dir (offered: {offered}; "
                                    f"got {name!r})")
            continue
        weight = c.number(f"{field}.weight", item.get("weight", 1.0),
                          limits.min_lora_weight, limits.max_lora_weight)
        if weight is not None:
            specs.append(LoraSpec(name, weight))
    if len({s.name for s in specs}) != len(specs):
        c.fail("loras", "names a LoRA more than once")
    return tuple(specs)


def _check_control(
    c: Checker, raw: Mapping[str, Any], limits: Limits, mode: str, out: dict[str, Any]
) -> None:
    if raw.get("control_image") is None:
        if raw.get("control_scale") is not None:
            c.fail("control_scale", "applies only with a control_image")
        return
    if not limits.controlnet_enabled:
        c.fail("control_image", "needs a ControlNet, and none is configured on this server "
                                "(setting: controlnet)")
        return
    if mode == "img2img":
        c.fail("control_image", "works with txt2img and inpaint, not img2img")
    if mode == "inpaint" and out.get("strength", 1.0) != 1.0:
        c.fail("strength", "must be 1 with a control_image: ControlNet inpainting redoes the "
                           f"masked region from noise (got {out['strength']:g})")
    scale = c.number("control_scale", raw.get("control_scale", DEFAULT_CONTROL_SCALE), 0.0, 2.0)
    if scale is not None:
        out["control_scale"] = scale


def _check_inpaint_options(c: Checker, raw: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    blur = c.integer("mask_blur", raw.get("mask_blur", 0), 0, MAX_MASK_BLUR)
    padding = c.integer("inpaint_full_res_padding", raw.get("inpaint_full_res_padding", 32),
                        0, MAX_PADDING)
    for name, allowed in (("inpaint_fill", INPAINT_FILLS), ("resize_mode", RESIZE_MODES)):
        value = raw.get(name, allowed[0])
        if value not in allowed:
            c.fail(name, f"must be one of {', '.join(allowed)} (got {value!r})")
        else:
            out[name] = value
    for name in ("mask_invert", "inpaint_full_res"):
        value = raw.get(name, False)
        if not isinstance(value, bool):
            c.fail(name, f"must be true or false (got {value!r})")
        else:
            out[name] = value
    if blur is not None:
        out["mask_blur"] = blur
    if padding is not None:
        out["inpaint_full_res_padding"] = padding
    return out
