"""The ``steadygen`` command, end to end on zimage-tiny: as a real subprocess for the paths a
user takes, and in-process (click's runner) for the long list of input errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from steadygen import __version__
from steadygen.cli import main
from steadygen.engine.outputs import read_png_metadata
from steadygen.engine.timings import Timings

PROMPT = "a lighthouse at dusk"


def seed_of(png: Path) -> int:
    text = read_png_metadata(png)["parameters"]
    return int(text.split("Seed: ")[1].split(",")[0])


# -- real subprocesses --------------------------------------------------------------------


def test_generate_writes_a_png_with_metadata_and_prints_timings(
    run_cli: Any, tiny_checkpoint: Path, tmp_path: Path, engine: Any, make_req: Any
) -> None:
    out = tmp_path / "out"
    r = run_cli("generate", PROMPT, "--size", "256x256", "--seed", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    [png] = sorted(out.glob("*.png"))
    assert f"wrote {png}" in r.stdout
    assert "seed 1, 256x256, 8 steps" in r.stdout
    for phase in ("encode", "prepare", "steps", "decode", "save", "total"):
        assert phase in r.stdout, phase
    assert "8 steps: median" in r.stdout
    assert "zimage-tiny" in r.stderr and "noise" in r.stdout  # model line, noise note

    chunks = read_png_metadata(png)
    assert chunks["parameters"].startswith(PROMPT + "\n")
    assert "Seed: 1," in chunks["parameters"] and "Size: 256x256" in chunks["parameters"]
    assert "Model: zimage-tiny" in chunks["parameters"]
    meta = json.loads(chunks["steadygen"])
    assert meta["parameters"]["seed"] == 1 and len(meta["timings"]["steps_s"]) == 8
    assert meta["device"] == "cpu"

    # the command runs the same engine: the in-process image for this request matches
    with Image.open(png) as im:
        from_cli = np.asarray(im.convert("RGB")).astype(int)
    in_process = np.asarray(engine.generate(make_req(seed=1)).images[0]).astype(int)
    assert np.abs(from_cli - in_process).max() <= 2


def test_generate_json_names_paths_seed_and_timings(
    run_cli: Any, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """No --seed: a random seed is drawn, reported, and written into both PNGs (seed, seed+1)."""
    out = tmp_path / "json-out"
    r = run_cli(
        "generate", PROMPT, "--size", "256x256", "--steps", "3", "--n", "2",
        "--out", str(out), "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    payload = json.loads(r.stdout)  # stdout is the JSON document and nothing else
    paths = [Path(p) for p in payload["paths"]]
    assert len(paths) == 2 and all(p.is_file() and p.parent == out for p in paths)
    seed = payload["seed"]
    assert payload["seed_was_random"] is True and 0 <= seed < 2**32
    assert payload["request"]["seed"] == seed and payload["request"]["n"] == 2
    assert [seed_of(p) for p in paths] == [seed, (seed + 1) % 2**32]
    assert json.loads(read_png_metadata(paths[0])["steadygen"])["parameters"]["seed"] == seed
    t = payload["timings"]
    assert len(t["steps_s"]) == 3 and all(s > 0 for s in t["steps_s"])
    assert t["total_s"] > 0 and "marks" not in t and "step_ends" not in t
    # The generation carries its telemetry window: host counters at least, here.
    tel = payload["telemetry"]
    assert tel["duration_s"] > 0 and tel["host"]["cpu_s"] is not None
    # Every phase the engine times (the engine's own list), plus "other", is the total.
    names = ["denoise_s" if k == "steps" else f"{k}_s" for k in Timings().phases()
             if k != "queue"]
    parts = sum(t[k] for k in names)
    assert abs(parts - t["total_s"]) < 1e-3
    assert payload["model"] == "zimage-tiny" and payload["device"] == "cpu"


def test_models_lists_both_with_availability(run_cli: Any) -> None:
    r = run_cli("models")
    assert r.returncode == 0, r.stderr
    assert "zimage-tiny" in r.stdout and "zimage-turbo" in r.stdout
    assert "available" in r.stdout and "default" in r.stdout


def test_version(run_cli: Any) -> None:
    r = run_cli("--version")
    assert r.returncode == 0 and __version__ in r.stdout


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--size", "250x256"], ["width", "multiple of 16", "256", "2048", "250"]),
        (["--guidance", "nan"], ["guidance", "finite", "30"]),
    ],
    ids=["size", "guidance-nan"],
)
def test_bad_input_exits_2_without_traceback(
    run_cli: Any, args: list[str], needles: list[str], tmp_path: Path
) -> None:
    r = run_cli("generate", PROMPT, *args, "--out", str(tmp_path / "o"))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == ""
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr)
    assert not (tmp_path / "o").exists()


# -- in-process, for every validation rule ------------------------------------------------


@pytest.fixture
def invoke(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """Run ``steadygen generate PROMPT ARGS`` in-process; stdout and stderr kept apart."""
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)  # restored afterwards

    def run(*args: str, prompt: str = PROMPT, env: dict[str, str] | None = None) -> Any:
        runner = CliRunner()
        argv = ["generate", prompt, "--out", str(tmp_path / "o"), *args]
        return runner.invoke(main, argv, env=env, catch_exceptions=False)

    return run


BAD_CLI = [
    pytest.param(["--size", "250x256"], {}, ["width", "multiple of 16", "256", "2048"], id="w"),
    pytest.param(["--size", "256x4096"], {}, ["height", "256", "2048", "4096"], id="h-big"),
    pytest.param(["--size", "128x256"], {}, ["width", "256", "2048", "128"], id="w-small"),
    pytest.param(["--size", "big"], {}, ["--size", "WIDTHxHEIGHT"], id="size-form"),
    pytest.param(
        ["--size", "256x272"],
        {"STEADYGEN_LIMIT_MAX_PIXELS": "65536"},
        ["size", "65536", "256x272"],
        id="pixel-cap",
    ),
    pytest.param(["--steps", "0"], {}, ["steps", "1", "100", "0"], id="steps-0"),
    pytest.param(["--steps", "101"], {}, ["steps", "1", "100", "101"], id="steps-101"),
    pytest.param(["--guidance", "nan"], {}, ["guidance", "0", "30", "nan"], id="g-nan"),
    pytest.param(["--guidance", "inf"], {}, ["guidance", "0", "30", "inf"], id="g-inf"),
    pytest.param(["--guidance", "-1"], {}, ["guidance", "0", "30", "-1"], id="g-neg"),
    pytest.param(["--n", "0"], {}, ["n", "1", "4", "0"], id="n-0"),
    pytest.param(["--n", "5"], {}, ["n", "1", "4", "5"], id="n-5"),
    pytest.param(["--seed", "-1"], {}, ["seed", "0", "4294967295", "-1"], id="seed--1"),
    pytest.param(["--seed", str(2**32)], {}, ["seed", "4294967295"], id="seed-2^32"),
    pytest.param(["--steps", "abc"], {}, ["steps", "1", "100", "abc"], id="steps-abc"),
    pytest.param(["--seed", "abc"], {}, ["seed", "4294967295", "abc"], id="seed-abc"),
    pytest.param(["--guidance", "abc"], {}, ["guidance", "0", "30", "abc"], id="g-abc"),
]


@pytest.mark.parametrize(("args", "env", "needles"), BAD_CLI)
def test_each_input_error_exits_2_and_names_field_and_range(
    invoke: Any, args: list[str], env: dict[str, str], needles: list[str]
) -> None:
    result = invoke(*args, env=env)
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.stderr and result.stdout == ""
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


@pytest.mark.parametrize(
    ("prompt", "needles"),
    [("", ["prompt", "empty"]), ("   ", ["prompt", "empty"]), ("x" * 4001, ["prompt", "4000"])],
    ids=["empty", "blank", "too-long"],
)
def test_prompt_errors_exit_2(invoke: Any, prompt: str, needles: list[str]) -> None:
    result = invoke(prompt=prompt)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr


def test_several_errors_are_all_reported(invoke: Any) -> None:
    result = invoke("--steps", "0", "--n", "9", prompt="")
    assert result.exit_code == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert [ln.split(":")[1].strip() for ln in lines] == ["prompt", "steps", "n"]


def test_unknown_model_names_the_choices(invoke: Any) -> None:
    result = invoke("--model", "no-such-model")
    assert result.exit_code != 0 and "Traceback" not in result.stderr
    assert "no-such-model" in result.stderr
    assert "zimage-turbo" in result.stderr and "zimage-tiny" in result.stderr


def test_unknown_model_exits_2(invoke: Any) -> None:
    assert invoke("--model", "no-such-model").exit_code == 2


def test_bad_setting_exits_2(invoke: Any) -> None:
    result = invoke(env={"STEADYGEN_ATTENTION": "xformers"})
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "attention" in result.stderr and "xformers" in result.stderr


def test_models_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    result = CliRunner().invoke(main, ["models", "--json"], catch_exceptions=False)
    assert result.exit_code == 0
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) >= {"zimage-tiny", "zimage-turbo"}
    assert rows["zimage-tiny"]["available"] is True
    defaults = [name for name, row in rows.items() if row["default"]]
    assert len(defaults) == 1
    import torch

    if not torch.cuda.is_available():
        assert defaults == ["zimage-tiny"] and rows["zimage-turbo"]["available"] is False
        assert "CUDA" in rows["zimage-turbo"]["why"]
