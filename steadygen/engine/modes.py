"""Editing modes on the loaded weights: image-to-image, inpainting and ControlNet.

diffusers' Z-Image pipelines for each mode are built from the text-to-image pipeline's
``components`` (the same module objects: no second copy of any weight) and cached per mode.
``prepare_inputs`` reads a request's stored images and brings them to the requested size
(AUTOMATIC1111's resize modes, mask invert, fill and "only masked" crop); ``finish_images``
puts the result back (the kept pixels stay exactly the input's, a blurred mask blends the
seam). ``VaeEncodeClock`` times the VAE encoder inside the pipeline call.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steadygen.editing import LoraSpec
from steadygen.engine.lora import AdapterCache
from steadygen.errors import GenerationError
from steadygen.inputs import load_input, write_input
from steadygen.request import GenerationRequest


@dataclass(frozen=True)
class EditConfig:
    """What the engine needs for editing, from the settings of the same names."""

    inputs_dir: Path | None = None  # <data_dir>/inputs
    lora_dir: Path | None = None
    controlnet: Path | None = None  # a local ZImageControlNetModel checkpoint directory
    lora_cache_size: int = 8
    warmup: bool = True  # warm-up runs img2img, inpaint (and ControlNet) too


@dataclass
class PreparedInputs:
    """A request's images at the requested size, ready for the pipeline."""

    image: Any = None  # PIL RGB, what the pipeline starts from (filled when asked)
    mask: Any = None  # PIL L, 255 = redo
    control: Any = None  # PIL RGB
    base: Any = None  # PIL RGB, the input at the output size: kept pixels come from here
    blend: Any = None  # PIL L, the (blurred) mask that joins result and base
    box: tuple[int, int, int, int] | None = None  # "only masked": the region redone


class EditState:
    """The adapters, the ControlNet and the per-mode pipelines of one engine."""

    def __init__(self, config: EditConfig, adapters: AdapterCache | None = None,
                 controlnet: Any = None):
        self.config = config
        self.adapters = adapters or AdapterCache(config.lora_dir, config.lora_cache_size)
        self._controlnet = controlnet
        self._pipes: dict[tuple[str, bool], Any] = {}

    def fork(self) -> EditState:
        """For an engine forked on the same weights: the same adapters and ControlNet, its
        own pipelines (each engine has its own scheduler)."""
        self.adapters.shared = True
        return EditState(self.config, self.adapters, self._controlnet)

    def exclusive(self) -> Any:
        """Adapters live in the transformer every fork shares: with a LoRA folder and more
        than one engine on the weights, generations take turns (a switch mid-run would
        change another job's image)."""
        if self.adapters.shared and self.config.lora_dir is not None:
            return self.adapters.run_lock
        return contextlib.nullcontext()

    @property
    def has_controlnet(self) -> bool:
        return self.config.controlnet is not None

    def controlnet(self, pipe: Any) -> tuple[Any, float]:
        """The ControlNet model, loaded on first use; (model, seconds spent loading)."""
        if self._controlnet is not None:
            return self._controlnet, 0.0
        if self.config.controlnet is None:
            raise GenerationError("a control image needs a ControlNet; none is configured")
        from diffusers import ZImageControlNetModel

        t0 = time.monotonic()
        try:
            model = ZImageControlNetModel.from_pretrained(
                str(self.config.controlnet), torch_dtype=pipe.transformer.dtype,
                local_files_only=True,
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise GenerationError(
                f"the ControlNet at {self.config.controlnet} could not be loaded: {exc}"
            ) from None
        self._controlnet = model.to(pipe.transformer.device).eval()
        return self._controlnet, time.monotonic() - t0

    def pipeline(self, base: Any, req: GenerationRequest, controlnet: Any = None) -> Any:
        """The pipeline for ``req``'s mode, sharing ``base``'s components."""
        control = req.control_image is not None
        if req.mode == "txt2img" and not control:
            return base
        key = (req.mode, control)
        if key not in self._pipes:
            import diffusers

            name = {
                ("img2img", False): "ZImageImg2ImgPipeline",
                ("inpaint", False): "ZImageInpaintPipeline",
                ("txt2img", True): "ZImageControlNetPipeline",
                ("inpaint", True): "ZImageControlNetInpaintPipeline",
            }[key]
            extra = {"controlnet": controlnet} if control else {}
            pipe = getattr(diffusers, name)(**base.components, **extra)
            pipe.set_progress_bar_config(disable=True)
            self._pipes[key] = pipe
        return self._pipes[key]


def call_kwargs(req: GenerationRequest, prepared: PreparedInputs) -> dict[str, Any]:
    """The mode's own arguments of the pipeline call."""
    out: dict[str, Any] = {}
    if req.mode in ("img2img", "inpaint"):
        out["image"] = prepared.image
    if req.mode == "inpaint":
        out["mask_image"] = prepared.mask
    if req.mode in ("img2img", "inpaint") and req.control_image is None:
        out["strength"] = req.strength
    if req.control_image is not None:
        out["control_image"] = prepared.control
        out["controlnet_conditioning_scale"] = req.control_scale
    return out


def _fit(image: Any, size: tuple[int, int], mode: str, resample: int) -> Any:
    """AUTOMATIC1111's resize modes: resize (stretch), crop (cover, centre crop), fill
    (fit inside, the rest filled with the stretched image)."""
    from PIL import ImageOps

    if image.size == size:
        return image
    if mode == "crop":
        return ImageOps.fit(image, size, method=resample)
    if mode == "fill":
        back = image.resize(size, resample)
        inner = ImageOps.contain(image, size, method=resample)
        back.paste(inner, ((size[0] - inner.width) // 2, (size[1] - inner.height) // 2))
        return back
    return image.resize(size, resample)


def _region(mask: Any, padding: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The masked region's box, padded and widened to the output's aspect ratio."""
    left, top, right, bottom = mask.getbbox() or (0, 0, *size)
    left, top = max(0, left - padding), max(0, top - padding)
    right, bottom = min(size[0], right + padding), min(size[1], bottom + padding)
    want = size[0] / size[1]
    width, height = right - left, bottom - top
    if width / height < want:
        width = min(size[0], round(height * want))
    else:
        height = min(size[1], round(width / want))
    cx, cy = (left + right) / 2, (top + bottom) / 2
    left = int(min(max(0, cx - width / 2), size[0] - width))
    top = int(min(max(0, cy - height / 2), size[1] - height))
    return left, top, left + width, top + height


def prepare_inputs(req: GenerationRequest, inputs_dir: Path | None) -> PreparedInputs:
    """Read and shape the request's inputs (the "image preparation" phase)."""
    from PIL import Image, ImageFilter, ImageOps, ImageStat

    prepared = PreparedInputs()
    refs = [req.init_image, req.mask, req.control_image]
    if not any(refs):
        return prepared
    if inputs_dir is None:
        raise GenerationError("this request has input images but the engine has no inputs_dir")
    size = (req.width, req.height)
    try:
        if req.control_image:
            control = load_input(inputs_dir, req.control_image, "RGB")
            prepared.control = _fit(control, size, req.resize_mode, Image.Resampling.LANCZOS)
        if not req.init_image:
            return prepared
        image = load_input(inputs_dir, req.init_image, "RGB")
        mask = load_input(inputs_dir, req.mask, "L") if req.mask else None
    except FileNotFoundError as exc:
        raise GenerationError(f"a stored input image is missing: {exc.filename}") from None
    base = _fit(image, size, req.resize_mode, Image.Resampling.LANCZOS)
    prepared.image = prepared.base = base
    if mask is None:
        return prepared
    mask = _fit(mask, size, req.resize_mode, Image.Resampling.NEAREST)
    if req.mask_invert:
        mask = ImageOps.invert(mask)
    if mask.getbbox() is None:
        raise GenerationError("the mask marks no region to redo (after mask_invert)")
    blend = mask.filter(ImageFilter.GaussianBlur(req.mask_blur)) if req.mask_blur else mask
    start = base
    if req.inpaint_fill == "fill":  # the redone region starts from the kept pixels' colour
        colour = tuple(int(v) for v in ImageStat.Stat(base, ImageOps.invert(mask)).mean)
        start = Image.composite(Image.new("RGB", size, colour), base, mask)
    if req.inpaint_full_res:
        box = _region(mask, req.inpaint_full_res_padding, size)
        prepared.box = box
        start = start.crop(box).resize(size, Image.Resampling.LANCZOS)
        mask = mask.crop(box).resize(size, Image.Resampling.NEAREST)
    prepared.image, prepared.mask, prepared.blend = start, mask, blend
    return prepared


def finish_images(prepared: PreparedInputs, images: list[Any]) -> list[Any]:
    """Inpaint: the kept pixels are the input's, the redone region the result's."""
    from PIL import Image

    if prepared.blend is None:
        return images
    out = []
    for image in images:
        if prepared.box is not None:
            left, top, right, bottom = prepared.box
            patch = image.resize((right - left, bottom - top), Image.Resampling.LANCZOS)
            image = prepared.base.copy()
            image.paste(patch, (left, top))
        out.append(Image.composite(image.convert("RGB"), prepared.base, prepared.blend))
    return out


class VaeEncodeClock:
    """Seconds inside the VAE encoder during one pipeline call (synchronised on CUDA)."""

    def __init__(self, vae: Any, sync: Any):
        self._encoder = vae.encoder
        self._sync = sync
        self._t0 = 0.0
        self.seconds = 0.0
        self._hooks: list[Any] = []

    def __enter__(self) -> VaeEncodeClock:
        def before(*_: Any) -> None:
            self._t0 = self._sync()

        def after(*_: Any) -> None:
            self.seconds += self._sync() - self._t0

        self._hooks = [self._encoder.register_forward_pre_hook(before),
                       self._encoder.register_forward_hook(after)]
        return self

    def __exit__(self, *_: Any) -> None:
        for hook in self._hooks:
            hook.remove()


def warmup_requests(
    model: str, sizes: list[tuple[int, int]], steps: int, control: bool, inputs_dir: Path
) -> list[GenerationRequest]:
    """One request per enabled editing mode and size, on a grey image with a centred mask
    written to ``inputs_dir``."""
    from PIL import Image

    reqs = []
    for width, height in sizes:
        grey = write_input(Image.new("RGB", (width, height), (128, 128, 128)), inputs_dir).ref
        mask_image = Image.new("L", (width, height), 0)
        mask_image.paste(255, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
        mask = write_input(mask_image, inputs_dir).ref
        common = {"prompt": "warm-up", "width": width, "height": height, "steps": steps,
                  "guidance": 0.0, "seed": 0, "n": 1, "model": model}
        reqs.append(GenerationRequest(**common, mode="img2img", init_image=grey, strength=1.0))
        reqs.append(GenerationRequest(**common, mode="inpaint", init_image=grey, mask=mask))
        if control:
            reqs.append(GenerationRequest(**common, control_image=grey))
            reqs.append(GenerationRequest(**common, mode="inpaint", init_image=grey,
                                          mask=mask, control_image=grey))
    return reqs


def warmup_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="steadygen-warmup-")


@dataclass
class EditFacts:
    """What an edit run adds to a result's metadata."""

    mode: str = "txt2img"
    steps_run: int = 0
    loras: list[dict[str, Any]] = field(default_factory=list)
    adapters_loaded: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, req: GenerationRequest, adapters: AdapterCache) -> EditFacts:
        specs: tuple[LoraSpec, ...] = req.loras
        return cls(req.mode, req.steps_run, [{"name": s.name, "weight": s.weight}
                                             for s in specs], adapters.loaded)
