"""GenerationRequest and the validation every entry point shares.

The CLI, the OpenAI, AUTOMATIC1111 and native HTTP APIs, the web page and the benchmark all
turn their input into a plain mapping and call ``validate_request``. Every broken rule is
reported, each naming its field, the allowed range and the value received; nothing is
clamped silently.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from steadygen.config import Limits
from steadygen.editing import LoraSpec, check_edits, steps_run
from steadygen.errors import FieldError, InvalidRequest

# Z-Image-Turbo's settings on diffusers 0.39 and later (8 forwards, no CFG).
DEFAULT_STEPS = 8
DEFAULT_GUIDANCE = 0.0
DEFAULT_SIDE = 1024
SEED_MAX = 2**32 - 1
SIDE_MULTIPLE = 16


@dataclass(frozen=True)
class GenerationRequest:
    """Validated parameters of one generation. ``seed`` is always set (random if not given)."""

    prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    n: int
    model: str
    negative_prompt: str = ""
    seed_was_random: bool = False
    # editing (steadygen.editing): inputs are references to stored PNGs (steadygen.inputs)
    mode: str = "txt2img"  # txt2img | img2img | inpaint
    init_image: str | None = None
    mask: str | None = None  # white = redo
    control_image: str | None = None
    strength: float = 1.0  # img2img / inpaint: how much of the schedule runs
    loras: tuple[LoraSpec, ...] = ()
    control_scale: float = 0.75
    mask_blur: int = 0  # pixels
    mask_invert: bool = False
    inpaint_fill: str = "original"  # original | fill (the masked region's start)
    inpaint_full_res: bool = False  # redo only the masked region's box, at full size
    inpaint_full_res_padding: int = 32
    resize_mode: str = "resize"  # resize | crop | fill: how the input meets width x height

    @property
    def steps_run(self) -> int:
        """Denoising steps actually run: all of them for txt2img, fewer at strength < 1."""
        return self.steps if self.mode == "txt2img" else steps_run(self.steps, self.strength)

    @property
    def variant(self) -> str:
        """The part of a baseline's shape key that editing adds: mode, steps run, ControlNet
        and adapters (names, not weights: a weight does not change the work). Empty for
        plain text-to-image, so existing keys stay as they were."""
        parts = [] if self.mode == "txt2img" else [f"{self.mode}:{self.steps_run}"]
        if self.control_image is not None:
            parts.append("control")
        if self.loras:
            parts.append("lora=" + "+".join(sorted(spec.name for spec in self.loras)))
        return ",".join(parts)
    # send a live preview of the latents with each step event; changes neither the image
    # nor the shape key
    preview: bool = False

    @property
    def uses_cfg(self) -> bool:
        """Guidance above 0 turns on classifier-free guidance: two forwards per step."""
        return self.guidance > 0

    @property
    def image_seeds(self) -> list[int]:
        """The seed of each image: ``seed``, ``seed + 1``, ... wrapping past SEED_MAX (as
        AUTOMATIC1111 numbers a batch). The one place this rule lives."""
        return [(self.seed + k) % (SEED_MAX + 1) for k in range(self.n)]

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["loras"] = list(out["loras"])  # as JSON has it: a list of {name, weight}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationRequest:
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if "loras" in fields:
            fields["loras"] = tuple(LoraSpec.parse(item) for item in fields["loras"] or ())
        return cls(**fields)


def parse_size(text: Any, field: str = "size") -> tuple[int, int]:
    """'1024x768' -> (1024, 768), or an InvalidRequest naming the field."""
    if isinstance(text, str):
        parts = text.lower().replace("×", "x").split("x")
        if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
            return int(parts[0]), int(parts[1])
    raise InvalidRequest(
        [FieldError(field, f"must look like WIDTHxHEIGHT, for example 1024x1024 (got {text!r})")]
    )


class _Checker:
    """Collects every broken rule instead of stopping at the first."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def fail(self, field: str, message: str) -> None:
        self.errors.append(FieldError(field, message))

    def integer(
        self, field: str, value: Any, lo: int, hi: int, rule: str | None = None
    ) -> int | None:
        rule = rule or f"a whole number from {lo} to {hi}"
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            self.fail(field, f"must be {rule} (got {value!r})")
            return None
        try:
            number = float(value) if not isinstance(value, int) else value
        except ValueError:
            self.fail(field, f"must be {rule} (got {value!r})")
            return None
        if isinstance(number, float) and (not math.isfinite(number) or number != int(number)):
            self.fail(field, f"must be {rule} (got {value!r})")
            return None
        whole = int(number)
        if not lo <= whole <= hi:
            self.fail(field, f"must be {rule} (got {whole})")
            return None
        return whole

    def number(self, field: str, value: Any, lo: float, hi: float) -> float | None:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            self.fail(field, f"must be a number from {lo:g} to {hi:g} (got {value!r})")
            return None
        try:
            number = float(value)
        except ValueError:
            self.fail(field, f"must be a number from {lo:g} to {hi:g} (got {value!r})")
            return None
        if not math.isfinite(number):
            self.fail(field, f"must be a finite number from {lo:g} to {hi:g} (got {value!r})")
            return None
        if not lo <= number <= hi:
            self.fail(field, f"must be from {lo:g} to {hi:g} (got {number:g})")
            return None
        return number

    def text(self, field: str, value: Any, max_chars: int, required: bool) -> str | None:
        if value is None:
            value = ""
        if not isinstance(value, str):
            self.fail(field, f"must be text (got {type(value).__name__})")
            return None
        if "\x00" in value:
            self.fail(field, "must not contain NUL characters")
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate, e.g. JSON "\ud800"
            self.fail(field, f"must be valid Unicode text (a lone surrogate at {exc.start})")
            return None
        if required and not value.strip():
            self.fail(field, f"must not be empty (1 to {max_chars} characters)")
            return None
        if len(value) > max_chars:
            self.fail(field, f"must be at most {max_chars} characters (got {len(value)})")
            return None
        return value


def validate_request(
    raw: Mapping[str, Any],
    *,
    limits: Limits,
    models: Iterable[str],
    default_model: str,
) -> GenerationRequest:
    """Check ``raw`` against the shared rules and return a GenerationRequest.

    Keys: prompt, negative_prompt, width, height, steps, guidance, seed, n, model, preview,
    and the edit fields (steadygen.editing: mode, init_image, mask, control_image, strength,
    loras, control_scale, mask_blur, mask_invert, inpaint_fill, inpaint_full_res,
    resize_mode). Missing optional keys take Z-Image-Turbo's defaults. Raises InvalidRequest
    with every broken rule.
    """
    c = _Checker()
    known = list(models)
    prompt = c.text("prompt", raw.get("prompt"), limits.max_prompt_chars, required=True)
    negative = c.text(
        "negative_prompt", raw.get("negative_prompt"), limits.max_prompt_chars, required=False
    )
    side_rule = (
        f"a multiple of {SIDE_MULTIPLE} from {limits.min_side} to {limits.max_side}"
    )
    sides: dict[str, int | None] = {}
    for name in ("width", "height"):
        value = raw.get(name, DEFAULT_SIDE)
        side = c.integer(name, value, -(2**63), 2**63, rule=f"a whole number, {side_rule}")
        if side is not None and (
            side % SIDE_MULTIPLE or not limits.min_side <= side <= limits.max_side
        ):
            hint = ""
            if side % SIDE_MULTIPLE and limits.min_side <= side <= limits.max_side:
                lower = side - side % SIDE_MULTIPLE
                hint = f"; try {lower} or {lower + SIDE_MULTIPLE}"
            c.fail(name, f"must be {side_rule} (got {side}){hint}")
            side = None
        sides[name] = side
    width, height = sides["width"], sides["height"]
    if width and height and width * height > limits.max_pixels:
        c.fail(
            "size",
            f"width x height must be at most {limits.max_pixels} pixels "
            f"(got {width}x{height} = {width * height})",
        )
    steps = c.integer("steps", raw.get("steps", DEFAULT_STEPS), 1, limits.max_steps)
    guidance = c.number(
        "guidance", raw.get("guidance", DEFAULT_GUIDANCE), 0.0, limits.max_guidance
    )
    n = c.integer("n", raw.get("n", 1), 1, limits.max_n)
    raw_seed = raw.get("seed")
    seed: int | None
    if raw_seed is None:
        seed, random_seed = secrets.randbelow(SEED_MAX + 1), True
    else:
        seed, random_seed = c.integer("seed", raw_seed, 0, SEED_MAX), False
    preview = raw.get("preview", False)
    if not isinstance(preview, bool):
        c.fail("preview", f"must be true or false (got {preview!r})")
    model = raw.get("model") or default_model
    if not isinstance(model, str) or model not in known:
        c.fail("model", f"must be one of {', '.join(known)} (got {model!r})")
    edits = check_edits(c, raw, limits, steps)
    if c.errors:
        raise InvalidRequest(c.errors)
    assert prompt is not None and width and height and steps and n is not None
    assert guidance is not None and seed is not None and negative is not None
    return GenerationRequest(
        prompt=prompt,
        negative_prompt=negative,
        width=width,
        height=height,
        steps=steps,
        guidance=guidance,
        seed=seed,
        n=n,
        model=str(model),
        seed_was_random=random_seed,
        preview=preview is True,
        **edits,
    )
