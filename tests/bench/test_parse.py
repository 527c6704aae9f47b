"""--config and --interfere parsing, with the errors a user sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from steadygen.bench.interfere import InterferenceSpec
from steadygen.bench.runner import BenchConfig
from steadygen.config import Settings
from steadygen.errors import ConfigError


def test_inline_overrides_become_settings() -> None:
    cfg = BenchConfig.parse("A:concurrency=4,empty_cache_per_request=true,warmup=false")
    assert cfg == BenchConfig("A", {"concurrency": "4", "empty_cache_per_request": "true",
                                    "warmup": "false"})
    s = Settings().with_overrides(**cfg.overrides)
    assert (s.concurrency, s.empty_cache_per_request, s.warmup) == (4, True, False)


def test_a_bare_name_means_defaults_and_dashes_are_underscores() -> None:
    assert BenchConfig.parse("B") == BenchConfig("B", {})
    assert BenchConfig.parse("C:sampler-hz=20").overrides == {"sampler_hz": "20"}


def test_a_config_file(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text("concurrency = 2\ncompile = true\n")
    assert BenchConfig.parse(f"A={path}") == BenchConfig("A", {"concurrency": 2,
                                                               "compile": True})


@pytest.mark.parametrize(("text", "message"), [
    (":concurrency=4", "needs a name"),
    ("A:concurrency", "is not key=value"),
    ("A=/nonexistent/a.toml", "cannot read"),
])
def test_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BenchConfig.parse(text)


def test_a_bad_config_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("concurrency = = 2")
    with pytest.raises(ConfigError, match="cannot read"):
        BenchConfig.parse(f"A={path}")


def test_an_unknown_setting_is_refused_when_the_config_is_used() -> None:
    cfg = BenchConfig.parse("A:concurency=4")
    with pytest.raises(ConfigError, match="unknown setting 'concurency'"):
        Settings().with_overrides(**cfg.overrides)


@pytest.mark.parametrize(("text", "expected"), [
    ("cpu", InterferenceSpec("cpu")),
    ("cpu:procs=2,seconds=30", InterferenceSpec("cpu", procs=2, seconds=30.0)),
    ("gpu:size=4096,device=cuda:1", InterferenceSpec("gpu", size=4096, device="cuda:1")),
    ("vram:gib=1.5", InterferenceSpec("vram", gib=1.5)),
])
def test_interference_specs(text: str, expected: InterferenceSpec) -> None:
    assert InterferenceSpec.parse(text) == expected
    assert InterferenceSpec.parse(text).label == expected.kind


@pytest.mark.parametrize(("text", "message"), [
    ("disk", "must be one of cpu, gpu, vram"),
    ("", "must be one of"),
    ("cpu:bogus=1", "option 'bogus' is unknown"),
    ("cpu:procs=two", "procs must be a number"),
    ("cpu:procs=-1", "procs must be 0"),
    ("vram:gib=0", "gib must be above 0"),
    ("cpu:seconds=-5", "seconds must be above 0"),
])
def test_interference_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        InterferenceSpec.parse(text)
