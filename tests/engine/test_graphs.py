"""CUDA graphs per shape: skipped cleanly on a CPU, and the replay plumbing checked.

The capture needs a GPU. What a CPU can check is everything around it, through the same
``GraphRunner`` with ``replay_mode="eager"`` (the forward re-run on the static buffers in
place of a graph replay): one entry per input shape, inputs copied in, outputs copied out
and not aliased between calls, least-recently-used eviction, and latents equal to plain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from steadygen.engine import graphs
from steadygen.engine.engine import Engine
from steadygen.engine.models import TINY
from steadygen.engine.speed import EngineOptions


def latents(pipe: Any, prompt: str, size: int = 128) -> Any:
    with torch.inference_mode():
        return pipe(prompt, height=size, width=size, num_inference_steps=2, guidance_scale=0.0,
                    output_type="latent", generator=torch.Generator("cpu").manual_seed(0)).images


@pytest.fixture()
def pipe() -> Any:
    from steadygen.engine.tiny import build_tiny_pipeline

    p = build_tiny_pipeline()
    p.set_progress_bar_config(disable=True)
    return p


def test_replayed_shapes_give_the_plain_latents(pipe: Any) -> None:
    plain = [latents(pipe, "a red boat"), latents(pipe, "a blue boat"),
             latents(pipe, "a red boat", size=160)]
    runner = graphs.GraphRunner(pipe.transformer, replay_mode="eager")
    runner.install()
    try:
        got = [latents(pipe, "a red boat"), latents(pipe, "a blue boat"),
               latents(pipe, "a red boat", size=160)]
    finally:
        runner.uninstall()
    for a, b in zip(got, plain, strict=True):
        assert torch.equal(a, b)
    assert len(runner.entries) >= 2  # one per input shape (128 and 160 at least)
    assert runner.replays == 6 and not runner.failures  # 3 generations x 2 steps
    events = runner.drain_events()
    assert len(events) == len(runner.entries) and all(e.seconds > 0 for e in events)
    assert events[0].trigger == "CUDAGRAPH_CAPTURE" and runner.drain_events() == []
    assert "forward" not in pipe.transformer.__dict__  # uninstalled: plain forward again


def test_outputs_are_not_the_buffers_the_next_replay_overwrites(pipe: Any) -> None:
    runner = graphs.GraphRunner(pipe.transformer, replay_mode="eager")
    runner.install()
    x = [torch.randn(16, 1, 16, 16)]
    t = torch.tensor([0.5])
    cap = [torch.randn(10, pipe.transformer.config.cap_feat_dim)]
    with torch.inference_mode():
        first = pipe.transformer(x, t, cap, return_dict=False)[0][0]
        kept = first.clone()
        pipe.transformer([torch.randn(16, 1, 16, 16)], t, cap, return_dict=False)
    assert torch.equal(first, kept)


def test_the_least_recently_used_shape_leaves_first(pipe: Any) -> None:
    runner = graphs.GraphRunner(pipe.transformer, replay_mode="eager", max_graphs=1)
    runner.install()
    latents(pipe, "a red boat")
    latents(pipe, "a red boat", size=160)
    assert len(runner.entries) == 1
    assert next(iter(runner.entries))[0][0][2] == 160 // 8  # the latest shape stays


def test_reset_forgets_every_graph_and_the_next_call_captures_again(pipe: Any) -> None:
    runner = graphs.GraphRunner(pipe.transformer, replay_mode="eager")
    runner.install()
    latents(pipe, "a red boat")
    runner.drain_events()
    runner.reset()  # e.g. after an adapter changed the transformer's modules
    assert not runner.entries
    latents(pipe, "a red boat")
    assert len(runner.entries) == 1 and len(runner.drain_events()) == 1


def test_a_shape_that_cannot_be_captured_runs_eager_and_says_why(pipe: Any) -> None:
    runner = graphs.GraphRunner(pipe.transformer, replay_mode="cuda")  # no CUDA here
    runner.install()
    out = latents(pipe, "a red boat")
    runner.uninstall()
    assert torch.equal(out, latents(pipe, "a red boat"))
    assert len(runner.failures) == 1 and not runner.entries


def test_install_skips_cleanly_where_graphs_cannot_run(pipe: Any) -> None:
    assert graphs.install(pipe.transformer, False, "cuda:0", False) == (None, "off")
    runner, why = graphs.install(pipe.transformer, True, "cpu", False)
    assert runner is None and why.startswith("skipped: CUDA graphs need a CUDA device")
    runner, why = graphs.install(pipe.transformer, True, "cuda:0", True)
    assert runner is None and "memory low" in why


def test_the_engine_on_a_cpu_says_it_skipped_and_matches_plain(
    tiny_checkpoint: Path, cache_dir: Path, make_req: Any, tiny_engine: Any
) -> None:
    eng = Engine.create(model=TINY, device="cpu", cache_dir=cache_dir,
                        options=EngineOptions(cuda_graphs=True))
    eng.load()
    assert eng.applied["cuda_graphs"].startswith("skipped")
    result = eng.generate(make_req(steps=2))
    assert result.metadata["graph_captures"] == 0
    reference = tiny_engine.generate(make_req(steps=2)).images[0]
    assert result.images[0].tobytes() == reference.tobytes()
