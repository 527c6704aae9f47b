"""Settings: defaults < TOML file < STEADYGEN_* environment < overrides, and every bad value
is a ConfigError that names the setting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from steadygen.config import ENV_PREFIX, Limits, Settings, load_settings
from steadygen.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No STEADYGEN_* variable from the caller's shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "steadygen.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    s = load_settings()
    assert s == Settings()
    assert s.port == 7860 and s.host == "127.0.0.1" and s.warmup is True
    assert s.limits == Limits() and s.limits.max_steps == 100
    assert s.images_dir == s.data_dir / "images"
    assert s.db_path.name == "jobs.sqlite3"


def test_cache_and_data_dirs_follow_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "d"))
    s = load_settings()
    assert s.cache_dir == tmp_path / "c" / "steadygen"
    assert s.data_dir == tmp_path / "d" / "steadygen"


def test_environment_overrides_each_kind(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STEADYGEN_PORT", "8123")
    monkeypatch.setenv("STEADYGEN_WARMUP", "off")
    monkeypatch.setenv("STEADYGEN_COMPILE", "yes")
    monkeypatch.setenv("STEADYGEN_SLOW_MARGIN", "0.5")
    monkeypatch.setenv("STEADYGEN_WARMUP_SIZES", "1024x1024, 768x1344")
    monkeypatch.setenv("STEADYGEN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("STEADYGEN_MODEL", "zimage-tiny")
    monkeypatch.setenv("STEADYGEN_LIMIT_MAX_STEPS", "50")
    s = load_settings()
    assert s.port == 8123
    assert s.warmup is False and s.compile is True
    assert s.slow_margin == 0.5
    assert s.warmup_sizes == ("1024x1024", "768x1344")
    assert s.data_dir == tmp_path / "data" and isinstance(s.data_dir, Path)
    assert s.model == "zimage-tiny"
    assert s.limits.max_steps == 50 and s.limits.max_n == Limits().max_n


def test_toml_file_is_read(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        'port = 9000\nattention = "sdpa"\ncors_origins = ["http://a", "http://b"]\n'
        'data_dir = "~/sg-data"\n[limits]\nmax_n = 2\n',
    )
    s = load_settings(path)
    assert s.port == 9000 and s.attention == "sdpa"
    assert s.cors_origins == ("http://a", "http://b")
    assert s.data_dir == Path("~/sg-data").expanduser()
    assert s.limits.max_n == 2


def test_config_file_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STEADYGEN_CONFIG", str(write_toml(tmp_path, "max_queue = 3\n")))
    assert load_settings().max_queue == 3


def test_precedence_file_then_env_then_overrides(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write_toml(tmp_path, "port = 9000\nmax_queue = 5\nconcurrency = 2\n")
    monkeypatch.setenv("STEADYGEN_MAX_QUEUE", "6")
    monkeypatch.setenv("STEADYGEN_CONCURRENCY", "3")
    s = load_settings(path, concurrency=4, model=None)
    assert s.port == 9000  # file only
    assert s.max_queue == 6  # env beats file
    assert s.concurrency == 4  # override beats env
    assert s.model is None  # a None override is an unset flag


def test_with_overrides_coerces_and_ignores_none() -> None:
    s = Settings().with_overrides(port="8000", model=None, cache_dir="/tmp/x")
    assert s.port == 8000 and s.model is None and s.cache_dir == Path("/tmp/x")


@pytest.mark.parametrize(
    ("env", "value", "setting"),
    [
        ("STEADYGEN_PORT", "abc", "port"),
        ("STEADYGEN_PORT", "70000", "port"),
        ("STEADYGEN_WARMUP", "maybe", "warmup"),
        ("STEADYGEN_SAMPLER_HZ", "fast", "sampler_hz"),
        ("STEADYGEN_SAMPLER_HZ", "500", "sampler_hz"),
        ("STEADYGEN_MAX_QUEUE", "0", "max_queue"),
        ("STEADYGEN_CONCURRENCY", "0", "concurrency"),
        ("STEADYGEN_ATTENTION", "xformers", "attention"),
        ("STEADYGEN_VAE_TILING", "sometimes", "vae_tiling"),
        ("STEADYGEN_QUEUE_URL", "http://localhost:6379", "queue"),
        ("STEADYGEN_MAX_ATTEMPTS", "0", "max_attempts"),
        ("STEADYGEN_LIMIT_MAX_STEPS", "many", "max_steps"),
    ],
)
def test_bad_environment_value_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, setting: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert setting in message, message


def test_bad_value_message_says_what_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEADYGEN_ATTENTION", "xformers")
    with pytest.raises(ConfigError, match=r"auto, sdpa, flash, flash3, cudnn.*'xformers'"):
        load_settings()


def test_unknown_setting_in_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown setting 'prot'"):
        load_settings(write_toml(tmp_path, "prot = 1\n"))


def test_unknown_limit_in_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_stepz"):
        load_settings(write_toml(tmp_path, "[limits]\nmax_stepz = 3\n"))


def test_unreadable_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_settings(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_settings(write_toml(tmp_path, "port = = 3\n"))


def test_bad_value_in_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="port"):
        load_settings(write_toml(tmp_path, 'port = "eighty"\n'))


def test_unknown_override_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_settings(colour="blue")
