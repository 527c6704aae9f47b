"""Live previews: a cheap picture of the latents after each denoising step.

Decoding the latents with the VAE every step would cost as much as a step. Instead a fixed
linear map takes each latent pixel's 16 channels to RGB (3 x 16 weights and 3 biases), the
result is upscaled and encoded as a small JPEG. The map is fitted once per VAE by least
squares: smooth synthetic colour images are encoded to latents, the latents decoded, and the
map fitted from the latents (in the space the denoising loop keeps them) to the decoded
images pooled down to the latent grid. The fit is cached in the cache directory under a key
made from the VAE's class, config and weights, so a different VAE (the tiny model's random
one included) gets its own map.

Z-Image keeps its latents unpacked inside the loop, (batch, 16, height / 8, width / 8), and in
the transformer's space: ``decode`` input is ``latents / scaling_factor + shift_factor``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("steadygen.engine.preview")

PREVIEW_MAP_VERSION = 1  # bump when the fit below changes, so old cached maps are refitted
PREVIEW_UPSCALE = 2  # the latent grid is 1/8 of the image side; the preview 1/4 of it
JPEG_QUALITY = 70
FIT_SIDE_PX = 256  # the synthetic images the map is fitted on
FIT_IMAGES = 4
PREVIEW_SHARE = 0.02  # previews may take at most this share of a job's step time


@dataclass(frozen=True)
class LatentRGBMap:
    """rgb = weight @ latent_pixel + bias, in 0..1 (weight: 3 rows of one value per
    latent channel)."""

    vae_key: str
    weight: list[list[float]]
    bias: list[float]
    fit_rmse: float  # root mean square error of the fit, on 0..1 colours

    def to_json(self) -> str:
        return json.dumps({"version": PREVIEW_MAP_VERSION, **asdict(self)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> LatentRGBMap | None:
        data = json.loads(text)
        if data.pop("version", None) != PREVIEW_MAP_VERSION:
            return None
        return cls(**data)


def vae_key(vae: Any) -> str:
    """A key that changes with the VAE's class, config or weights (hashing every weight of
    the decoder's last and the encoder's first layer: cheap, and any retraining moves them)."""
    import torch

    h = hashlib.sha256()
    h.update(type(vae).__name__.encode())
    h.update(json.dumps(dict(vae.config), sort_keys=True, default=str).encode())
    for layer in (vae.decoder.conv_out, vae.encoder.conv_in):
        for p in layer.parameters():
            h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def _synthetic_images(n: int, side_px: int, seed: int) -> Any:
    """Smooth colour fields in -1..1, (n, 3, side, side): random 4x4 colour grids blown up
    bicubically, plus a gradient, so the fit sees flat areas, edges and many hues."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    fields = F.interpolate(coarse, size=(side_px, side_px), mode="bicubic", align_corners=True)
    ramp = torch.linspace(-0.5, 0.5, side_px).view(1, 1, 1, side_px)
    return (fields + ramp * torch.rand(n, 3, 1, 1, generator=g)).clamp(-1, 1)


def fit_samples(vae: Any, *, images: int = FIT_IMAGES,
                side_px: int = FIT_SIDE_PX) -> tuple[Any, Any]:
    """(latent pixels (N, 16), their decoded colours in 0..1 (N, 3)): ``images`` synthetic
    images encoded, decoded, and the decoded images pooled down to the latent grid."""
    import torch
    import torch.nn.functional as F

    cfg = vae.config
    device, dtype = next(vae.parameters()).device, vae.dtype
    pixels = _synthetic_images(images, side_px, seed=0).to(device, dtype)
    with torch.inference_mode():
        posterior = vae.encode(pixels).latent_dist
        decoded = vae.decode(posterior.mean, return_dict=False)[0]
    # the loop's space: latents = (vae latents - shift) * scale
    loop_latents = ((posterior.mean - cfg.shift_factor) * cfg.scaling_factor).float().cpu()
    target = F.adaptive_avg_pool2d(decoded.float().cpu(), loop_latents.shape[-2:])
    target = ((target + 1) / 2).clamp(0, 1)
    x = loop_latents.permute(0, 2, 3, 1).reshape(-1, loop_latents.shape[1])
    y = target.permute(0, 2, 3, 1).reshape(-1, 3)
    return x, y


def fit_map(vae: Any, *, images: int = FIT_IMAGES, side_px: int = FIT_SIDE_PX) -> LatentRGBMap:
    """Fit the latent->RGB map for this VAE by least squares (one encode and one decode of
    ``images`` small images)."""
    x, y = fit_samples(vae, images=images, side_px=side_px)
    weight, bias, rmse = least_squares(x, y)
    return LatentRGBMap(vae_key=vae_key(vae), weight=weight, bias=bias, fit_rmse=round(rmse, 5))


def least_squares(x: Any, y: Any) -> tuple[list[list[float]], list[float], float]:
    """The affine map y ~ weight @ x + bias minimising the squared error: (weight rows,
    bias, root mean square error), from x (N, C) and y (N, 3)."""
    import torch

    x1 = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1).double()
    solution = torch.linalg.lstsq(x1, y.double()).solution  # (C + 1, 3)
    rmse = float(((x1 @ solution - y.double()) ** 2).mean().sqrt())
    return solution[:-1].T.float().tolist(), solution[-1].float().tolist(), rmse


def load_or_fit(vae: Any, cache_dir: Path) -> LatentRGBMap:
    """The VAE's map from the cache directory, fitted and stored on first use."""
    key = vae_key(vae)
    path = Path(cache_dir) / "previews" / f"latent-rgb-{key}.json"
    try:
        cached = LatentRGBMap.from_json(path.read_text())
        if cached is not None and cached.vae_key == key:
            return cached
    except (OSError, ValueError, TypeError):
        pass
    fitted = fit_map(vae)
    try:  # atomically: a concurrent reader sees the old file or the whole new one
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(fitted.to_json())
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache costs a refit next start, nothing more
        log.warning("cannot cache the preview map in %s: %s", path.parent, exc)
    log.info("fitted the latent preview map for VAE %s (rmse %.3f)", key, fitted.fit_rmse)
    return fitted


class Previewer:
    """Turns loop latents into a JPEG with one map. On the CPU the map runs in numpy (no
    torch dispatch per call); on a GPU it runs there and only the small RGB grid moves."""

    def __init__(self, rgb_map: LatentRGBMap):
        import numpy as np

        self.map = rgb_map
        self._weight = np.asarray(rgb_map.weight, dtype=np.float32)  # (3, 16)
        self._bias = np.asarray(rgb_map.bias, dtype=np.float32).reshape(3, 1)
        self._on_device: dict[Any, tuple[Any, Any]] = {}

    def rgb(self, latents: Any) -> Any:
        """(B, 16, h, w) or (16, h, w) latents -> (h, w, 3) uint8 of the first image."""
        import numpy as np

        lat = latents[0] if latents.dim() == 4 else latents
        channels, height, width = lat.shape
        if lat.device.type == "cpu":
            mapped = self._weight @ lat.detach().reshape(channels, -1).float().numpy()
            mapped += self._bias
        else:
            mapped = self._map_on_device(lat.detach().reshape(channels, -1))
        np.clip(mapped, 0.0, 1.0, out=mapped)
        pixels = (mapped * 255.0 + 0.5).astype(np.uint8)
        return pixels.reshape(3, height, width).transpose(1, 2, 0)

    def _map_on_device(self, flat: Any) -> Any:
        import torch

        if flat.device not in self._on_device:
            self._on_device[flat.device] = (torch.from_numpy(self._weight).to(flat.device),
                                            torch.from_numpy(self._bias).to(flat.device))
        weight, bias = self._on_device[flat.device]
        with torch.inference_mode():
            return torch.addmm(bias, weight, flat.float()).cpu().numpy()

    def jpeg(self, latents: Any, scale: int = PREVIEW_UPSCALE,
             quality: int = JPEG_QUALITY) -> bytes:
        """Upscaled ``scale`` times (nearest: each latent pixel a block) only: a larger JPEG
        costs more than the map, and the page scales the picture up further for free."""
        from PIL import Image

        pixels = self.rgb(latents)
        if scale > 1:
            pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="JPEG", quality=quality)
        return out.getvalue()


class PreviewBudget:
    """Keeps a job's previews within ``share`` of its step time: a step gets a preview when
    the previews so far plus one more (at their mean cost) stay within ``share`` of the
    steps so far. The first step always gets one (its cost is not known before); when
    steps are long against a preview (any real model on a GPU: ~1 ms against tens of ms or
    more) every step does; on a model whose steps take a few ms (the tiny model at small
    sizes) some steps go without, and the cost stays bounded all the same:
    previews_s <= share * steps_s, but for the first preview."""

    def __init__(self, share: float = PREVIEW_SHARE,
                 clock: Callable[[], float] = time.perf_counter):
        self.share = share
        self._clock = clock
        self.steps_s = 0.0
        self.previews_s = 0.0
        self.made = 0

    def maybe(self, step_s: float, make: Callable[[], bytes]) -> bytes | None:
        """Count a finished step of ``step_s`` seconds; return ``make()`` if the budget
        allows a preview now, else None."""
        self.steps_s += step_s
        if self.made and self.previews_s * (self.made + 1) / self.made > (
                self.share * self.steps_s):
            return None
        t0 = self._clock()
        out = make()
        self.previews_s += self._clock() - t0
        self.made += 1
        return out
