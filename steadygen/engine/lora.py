"""LoRA adapters: loaded once from ``lora_dir``, kept (a bounded LRU), switched per request.

``AdapterCache.apply(pipe, loras)`` makes exactly the request's adapters active with their
weights and returns the seconds it took: 0 when the active set is unchanged, the load time of
a new file plus the switch otherwise. The engine books it as ``Timings.adapter_s``, the
"adapter switch" of a diagnosis. The adapters live in the transformer, which every mode's
pipeline shares, so one switch serves txt2img, img2img, inpaint and ControlNet alike.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

from steadygen.editing import LoraSpec, lora_path
from steadygen.errors import GenerationError

log = logging.getLogger("steadygen.engine")


def adapter_id(name: str) -> str:
    """PEFT adapter names become module keys and may not hold dots or spaces."""
    return "lora_" + hashlib.sha1(name.encode()).hexdigest()[:12]


class AdapterCache:
    """Which adapters are loaded into the transformer and which are active."""

    def __init__(self, lora_dir: Path | None, capacity: int = 8):
        self.lora_dir = Path(lora_dir) if lora_dir is not None else None
        self.capacity = max(1, capacity)
        self._loaded: OrderedDict[str, str] = OrderedDict()  # name -> adapter id, LRU first
        self._active: tuple[LoraSpec, ...] | None = ()  # None: unknown, set it again
        self.lock = threading.Lock()  # engines forked on the same weights share this cache
        self.shared = False  # set when a second engine shares the weights (Engine.fork)
        self.run_lock = threading.Lock()  # then one generation at a time (EditState.exclusive)
        self.loads = 0  # files read so far (tests and the page's "cached" mark)

    @property
    def loaded(self) -> list[str]:
        return list(self._loaded)

    @property
    def active(self) -> tuple[LoraSpec, ...]:
        return self._active or ()

    def apply(self, pipe: Any, loras: tuple[LoraSpec, ...]) -> float:
        """Activate exactly ``loras`` on ``pipe``; seconds spent (0 when already so)."""
        with self.lock:
            if tuple(loras) == self._active:
                return 0.0
            t0 = time.monotonic()
            try:
                for spec in loras:
                    self._ensure_loaded(pipe, spec.name, keep={s.name for s in loras})
                if loras:
                    pipe.enable_lora()
                    pipe.set_adapters([self._loaded[s.name] for s in loras],
                                      [s.weight for s in loras])
                elif self._active != ():
                    pipe.disable_lora()
            except BaseException:
                self._active = None
                raise
            self._active = tuple(loras)
            return time.monotonic() - t0

    def _ensure_loaded(self, pipe: Any, name: str, keep: set[str]) -> None:
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return
        if self.lora_dir is None:
            raise GenerationError(f"LoRA {name!r} was asked for but no lora_dir is configured")
        path = lora_path(self.lora_dir, name)
        while len(self._loaded) >= self.capacity:
            old = next((n for n in self._loaded if n not in keep), None)
            if old is None:
                break
            pipe.delete_adapters(self._loaded.pop(old))
            log.info("LoRA %s unloaded (cache of %d full)", old, self.capacity)
        ident = adapter_id(name)
        try:
            with warnings.catch_warnings():  # several adapters at once is what we intend
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                pipe.load_lora_weights(str(path), adapter_name=ident)
        except FileNotFoundError:
            raise GenerationError(f"LoRA file {path} is gone from lora_dir") from None
        except ImportError:
            raise
        except Exception as exc:  # a state dict for another model: shapes or keys differ
            self._forget(pipe, ident)
            reason = str(exc).strip().splitlines()
            raise GenerationError(
                f"LoRA {path.name} does not fit this model ({type(exc).__name__}: "
                f"{' '.join(reason[:3])[:300]}); use a LoRA trained for Z-Image"
            ) from None
        self._loaded[name] = ident
        self._active = None  # loading activates the new adapter: the set must be set again
        self.loads += 1
        log.info("LoRA %s loaded from %s", name, path)

    @staticmethod
    def _forget(pipe: Any, ident: str) -> None:
        if ident in getattr(pipe.transformer, "peft_config", {}):
            try:
                pipe.delete_adapters(ident)
            except Exception:  # best effort: the half-loaded adapter is never activated
                log.debug("could not remove the failed adapter %s", ident, exc_info=True)
