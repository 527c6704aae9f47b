"""One settings object, read once at start from defaults, a TOML file, the environment
(``STEADYGEN_<FIELD>``) and command-line flags, in that order of increasing priority.

Components receive the parts they need (a ``Limits``, a directory, a number), not the
whole object.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from steadygen.errors import ConfigError

ENV_PREFIX = "STEADYGEN_"


@dataclass(frozen=True)
class Limits:
    """The validation bounds every entry point shares."""

    min_side: int = 256
    max_side: int = 2048
    max_pixels: int = 2048 * 2048
    max_steps: int = 100
    max_n: int = 4
    max_prompt_chars: int = 4000
    max_guidance: float = 30.0
    # editing: input images, LoRA adapters, ControlNet
    max_input_images: int = 4  # images in one edit request (OpenAI's image[])
    max_input_pixels: int = 4096 * 4096  # an upload's declared size, checked before decoding
    max_loras: int = 4  # adapters in one request
    min_lora_weight: float = -2.0
    max_lora_weight: float = 2.0
    # Filled from the settings of the same names (Settings.__post_init__): what a request may
    # name is checked at validation, so a missing LoRA or ControlNet is a 400, not a failed job.
    # (text, not Path: the limits are served as JSON by /readyz)
    lora_dir: str | None = field(default=None, compare=False)
    controlnet_enabled: bool = field(default=False, compare=False)
    inputs_dir: str | None = field(default=None, compare=False)


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "steadygen"


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "steadygen"


@dataclass(frozen=True)
class Settings:
    # where things live
    data_dir: Path = field(default_factory=_default_data_dir)
    cache_dir: Path = field(default_factory=_default_cache_dir)
    # the model and the device; None picks: zimage-turbo on CUDA, else zimage-tiny
    model: str | None = None
    device: str | None = None
    # engine behaviour
    warmup: bool = True
    warmup_sizes: tuple[str, ...] = ()  # "WxH" entries; empty means the model's default size
    empty_cache_per_request: bool = False  # the known-bad case, for benchmarks only
    attention: str = "auto"  # auto | sdpa | flash | flash3 | cudnn
    compile: bool = False
    fp8: bool = False
    vae_tiling: str = "auto"  # auto | on | off
    prompt_cache_size: int = 32
    # editing: a folder of LoRA .safetensors files; a local Z-Image ControlNet checkpoint
    lora_dir: Path | None = None
    controlnet: Path | None = None
    lora_cache_size: int = 8  # adapters kept loaded at once
    memory: str = "auto"  # auto | high | balanced | low (what stays on the GPU)
    cuda_graphs: bool = False  # one CUDA graph per warm shape for the transformer
    exact_length_prompts: bool = True  # encode only the prompt's real tokens
    vae_decode: str = "plain"  # plain | tuned (cuDNN autotuning + channels-last)
    # HTTP service
    host: str = "127.0.0.1"
    port: int = 7860
    api_key: str | None = None
    max_queue: int = 64
    concurrency: int = 1
    max_body_bytes: int = 1_000_000
    max_upload_bytes: int = 25_000_000  # bodies that carry images (edits, img2img, inputs)
    cors_origins: tuple[str, ...] = ()
    log_prompts: bool = False
    shutdown_grace_s: float = 30.0
    live_previews: bool = True  # A1111 clients get previews (current_image), as in A1111
    # telemetry and attribution
    sampler_hz: float = 10.0  # 0 turns the sampler off
    temp_alert_c: float = 75.0
    fragmentation_alert: float = 0.30
    slow_margin: float = 0.25  # a job is slow past expected * (1 + margin)
    # scale-out
    queue_url: str | None = None  # redis://host:port/db
    stream: str = "steadygen:jobs"
    group: str = "steadygen-workers"
    visibility_timeout_s: float = 120.0
    max_attempts: int = 3
    metrics_port: int | None = None  # a worker's own /metrics; None: 9400 + the GPU index
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        edits = {"lora_dir": str(self.lora_dir) if self.lora_dir is not None else None,
                 "controlnet_enabled": self.controlnet is not None,
                 "inputs_dir": str(self.inputs_dir)}
        object.__setattr__(self, "limits", dataclasses.replace(self.limits, **edits))

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with the given fields replaced; None values are ignored (an unset flag)."""
        clean = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **_coerce_all(clean))

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def inputs_dir(self) -> Path:
        """Uploaded input images, by content hash; shared with Redis workers."""
        return self.data_dir / "inputs"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"


def _coerce(name: str, raw: Any, kind: Any) -> Any:
    """Turn a text (environment) or TOML value into the field's type, or say why not."""
    kind_s = str(kind)
    try:
        if isinstance(raw, str):
            if "bool" in kind_s:
                low = raw.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off", ""):
                    return False
                raise ValueError(raw)
            if "tuple" in kind_s:
                return tuple(p.strip() for p in raw.split(",") if p.strip())
            if kind_s.startswith("Path") or "Path" in kind_s:
                return Path(raw).expanduser()
            if kind_s.startswith("int") or kind_s == "int":
                return int(raw)
            if kind_s.startswith("float"):
                return float(raw)
            return raw
        if isinstance(raw, list):
            return tuple(raw)
        base = kind_s.split("|")[0].strip()
        type_ok = {
            "bool": lambda v: isinstance(v, bool),
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "str": lambda v: isinstance(v, str),
        }.get(base)
        if raw is not None and type_ok is not None and not type_ok(raw):
            raise ValueError(raw)
        if "Path" in kind_s and raw is not None:
            return Path(raw).expanduser()
        return raw
    except ValueError as exc:
        raise ConfigError(
            f"setting {name} has the value {raw!r}, which is not a valid {kind_s}"
        ) from exc


_FIELD_TYPES = {f.name: f.type for f in fields(Settings)}
_LIMIT_TYPES = {f.name: f.type for f in fields(Limits)}


def _coerce_all(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in values.items():
        if name not in _FIELD_TYPES:
            known = ", ".join(sorted(_FIELD_TYPES))
            raise ConfigError(f"unknown setting {name!r}; known settings: {known}")
        out[name] = raw if name == "limits" else _coerce(name, raw, _FIELD_TYPES[name])
    return out


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Read the settings once: defaults < TOML file < environment < overrides (CLI flags)."""
    values: dict[str, Any] = {}
    limit_values: dict[str, Any] = {}
    path = config_file or os.environ.get(ENV_PREFIX + "CONFIG")
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read the config file {path}: {exc}") from exc
        limit_values.update(data.pop("limits", {}) or {})
        values.update(data)
    for name in _FIELD_TYPES:
        env = os.environ.get(ENV_PREFIX + name.upper())
        if env is not None and name != "limits":
            values[name] = env
    for name in _LIMIT_TYPES:
        env = os.environ.get(ENV_PREFIX + "LIMIT_" + name.upper())
        if env is not None:
            limit_values[name] = env
    values.update({k: v for k, v in overrides.items() if v is not None})
    coerced = _coerce_all(values)
    if limit_values:
        bad = set(limit_values) - set(_LIMIT_TYPES)
        if bad:
            raise ConfigError(f"unknown limit(s) {sorted(bad)}; known: {sorted(_LIMIT_TYPES)}")
        coerced["limits"] = Limits(
            **{k: _coerce(k, v, _LIMIT_TYPES[k]) for k, v in limit_values.items()}
        )
    settings = Settings(**coerced)
    _check(settings)
    return settings


def _check(s: Settings) -> None:
    if s.max_queue < 1:
        raise ConfigError(f"max_queue must be at least 1 (got {s.max_queue})")
    if s.concurrency < 1:
        raise ConfigError(f"concurrency must be at least 1 (got {s.concurrency})")
    if s.sampler_hz < 0 or s.sampler_hz > 100:
        raise ConfigError(f"sampler_hz must be between 0 (off) and 100 (got {s.sampler_hz})")
    if not 1 <= s.port <= 65535:
        raise ConfigError(f"port must be between 1 and 65535 (got {s.port})")
    if s.attention not in ("auto", "sdpa", "flash", "flash3", "cudnn"):
        raise ConfigError(
            f"attention must be one of auto, sdpa, flash, flash3, cudnn (got {s.attention!r})"
        )
    if s.vae_tiling not in ("auto", "on", "off"):
        raise ConfigError(f"vae_tiling must be auto, on or off (got {s.vae_tiling!r})")
    if s.memory not in ("auto", "high", "balanced", "low"):
        raise ConfigError(f"memory must be auto, high, balanced or low (got {s.memory!r})")
    if s.vae_decode not in ("plain", "tuned"):
        raise ConfigError(f"vae_decode must be plain or tuned (got {s.vae_decode!r})")
    if s.queue_url and not s.queue_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            f"queue must be a Redis URL such as redis://127.0.0.1:6379/0 (got {s.queue_url!r})"
        )
    if s.lora_dir is not None and not s.lora_dir.is_dir():
        raise ConfigError(f"lora_dir {s.lora_dir} is not a directory; create it or unset it")
    if s.controlnet is not None and not (s.controlnet / "config.json").is_file():
        raise ConfigError(
            f"controlnet {s.controlnet} is not a ControlNet checkpoint directory (no config.json)"
        )
    lim = s.limits
    if not lim.min_lora_weight < lim.max_lora_weight:
        raise ConfigError(
            f"min_lora_weight ({lim.min_lora_weight}) must be below max_lora_weight "
            f"({lim.max_lora_weight})"
        )
    if s.max_upload_bytes < s.max_body_bytes:
        raise ConfigError(
            f"max_upload_bytes ({s.max_upload_bytes}) must be at least max_body_bytes "
            f"({s.max_body_bytes})"
        )
    if s.metrics_port is not None and not 0 <= s.metrics_port <= 65535:
        raise ConfigError(f"metrics_port must be 0 (any free port) to 65535 "
                          f"(got {s.metrics_port})")
    if s.max_attempts < 1:
        raise ConfigError(f"max_attempts must be at least 1 (got {s.max_attempts})")
