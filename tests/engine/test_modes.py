"""Editing on the tiny model, on the CPU: image-to-image, inpainting, LoRA and ControlNet
through the engine's one generate path, with their own timed phases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from steadygen.editing import LoraSpec
from steadygen.engine.engine import Engine
from steadygen.engine.modes import EditConfig
from steadygen.engine.tiny_adapters import ensure_tiny_adapters
from steadygen.errors import GenerationError
from steadygen.inputs import write_input

SIDE = 256


@pytest.fixture(scope="module")
def adapters(cache_dir: Path) -> Any:
    return ensure_tiny_adapters(cache_dir)


@pytest.fixture(scope="module")
def inputs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inputs")


@pytest.fixture(scope="module")
def edit_engine(tiny_checkpoint: Path, cache_dir: Path, adapters: Any,
                inputs_dir: Path) -> Iterator[Engine]:
    """A tiny engine of its own with the tiny LoRAs and ControlNet, warmed in every mode."""
    engine = Engine.create(model="zimage-tiny", device="cpu", cache_dir=cache_dir)
    engine.configure_edits(EditConfig(inputs_dir=inputs_dir, lora_dir=adapters.lora_dir,
                                      controlnet=adapters.controlnet_dir, lora_cache_size=2))
    engine.load()
    engine.warmup([(SIDE, SIDE)], steps=2)
    yield engine


def stored(inputs_dir: Path, image: Any) -> str:
    return write_input(image, inputs_dir).ref


def gradient(seed: int = 0) -> Any:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, SIDE, dtype=np.float32)
    rgb = np.stack([np.add.outer(base, base) / 2, np.tile(base, (SIDE, 1)),
                    rng.uniform(0, 255, (SIDE, SIDE))], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def square_mask() -> Any:
    mask = Image.new("L", (SIDE, SIDE), 0)
    mask.paste(255, (64, 64, 192, 192))
    return mask


def px(image: Any) -> np.ndarray:
    return np.asarray(image).astype(int)


def test_mode_pipelines_share_every_weight(edit_engine: Engine, make_req: Any,
                                           inputs_dir: Path) -> None:
    ref = stored(inputs_dir, gradient())
    mask = stored(inputs_dir, square_mask())
    base = edit_engine.pipe
    for req in (make_req(mode="img2img", init_image=ref, strength=0.5),
                make_req(mode="inpaint", init_image=ref, mask=mask),
                make_req(control_image=ref)):
        controlnet = edit_engine.edits.controlnet(base)[0] if req.control_image else None
        pipe = edit_engine.edits.pipeline(base, req, controlnet)
        assert pipe is not base
        for name in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
            assert getattr(pipe, name) is getattr(base, name), name
    controlnet = edit_engine.edits.controlnet(base)[0]
    assert controlnet.t_embedder is base.transformer.t_embedder  # shared, not copied


def test_warmup_covers_each_enabled_mode(edit_engine: Engine) -> None:
    for mode, control in (("txt2img", False), ("img2img", False), ("inpaint", False),
                          ("txt2img", True), ("inpaint", True)):
        assert edit_engine.is_warm(SIDE, SIDE, mode=mode, control=control), (mode, control)


def test_img2img_runs_the_steps_strength_sets_and_times_its_phases(
    edit_engine: Engine, make_req: Any, inputs_dir: Path
) -> None:
    ref = stored(inputs_dir, gradient())
    steps: list[int] = []
    req = make_req(mode="img2img", init_image=ref, strength=0.3, steps=8)
    result = edit_engine.generate(req, on_step=lambda p: steps.append(p.total))
    t = result.timings
    assert req.steps_run == 3 and len(t.steps_s) == 3 and steps == [3, 3, 3]
    assert t.image_prep_s > 0 and t.vae_encode_s > 0 and t.adapter_s == 0
    phases = t.phases()
    assert {"image_prep", "vae_encode", "adapter"} <= set(phases)
    assert t.other_s >= 0 and sum(v for k, v in phases.items() if k != "queue") == \
        pytest.approx(t.total_s, rel=1e-6, abs=1e-9)
    assert result.metadata["edit"]["mode"] == "img2img"
    assert result.metadata["edit"]["steps_run"] == 3
    assert result.images[0].size == (SIDE, SIDE)


def test_img2img_depends_on_the_image_and_is_deterministic(
    edit_engine: Engine, make_req: Any, inputs_dir: Path
) -> None:
    a, b = stored(inputs_dir, gradient(0)), stored(inputs_dir, gradient(1))
    one = px(edit_engine.generate(make_req(mode="img2img", init_image=a, strength=0.5))
             .images[0])
    again = px(edit_engine.generate(make_req(mode="img2img", init_image=a, strength=0.5))
               .images[0])
    other = px(edit_engine.generate(make_req(mode="img2img", init_image=b, strength=0.5))
               .images[0])
    plain = px(edit_engine.generate(make_req()).images[0])
    assert (one == again).all()
    assert (one != other).any() and (one != plain).any()


def test_img2img_resizes_the_input_to_the_requested_size(
    edit_engine: Engine, make_req: Any, inputs_dir: Path
) -> None:
    ref = stored(inputs_dir, gradient().resize((300, 200)))
    for mode in ("resize", "crop", "fill"):
        req = make_req(mode="img2img", init_image=ref, strength=0.5, resize_mode=mode,
                       steps=2)
        assert edit_engine.generate(req).images[0].size == (SIDE, SIDE)


def test_inpaint_keeps_the_unmasked_pixels_exactly(
    edit_engine: Engine, make_req: Any, inputs_dir: Path
) -> None:
    image = gradient()
    ref, mask = stored(inputs_dir, image), stored(inputs_dir, square_mask())
    out = px(edit_engine.generate(make_req(mode="inpaint", init_image=ref, mask=mask))
             .images[0])
    source = px(image)
    inside = np.zeros((SIDE, SIDE), bool)
    inside[64:192, 64:192] = True
    assert (out[~inside] == source[~inside]).all()
    assert (out[inside] != source[inside]).mean() > 0.5


def test_inpaint_options_invert_blur_fill_and_only_masked(
    edit_engine: Engine, make_req: Any, inputs_dir: Path
) -> None:
    image = gradient()
    ref, mask = stored(inputs_dir, image), stored(inputs_dir, square_mask())
    source = px(image)
    inverted = px(edit_engine.generate(make_req(
        mode="inpaint", init_image=ref, mask=mask, mask_invert=True, steps=2)).images[0])
    assert (inverted[100:150, 100:150] == source[100:150, 100:150]).all()  # kept now
    assert (inverted[:32, :32] != source[:32, :32]).any()
    blurred = px(edit_engine.generate(make_req(
        mode="inpaint", init_image=ref, mask=mask, mask_blur=8, steps=2)).images[0])
    assert (blurred[0:40, 0:40] == source[0:40, 0:40]).all()  # far from the seam: kept
    assert (blurred[64:192, 60] != source[64:192, 60]).any()  # the blur reaches past the edge
    filled = edit_engine.generate(make_req(
        mode="inpaint", init_image=ref, mask=mask, inpaint_fill="fill", steps=2,
        strength=0.5)).images[0]
    assert filled.size == (SIDE, SIDE)
    small = Image.new("L", (SIDE, SIDE), 0)
    small.paste(255, (100, 100, 120, 120))
    only = px(edit_engine.generate(make_req(
        mode="inpaint", init_image=ref, mask=stored(inputs_dir, small), steps=2,
        inpaint_full_res=True, inpaint_full_res_padding=8)).images[0])
    changed = np.argwhere((only != source).any(axis=-1))
    assert changed.size and changed.min() >= 100 - 1 and changed.max() <= 120 + 1


def test_first_job_with_a_new_lora_pays_the_switch_then_it_is_cached(
    edit_engine: Engine, make_req: Any
) -> None:
    cache = edit_engine.edits.adapters
    plain = px(edit_engine.generate(make_req(steps=2)).images[0])
    loads, was_loaded = cache.loads, "tiny-style" in cache.loaded
    first = edit_engine.generate(make_req(steps=2, loras=(LoraSpec("tiny-style", 1.0),)))
    second = edit_engine.generate(make_req(steps=2, loras=(LoraSpec("tiny-style", 1.0),)))
    assert first.timings.adapter_s > 0 and second.timings.adapter_s == 0
    assert cache.loads == loads + (0 if was_loaded else 1)
    styled = px(first.images[0])
    assert (styled != plain).mean() > 0.1  # the adapter changes the image
    assert (px(second.images[0]) == styled).all()
    weaker = edit_engine.generate(make_req(steps=2, loras=(LoraSpec("tiny-style", 0.3),)))
    assert weaker.timings.adapter_s > 0  # a new weight is a switch, not a load
    assert cache.loads == loads + (0 if was_loaded else 1)  # the file is read once
    back = edit_engine.generate(make_req(steps=2))
    assert back.timings.adapter_s > 0 and (px(back.images[0]) == plain).all()
    assert first.metadata["edit"]["loras"] == [{"name": "tiny-style", "weight": 1.0}]


def test_lora_cache_is_bounded(edit_engine: Engine, make_req: Any) -> None:
    cache = edit_engine.edits.adapters  # capacity 2 in this module
    for name in ("tiny-style", "tiny-character", "tiny-style"):
        edit_engine.generate(make_req(steps=1, loras=(LoraSpec(name, 1.0),)))
    both = (LoraSpec("tiny-style", 0.5), LoraSpec("tiny-character", 0.5))
    result = edit_engine.generate(make_req(steps=1, loras=both))
    assert len(cache.loaded) <= 2 and result.images
    names = set(edit_engine.pipe.transformer.peft_config)
    assert len(names) <= 2


def test_a_lora_for_another_model_is_a_clear_error_naming_the_file(
    tiny_checkpoint: Path, cache_dir: Path, tmp_path: Path, make_req: Any
) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"transformer.layers.0.attention.to_q.lora_A.weight": torch.zeros(4, 999),
               "transformer.layers.0.attention.to_q.lora_B.weight": torch.zeros(64, 4)},
              str(tmp_path / "sdxl-thing.safetensors"))
    engine = Engine.create(model="zimage-tiny", device="cpu", cache_dir=cache_dir)
    engine.configure_edits(EditConfig(lora_dir=tmp_path))
    with pytest.raises(GenerationError, match=r"sdxl-thing\.safetensors does not fit"):
        engine.generate(make_req(steps=1, loras=(LoraSpec("sdxl-thing", 1.0),)))
    assert engine.generate(make_req(steps=1)).images  # the engine still works


def test_controlnet_follows_the_control_image(
    edit_engine: Engine, make_req: Any, inputs_dir: Path
) -> None:
    a, b = stored(inputs_dir, gradient(0)), stored(inputs_dir, gradient(0).rotate(90))
    one = edit_engine.generate(make_req(control_image=a, control_scale=1.0, steps=2))
    other = px(edit_engine.generate(make_req(control_image=b, control_scale=1.0, steps=2))
               .images[0])
    assert (px(one.images[0]) != other).any()
    assert one.timings.vae_encode_s > 0
    mask = stored(inputs_dir, square_mask())
    inpainted = edit_engine.generate(make_req(mode="inpaint", init_image=a, mask=mask,
                                              control_image=b, steps=2))
    source = px(gradient(0))
    assert (px(inpainted.images[0])[:32, :32] == source[:32, :32]).all()


def test_a_missing_input_file_is_a_generation_error(
    edit_engine: Engine, make_req: Any, tmp_path: Path
) -> None:
    req = make_req(mode="img2img", init_image="0" * 64, strength=0.5)
    with pytest.raises(GenerationError, match="missing"):
        edit_engine.generate(req, inputs_dir=tmp_path)


def test_forked_engines_with_loras_take_turns(edit_engine: Engine, make_req: Any) -> None:
    """Adapters live in the transformer two forks share: their generations never overlap
    (a switch in one would change the other's image mid-run)."""
    import threading

    twin = edit_engine.fork()
    events: list[tuple[str, str]] = []

    def hook(name: str) -> Any:
        def record(where: str) -> None:
            if where in ("start", "save"):
                events.append((name, where))
        return record

    edit_engine.fault_hook, twin.fault_hook = hook("a"), hook("b")
    try:
        jobs = [threading.Thread(target=e.generate, args=(make_req(
            steps=3, loras=(LoraSpec(name, 1.0),)),))
            for e, name in ((edit_engine, "tiny-style"), (twin, "tiny-character"))]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join(120)
    finally:
        edit_engine.fault_hook = twin.fault_hook = None
    assert len(events) == 4
    assert events[0][0] == events[1][0] and events[2][0] == events[3][0]  # one, then the other
    assert [w for _, w in events] == ["start", "save", "start", "save"]


def test_png_parameters_carry_the_strength_and_lora_tags(
    edit_engine: Engine, make_req: Any, inputs_dir: Path, tmp_path: Path
) -> None:
    from steadygen.editing import split_lora_tags
    from steadygen.engine.outputs import read_png_metadata

    req = make_req(mode="img2img", init_image=stored(inputs_dir, gradient()), strength=0.5,
                   steps=2, loras=(LoraSpec("tiny-style", 0.7),))
    [path] = edit_engine.generate(req, save_dir=tmp_path).paths
    text = read_png_metadata(path)["parameters"]
    first, *_ = text.split("\n")
    assert split_lora_tags(first) == (req.prompt, [{"name": "tiny-style", "weight": "0.7"}])
    assert text.endswith("Denoising strength: 0.5")
