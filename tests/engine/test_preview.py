"""Live previews on the real tiny pipeline: the latent->RGB map is a least-squares fit that
beats any constant colour, is cached per VAE and refitted for another VAE, and a preview
per step leaves the generated image bit-identical."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from steadygen.engine.engine import Engine, StepProgress
from steadygen.engine.preview import (
    PREVIEW_UPSCALE,
    PreviewBudget,
    Previewer,
    fit_map,
    fit_samples,
    least_squares,
    load_or_fit,
    vae_key,
)
from steadygen.request import GenerationRequest


def test_least_squares_recovers_a_known_affine_map() -> None:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 16, generator=g)
    bias = torch.tensor([0.1, -0.2, 0.3])
    x = torch.randn(500, 16, generator=g)
    w, b, rmse = least_squares(x, x @ weight.T + bias)
    assert torch.allclose(torch.tensor(w), weight, atol=1e-4)
    assert torch.allclose(torch.tensor(b), bias, atol=1e-4) and rmse < 1e-4


def test_fit_on_the_tiny_vae_is_consistent_and_deterministic(engine: Engine) -> None:
    """The tiny VAE has random weights, so its decoded colours barely depend on the latents;
    the map can only be as good as the best constant colour or better, and applying it
    by hand to the fit's own samples must give the recorded error."""
    vae = engine.pipe.vae
    fitted = fit_map(vae)
    assert len(fitted.weight) == 3 and all(len(row) == 16 for row in fitted.weight)
    x, y = fit_samples(vae)
    constant_rmse = float(((y - y.mean(dim=0)) ** 2).mean().sqrt())
    mapped = x @ torch.tensor(fitted.weight).T + torch.tensor(fitted.bias)
    mapped_rmse = float(((mapped - y) ** 2).mean().sqrt())
    assert mapped_rmse == pytest.approx(fitted.fit_rmse, abs=1e-4)
    assert mapped_rmse <= constant_rmse
    assert fit_map(vae) == fitted  # same VAE, same map


def test_map_is_cached_per_vae_and_refitted_for_another(engine: Engine, tmp_path: Path) -> None:
    vae = engine.pipe.vae
    first = load_or_fit(vae, tmp_path)
    files = list((tmp_path / "previews").glob("latent-rgb-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["vae_key"] == vae_key(vae)
    # a cached file is what the next start reads: tamper with it and see it come back
    marked = json.loads(files[0].read_text())
    marked["bias"] = [0.5, 0.25, 0.125]
    files[0].write_text(json.dumps(marked))
    assert load_or_fit(vae, tmp_path).bias == [0.5, 0.25, 0.125]
    # another VAE (other weights in its last layer) gets a key and a map of its own
    import copy

    other = copy.deepcopy(vae)
    with torch.no_grad():
        other.decoder.conv_out.weight.mul_(-1.0)
    assert vae_key(other) != vae_key(vae)
    second = load_or_fit(other, tmp_path)
    assert second.vae_key == vae_key(other) and second.weight != first.weight
    assert len(list((tmp_path / "previews").glob("latent-rgb-*.json"))) == 2


def test_preview_is_the_mapped_latent_grid_upscaled(engine: Engine) -> None:
    rgb_map = load_or_fit(engine.pipe.vae, engine.cache_dir)
    previewer = Previewer(rgb_map)
    latents = torch.randn(2, 16, 32, 24, generator=torch.Generator().manual_seed(3))
    image = Image.open(io.BytesIO(previewer.jpeg(latents)))
    assert image.format == "JPEG" and image.size == (24 * PREVIEW_UPSCALE, 32 * PREVIEW_UPSCALE)
    # the map applied by hand to the first image's latent pixel (5, 7)
    w, b = np.array(rgb_map.weight), np.array(rgb_map.bias)
    expected = np.clip(w @ latents[0, :, 5, 7].numpy() + b, 0, 1) * 255
    assert np.abs(previewer.rgb(latents)[5, 7].astype(float) - expected).max() <= 1.0


def test_previews_each_step_leave_the_image_unchanged(engine: Engine, make_req: Any) -> None:
    req: GenerationRequest = make_req(seed=5, steps=3)
    plain = engine.generate(req).images[0]
    previews: list[bytes] = []

    def on_step(p: StepProgress) -> None:
        assert p.latents is not None and tuple(p.latents.shape) == (1, 16, 32, 32)
        previews.append(engine.preview(p.latents))

    shown = engine.generate(make_req(seed=5, steps=3, preview=True), on_step=on_step).images[0]
    assert np.asarray(plain).tobytes() == np.asarray(shown).tobytes()
    assert len(previews) == 3
    sizes = {Image.open(io.BytesIO(b)).size for b in previews}
    assert sizes == {(32 * PREVIEW_UPSCALE, 32 * PREVIEW_UPSCALE)}
    assert len(set(previews)) == 3  # the picture changes as the latents are denoised


@pytest.mark.parametrize("value", ["yes", 1, None, [True]])
def test_preview_flag_must_be_a_boolean(value: Any) -> None:
    from steadygen.config import Limits
    from steadygen.errors import InvalidRequest
    from steadygen.request import validate_request

    raw = {"prompt": "x", "width": 256, "height": 256, "preview": value}
    if value is None:
        raw.pop("preview")
        assert validate_request(raw, limits=Limits(), models=["m"],
                                default_model="m").preview is False
        return
    with pytest.raises(InvalidRequest) as err:
        validate_request(raw, limits=Limits(), models=["m"], default_model="m")
    assert err.value.first.field == "preview" and repr(value) in err.value.first.message


def test_device_path_maps_like_the_cpu_path(engine: Engine) -> None:
    """The map as it runs on a GPU (torch, on the latents' device), checked here on CPU
    tensors against the numpy path the CPU uses."""
    previewer = Previewer(load_or_fit(engine.pipe.vae, engine.cache_dir))
    lat = torch.randn(16, 8, 12, generator=torch.Generator().manual_seed(4))
    on_device = previewer._map_on_device(lat.reshape(16, -1))
    by_numpy = previewer._weight @ lat.reshape(16, -1).numpy() + previewer._bias
    assert np.allclose(on_device, by_numpy, atol=1e-5)


def test_preview_flag_leaves_the_shape_key_alone(engine: Engine, make_req: Any) -> None:
    from steadygen.queue.runner import shape_key

    assert shape_key(engine, make_req(preview=True)) == shape_key(engine, make_req())


def test_budget_keeps_previews_within_their_share_of_step_time() -> None:
    """A fake clock for the preview (its cost is what the budget counts): 1 ms previews
    against 10 ms steps at a 2 % share allow about one step in five, the first one always,
    and once the first is paid for, the total stays within the share."""
    clock = [0.0]

    def make() -> bytes:
        clock[0] += 0.001
        return b"jpeg"

    budget = PreviewBudget(share=0.02, clock=lambda: clock[0])
    made = [budget.maybe(0.010, make) is not None for _ in range(100)]
    assert made[0] and budget.made == sum(made)
    assert 15 <= sum(made) <= 25  # 2 % of 1 s of steps = 20 ms = about 20 previews
    assert budget.previews_s <= 0.02 * budget.steps_s + 1e-9
    # long steps against the preview: every step gets one
    slow = PreviewBudget(share=0.02, clock=lambda: clock[0])
    assert all(slow.maybe(0.200, make) is not None for _ in range(20))
