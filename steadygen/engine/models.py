"""The model registry: which models steadygen knows, where their weights come from, and
whether each can run on this machine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from steadygen.errors import ModelUnavailable, UnknownModel

TURBO = "zimage-turbo"
TINY = "zimage-tiny"
TURBO_HUB_ID = "Tongyi-MAI/Z-Image-Turbo"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "hub" (hub id or its local snapshot), "tiny" (built here), "local" (a directory)
    source: str  # hub id or directory; empty for tiny (the cache decides)
    description: str
    default_side: int
    needs_cuda: bool
    noise_only: bool = False  # random weights: images are noise


def builtin_models(turbo_source: str = TURBO_HUB_ID) -> dict[str, ModelSpec]:
    return {
        TURBO: ModelSpec(
            name=TURBO,
            kind="hub",
            source=turbo_source,
            description="Z-Image-Turbo (6B, bf16, 8 steps, no CFG) through diffusers",
            default_side=1024,
            needs_cuda=True,
        ),
        TINY: ModelSpec(
            name=TINY,
            kind="tiny",
            source="",
            description=(
                "tiny random-weight Z-Image pipeline built offline; runs on a CPU; "
                "its images are noise"
            ),
            default_side=256,
            needs_cuda=False,
            noise_only=True,
        ),
    }


def is_checkpoint_dir(path: Path) -> bool:
    return (path / "model_index.json").is_file()


def resolve_model(name: str, turbo_source: str = TURBO_HUB_ID) -> ModelSpec:
    """A registered name, or a local directory holding a diffusers Z-Image checkpoint."""
    known = builtin_models(turbo_source)
    if name in known:
        return known[name]
    path = Path(name).expanduser()
    if path.is_dir():
        if not is_checkpoint_dir(path):
            raise UnknownModel(
                f"{path} is a directory but holds no model_index.json; point --model at a "
                "diffusers Z-Image checkpoint directory"
            )
        return ModelSpec(
            name=path.resolve().name,
            kind="local",
            source=str(path.resolve()),
            description=f"local diffusers checkpoint at {path.resolve()}",
            default_side=1024,
            needs_cuda=False,
        )
    raise UnknownModel(
        f"unknown model {name!r}; choose one of {', '.join(known)} or a local checkpoint directory"
    )


def default_model_name(cuda_available: bool) -> str:
    return TURBO if cuda_available else TINY


def availability(spec: ModelSpec, cuda_available: bool) -> tuple[bool, str]:
    """Whether the model can run here, and a sentence saying why or why not."""
    if spec.needs_cuda and not cuda_available:
        return False, "needs a CUDA GPU (about 20 GiB free for bf16); none found"
    if spec.kind == "tiny":
        return True, "built offline on first use"
    if spec.kind == "local":
        return True, f"checkpoint at {spec.source}"
    if Path(spec.source).expanduser().is_dir():
        return True, f"checkpoint at {spec.source}"
    if _in_hub_cache(spec.source):
        return True, "weights in the Hugging Face cache"
    return True, "weights will be downloaded from the hub on first load (about 33 GB)"


def require_available(spec: ModelSpec, cuda_available: bool) -> None:
    ok, why = availability(spec, cuda_available)
    if not ok:
        raise ModelUnavailable(f"model {spec.name} cannot run here: {why}")


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo_id, "model_index.json")
    return isinstance(found, str)
