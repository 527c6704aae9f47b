"""The engine on the tiny model, on the CPU: determinism, timings, cancel, faults, CFG."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from steadygen.engine.device import ALLOC_CONF, configure_allocator
from steadygen.engine.engine import Engine, StepProgress
from steadygen.engine.models import TINY, resolve_model
from steadygen.engine.outputs import read_png_metadata
from steadygen.engine.speed import EngineOptions
from steadygen.errors import (
    Cancelled,
    GenerationError,
    ModelUnavailable,
    OutOfMemory,
    UnknownModel,
)
from steadygen.request import SEED_MAX


def pixels(image: Any) -> np.ndarray:
    return np.asarray(image)


# -- determinism --------------------------------------------------------------------------


def test_same_seed_gives_bit_identical_pixels(engine: Engine, make_req: Any) -> None:
    a = engine.generate(make_req(seed=1)).images[0]
    b = engine.generate(make_req(seed=1)).images[0]
    assert a.size == (256, 256) and a.mode == "RGB"
    assert pixels(a).tobytes() == pixels(b).tobytes()


def test_different_seed_gives_a_different_image(engine: Engine, make_req: Any) -> None:
    a = pixels(engine.generate(make_req(seed=1)).images[0])
    b = pixels(engine.generate(make_req(seed=2)).images[0])
    assert (a != b).mean() > 0.5  # not a few pixels: a different noise altogether


def test_n2_images_are_seed_and_seed_plus_one(
    engine: Engine, tmp_path: Path, make_req: Any
) -> None:
    """Image k of an n=2 request is the n=1 image with seed+k, up to float rounding.

    Not bit-identical: a batch of 2 runs the CPU matmuls in another blocking, so a few
    pixels (about 0.03 %) differ by 1/255. Bit-identical would need batch-invariant kernels.
    """
    pair = engine.generate(make_req(seed=41, n=2), save_dir=tmp_path)
    assert len(pair.images) == 2 and len(pair.paths) == 2
    singles = [pixels(engine.generate(make_req(seed=41 + k)).images[0]) for k in range(2)]
    for k in range(2):
        diff = np.abs(pixels(pair.images[k]).astype(int) - singles[k].astype(int))
        assert diff.max() <= 2, f"image {k}: max diff {diff.max()}"
        assert (diff > 0).mean() < 0.01, f"image {k}: {(diff > 0).mean():.4%} pixels differ"
    # the two images of the batch are different images
    assert (pixels(pair.images[0]) != pixels(pair.images[1])).mean() > 0.5
    seeds = [
        read_png_metadata(p)["parameters"].split("Seed: ")[1].split(",")[0] for p in pair.paths
    ]
    assert seeds == ["41", "42"]


def test_n2_seed_wraps_at_the_top(engine: Engine, tmp_path: Path, make_req: Any) -> None:
    result = engine.generate(make_req(seed=SEED_MAX, n=2, steps=2), save_dir=tmp_path)
    params = [read_png_metadata(p)["parameters"] for p in result.paths]
    assert f"Seed: {SEED_MAX}," in params[0] and "Seed: 0," in params[1]


def test_no_seed_gives_a_random_one_recorded_in_result_and_png(
    engine: Engine, tmp_path: Path, make_req: Any
) -> None:
    from steadygen.config import Limits
    from steadygen.request import validate_request

    req = validate_request(
        {"prompt": "a lighthouse at dusk", "width": 256, "height": 256, "steps": 2},
        limits=Limits(),
        models=[TINY],
        default_model=TINY,
    )
    assert req.seed_was_random
    result = engine.generate(req, save_dir=tmp_path)
    assert result.request.seed == req.seed
    meta = read_png_metadata(result.paths[0])
    assert f"Seed: {req.seed}," in meta["parameters"]
    import json

    params = json.loads(meta["steadygen"])["parameters"]
    assert params["seed"] == req.seed and params["seed_was_random"] is True
    # and that seed reproduces the image
    again = engine.generate(make_req(seed=req.seed, steps=2)).images[0]
    assert pixels(again).tobytes() == pixels(result.images[0]).tobytes()


# -- timings ------------------------------------------------------------------------------


def test_timings_add_up_and_match_the_wall_clock(engine: Engine, make_req: Any) -> None:
    steps = 6
    gaps: list[tuple[float, float]] = []
    for _ in range(3):  # a busy machine can preempt us outside the engine: best of three
        t0 = time.monotonic()
        result = engine.generate(make_req(steps=steps))
        wall_s = time.monotonic() - t0
        t = result.timings
        phases = t.phases()
        assert all(v >= 0 for v in phases.values()), phases
        in_engine = sum(v for k, v in phases.items() if k != "queue")
        assert abs(in_engine - t.total_s) < 1e-3, (phases, t.total_s)  # identity, every time
        assert t.total_s <= wall_s + 1e-3
        gaps.append((wall_s - t.total_s, wall_s))
    # two measurements of the same interval agree (a consistency check, not an absolute time)
    assert any(gap <= 0.05 * wall + 0.020 for gap, wall in gaps), gaps

    assert len(t.steps_s) == steps and all(s > 0 for s in t.steps_s)
    assert len(t.step_ends) == steps
    m = t.marks
    assert m["start"] <= m["encode_end"] <= m["prepare_end"] <= m["denoise_end"]
    assert m["denoise_end"] <= m["decode_end"] <= m["save_end"] <= m["end"]
    ends = [m["prepare_end"], *t.step_ends]
    assert all(a < b for a, b in zip(ends, ends[1:], strict=False)), ends
    assert t.step_ends[-1] <= m["denoise_end"]
    assert abs(t.total_s - (m["end"] - m["start"])) < 1e-9
    assert t.encode_s > 0 or t.prompt_cache_hit
    assert t.decode_s > 0 and t.load_s == 0.0  # the engine was loaded already


def test_first_of_shape_then_warm(engine: Engine, make_req: Any) -> None:
    req = make_req(width=256, height=272, steps=2)
    assert not engine.is_warm(256, 272)
    first = engine.generate(req).timings
    second = engine.generate(req).timings
    assert first.first_of_shape and not second.first_of_shape
    assert engine.is_warm(256, 272) and engine.warm


def test_a_new_caption_bucket_is_a_first_run_of_its_shape(engine: Engine,
                                                          make_req: Any) -> None:
    """A prompt crossing a 32-token boundary meets new kernels (cuDNN plans, compiled
    shapes): it is booked as a first run, the one after it is warm."""
    short = make_req(width=256, height=288, steps=2, prompt="a red boat")
    long = make_req(width=256, height=288, steps=2, prompt="a long prompt about a boat " * 8)
    first = engine.generate(short)
    assert first.timings.first_of_shape and first.metadata["first_run_of_shape"]
    assert first.metadata["shape_key"]["caption_buckets"] == [32]
    assert not engine.generate(make_req(width=256, height=288, steps=2,
                                        prompt="a blue boat")).timings.first_of_shape
    longer = engine.generate(long)
    assert longer.timings.first_of_shape  # same size, another caption bucket
    assert longer.metadata["shape_key"]["caption_buckets"][0] > 32
    assert not engine.generate(long).timings.first_of_shape


def test_on_step_reports_every_step_in_order(engine: Engine, make_req: Any) -> None:
    seen: list[StepProgress] = []
    engine.generate(make_req(steps=5), on_step=seen.append)
    assert [p.step for p in seen] == [1, 2, 3, 4, 5]
    assert all(p.total == 5 and p.step_s > 0 for p in seen)
    elapsed = [p.elapsed_s for p in seen]
    assert elapsed == sorted(elapsed)
    assert all(0 < p.denoise_elapsed_s <= p.elapsed_s for p in seen)
    # the in-run ETA: the job's mean step for each step left, plus the tail asked for
    third = seen[2]
    mean = third.denoise_elapsed_s / 3
    assert third.remaining_s(tail_s=0.25) == pytest.approx(2 * mean + 0.25)
    assert third.remaining_s() == pytest.approx(2.5 * mean)
    assert seen[-1].remaining_s(tail_s=0.0) == 0.0


def test_load_time_is_paid_by_the_first_job_only(
    tiny_checkpoint: Path, cache_dir: Path, make_req: Any
) -> None:
    fresh = Engine.create(model=TINY, device="cpu", cache_dir=cache_dir)
    assert not fresh.loaded
    first = fresh.generate(make_req(steps=2)).timings
    second = fresh.generate(make_req(steps=2)).timings
    assert first.load_s > 0 and second.load_s == 0.0
    assert fresh.load() == 0.0  # already loaded


# -- cancel and faults --------------------------------------------------------------------


def test_cancel_at_step_3_then_the_engine_still_works(engine: Engine, make_req: Any) -> None:
    cancel = threading.Event()
    steps_seen: list[int] = []

    def on_step(p: StepProgress) -> None:
        steps_seen.append(p.step)
        if p.step == 3:
            cancel.set()

    with pytest.raises(Cancelled) as info:
        engine.generate(make_req(), on_step=on_step, cancel=cancel)
    assert info.value.at_step == 3
    assert steps_seen == [1, 2, 3]
    result = engine.generate(make_req())
    assert len(result.timings.steps_s) == 8 and len(result.images) == 1


def test_out_of_memory_at_step_2_is_clear_and_recoverable(engine: Engine, make_req: Any) -> None:
    where: list[str] = []

    def fault(at: str) -> None:
        where.append(at)
        if at == "step:2":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    engine.fault_hook = fault
    with pytest.raises(OutOfMemory) as info:
        engine.generate(make_req())
    message = str(info.value)
    assert "out of memory" in message and "256x256" in message
    assert "smaller size" in message and "next job" in message
    assert isinstance(info.value, GenerationError)
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)
    assert where[-1] == "step:2" and "encode" in where
    engine.fault_hook = None
    assert len(engine.generate(make_req()).images) == 1


def test_other_failures_become_generation_error(engine: Engine, make_req: Any) -> None:
    def fault(at: str) -> None:
        if at == "decode":
            raise RuntimeError("boom")

    engine.fault_hook = fault
    with pytest.raises(GenerationError, match="RuntimeError: boom") as info:
        engine.generate(make_req(steps=2))
    assert not isinstance(info.value, OutOfMemory)
    engine.fault_hook = None
    engine.generate(make_req(steps=2))


# -- options ------------------------------------------------------------------------------


def test_guidance_runs_cfg_with_a_negative_prompt_and_says_it_doubles(
    engine: Engine, make_req: Any
) -> None:
    plain = engine.generate(make_req(steps=4))
    cfg = engine.generate(make_req(steps=4, guidance=4.0, negative_prompt="blurry, dark"))
    assert len(cfg.timings.steps_s) == 4
    assert any("twice" in n and "guidance" in n for n in cfg.notes), cfg.notes
    assert not any("guidance" in n for n in plain.notes)
    assert pixels(cfg.images[0]).tobytes() != pixels(plain.images[0]).tobytes()
    # the negative prompt matters when CFG is on
    other = engine.generate(make_req(steps=4, guidance=4.0, negative_prompt="sunny"))
    assert pixels(other.images[0]).tobytes() != pixels(cfg.images[0]).tobytes()


def test_empty_cache_per_request_records_memory_time(
    tiny_checkpoint: Path, cache_dir: Path, make_req: Any
) -> None:
    options = EngineOptions(empty_cache_per_request=True)
    eng = Engine.create(model=TINY, device="cpu", cache_dir=cache_dir, options=options)
    t = eng.generate(make_req(steps=2)).timings
    assert t.memory_s >= 0 and "memory_end" not in t.marks
    assert t.marks["end"] >= t.marks["save_end"]
    assert abs(sum(v for k, v in t.phases().items() if k != "queue") - t.total_s) < 1e-3
    assert eng.options_summary()["empty_cache_per_request"] is True


def test_result_carries_versions_and_options(engine: Engine, make_req: Any) -> None:
    result = engine.generate(make_req(steps=2))
    assert result.model == TINY and result.device == "cpu"
    versions = result.metadata["versions"]
    assert {"steadygen", "torch", "diffusers", "transformers"} <= set(versions)
    assert result.metadata["options"]["applied"]["attention_backend"] == "native"
    assert result.memory == {}  # allocator stats are a CUDA thing


# -- loading, models, allocator -----------------------------------------------------------


def test_local_checkpoint_directory_loads_through_the_same_loader(
    tiny_checkpoint: Path, cache_dir: Path, make_req: Any
) -> None:
    spec = resolve_model(str(tiny_checkpoint))
    assert spec.kind == "local" and spec.source == str(tiny_checkpoint.resolve())
    assert not spec.needs_cuda
    eng = Engine(spec, "cpu", cache_dir)
    result = eng.generate(make_req(steps=2, model=spec.name))
    assert result.model == spec.name and result.images[0].size == (256, 256)
    # same weights, same seed: the same image as through the registered name
    tiny = Engine.create(model=TINY, device="cpu", cache_dir=cache_dir)
    same = tiny.generate(make_req(steps=2))
    assert pixels(same.images[0]).tobytes() == pixels(result.images[0]).tobytes()


def test_resolve_model_refusals(tmp_path: Path) -> None:
    with pytest.raises(UnknownModel, match="zimage-turbo, zimage-tiny"):
        resolve_model("no-such-model")
    with pytest.raises(UnknownModel, match="model_index.json"):
        resolve_model(str(tmp_path))


def test_create_refusals_on_a_cpu_machine(cache_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(GenerationError, match="CUDA is not available"):
        Engine.create(model=TINY, device="cuda:0", cache_dir=cache_dir)
    with pytest.raises(ModelUnavailable, match="needs a CUDA GPU"):
        Engine.create(model="zimage-turbo", cache_dir=cache_dir)
    assert Engine.create(cache_dir=cache_dir).model_name == TINY  # the CPU default


def test_configure_allocator_sets_expandable_segments_when_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    assert configure_allocator() is True
    import os

    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == ALLOC_CONF == "expandable_segments:True"


@pytest.mark.parametrize("name", ["PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"])
def test_configure_allocator_leaves_a_user_value_alone(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    import os

    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    monkeypatch.setenv(name, "max_split_size_mb:128")
    assert configure_allocator() is False
    assert os.environ[name] == "max_split_size_mb:128"
    if name == "PYTORCH_ALLOC_CONF":
        assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ


def test_create_records_who_set_the_allocator(
    monkeypatch: pytest.MonkeyPatch, cache_dir: Path
) -> None:
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "backend:native")
    eng = Engine.create(model=TINY, device="cpu", cache_dir=cache_dir)
    assert eng.applied["alloc_conf_set_by_steadygen"] is False
