"""Memory modes: the plan per card, the timed moves, and their place among the phases.

A CPU has no second memory to move weights to, so the engine's offload target is pointed at
``cpu:1`` (torch accepts it and it is the same memory): every move is a real ``.to`` call
through the same code a GPU runs, and its seconds are booked the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from steadygen.engine import memory
from steadygen.engine.engine import Engine, concurrency_refusal
from steadygen.engine.models import TINY
from steadygen.engine.speed import EngineOptions
from steadygen.errors import ConfigError

GIB = 2**30


@pytest.mark.parametrize(
    ("total", "mode"),
    [(None, "high"), (141 * GIB, "high"), (80 * GIB, "high"), (32 * GIB, "high"),
     (24 * GIB, "balanced"), (int(23.6 * GIB), "balanced"), (16 * GIB, "low"),
     (12 * GIB, "low"), (8 * GIB, "low")],
)
def test_auto_recommends_a_mode_from_the_cards_memory(total: int | None, mode: str) -> None:
    plan = memory.plan("auto", total)
    assert plan.mode == mode and plan.reason.startswith("auto: ")
    assert memory.recommend(total)[0] == mode


def test_each_mode_does_what_it_says() -> None:
    high, balanced, low = (memory.plan(m, 80 * GIB) for m in ("high", "balanced", "low"))
    assert not (high.offload_text_encoder or high.offload_models or high.tile_vae)
    assert balanced.offload_text_encoder and balanced.tile_vae and not balanced.offload_models
    assert low.offload_models and low.fp8_storage and low.tile_vae


def test_an_unknown_mode_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError, match="memory must be one of auto, high, balanced, low"):
        memory.plan("medium", None)


def test_low_with_torchao_fp8_is_refused_with_the_alternative() -> None:
    message = memory.check_combination(memory.plan("low", None), fp8=True)
    assert message is not None and "--memory balanced" in message
    assert memory.check_combination(memory.plan("balanced", None), fp8=True) is None


def make_engine(cache_dir: Path, mode: str) -> Engine:
    eng = Engine.create(model=TINY, device="cpu", cache_dir=cache_dir,
                        options=EngineOptions(memory=mode))
    eng.load()
    assert eng._memory is not None
    eng._memory.offload_device = "cpu:1"  # see the module docstring
    return eng


def in_engine_s(t: Any) -> float:
    return sum(v for k, v in t.phases().items() if k != "queue")


def test_balanced_moves_the_text_encoder_on_a_cache_miss_only(
    tiny_checkpoint: Path, cache_dir: Path, make_req: Any
) -> None:
    eng = make_engine(cache_dir, "balanced")
    assert eng.applied["memory"] == "balanced" and eng.pipe.vae.use_tiling
    first = eng.generate(make_req(steps=2, prompt="one"))
    t = first.timings
    assert t.offload_s > 0 and t.offload_phases == {"encode": pytest.approx(t.offload_s)}
    assert eng._memory.where["text_encoder"] == "cpu:1"  # off the device after encoding
    assert t.phases()["offload"] == t.offload_s and t.to_dict()["offload_s"] == t.offload_s
    assert in_engine_s(t) == pytest.approx(t.total_s, abs=1e-6)  # nothing counted twice
    encode_interval = t.marks["encode_end"] - t.marks["start"] - t.load_s
    assert t.encode_s == pytest.approx(encode_interval - t.offload_s)
    second = eng.generate(make_req(steps=2, prompt="two")).timings  # back, encode, off
    assert second.offload_s > 0 and not second.prompt_cache_hit
    hit = eng.generate(make_req(steps=2, prompt="two")).timings  # the cache: no move
    assert hit.prompt_cache_hit and hit.offload_s == 0.0
    assert eng._memory.where == {"text_encoder": "cpu:1", "transformer": "cpu",
                                 "vae": "cpu"}


def test_low_moves_every_model_and_stores_the_transformer_in_float8(
    tiny_checkpoint: Path, cache_dir: Path, make_req: Any, tiny_engine: Any
) -> None:
    eng = make_engine(cache_dir, "low")
    assert eng.applied["fp8_storage"].startswith("transformer weights stored in float8")
    weights = {p.dtype for p in eng.pipe.transformer.layers.parameters()}
    assert torch.float8_e4m3fn in weights
    eng.generate(make_req(steps=2))  # the first run places everything off the device
    result = eng.generate(make_req(steps=2, prompt="another"))
    t = result.timings
    assert set(t.offload_phases) == {"encode", "prepare", "decode"}
    assert t.offload_s > sum(t.offload_phases.values())  # the transformer's way out: between
    assert in_engine_s(t) == pytest.approx(t.total_s, abs=1e-6)
    assert set(eng._memory.where.values()) == {"cpu:1"}
    reference = tiny_engine.generate(make_req(steps=2, prompt="another")).images[0]
    got = torch.from_numpy(np.asarray(result.images[0], dtype=np.float64))
    ref = torch.from_numpy(np.asarray(reference, dtype=np.float64))
    assert float((got - ref).norm() / ref.norm()) < 0.1  # float8 storage, bf16-like error


def test_high_moves_nothing(engine: Any, make_req: Any) -> None:
    t = engine.generate(make_req(steps=2, prompt="high")).timings
    assert engine.applied["memory"] == "high" and t.offload_s == 0.0 and not t.offload_phases


def test_concurrency_above_one_on_cuda_is_refused_with_the_fix() -> None:
    message = concurrency_refusal("cuda:0", 2)
    assert message is not None and "concurrency 2" in message and "concurrency 1" in message
    assert concurrency_refusal("cuda:0", 1) is None
    assert concurrency_refusal("cpu", 4) is None  # the CPU path keeps its own twins


def test_create_refuses_concurrency_on_cuda_before_loading(
    monkeypatch: pytest.MonkeyPatch, cache_dir: Path, tiny_checkpoint: Path
) -> None:
    from steadygen.engine import engine as engine_module

    monkeypatch.setattr(engine_module, "cuda_available", lambda: True)  # a GPU, as far as
    monkeypatch.setattr(memory, "device_total_bytes", lambda device: 80 * GIB)  # create sees
    with pytest.raises(ConfigError, match="concurrency 2 on cuda:0 is not supported"):
        Engine.create(model=TINY, device="cuda:0", cache_dir=cache_dir, concurrency=2)


def test_the_settings_check_the_new_options() -> None:
    from steadygen.config import load_settings

    with pytest.raises(ConfigError, match="memory must be auto, high, balanced or low"):
        load_settings(memory="medium")
    with pytest.raises(ConfigError, match="vae_decode must be plain or tuned"):
        load_settings(vae_decode="fast")
    settings = load_settings(memory="low", cuda_graphs=True, exact_length_prompts=False)
    assert (settings.memory, settings.cuda_graphs, settings.exact_length_prompts) == (
        "low", True, False)


def test_build_engine_passes_the_new_options(tiny_checkpoint: Path, cache_dir: Path) -> None:
    from steadygen.compose import build_engine
    from steadygen.config import load_settings

    eng = build_engine(load_settings(model=TINY, device="cpu", cache_dir=cache_dir,
                                     memory="balanced", cuda_graphs=True, vae_decode="tuned",
                                     exact_length_prompts=False, concurrency=2))
    opts = eng.options
    assert (opts.memory, opts.cuda_graphs, opts.vae_decode, opts.exact_length_prompts) == (
        "balanced", True, "tuned", False)
