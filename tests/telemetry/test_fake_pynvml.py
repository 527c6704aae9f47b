"""The fake pynvml must not drift from the real one: same names, same constant values."""

from __future__ import annotations

import pynvml
import pytest

from . import fake_pynvml

PREFIXES = ("nvml", "NVML", "c_nvml")


def _public_names() -> list[str]:
    return [n for n in vars(fake_pynvml) if n.startswith(PREFIXES)]


def test_fake_pynvml_matches_real() -> None:
    missing = [n for n in _public_names() if not hasattr(pynvml, n)]
    assert missing == [], f"the fake defines names the real pynvml lacks: {missing}"


@pytest.mark.parametrize(
    "name", [n for n in _public_names() if isinstance(getattr(fake_pynvml, n), int)]
)
def test_fake_constants_have_real_values(name: str) -> None:
    assert getattr(fake_pynvml, name) == getattr(pynvml, name)


def test_fake_errors_derive_like_real() -> None:
    for cls in ("NVMLError_NotSupported", "NVMLError_LibraryNotFound", "NVMLError_NotFound"):
        assert issubclass(getattr(pynvml, cls), pynvml.NVMLError)
        assert issubclass(getattr(fake_pynvml, cls), fake_pynvml.NVMLError)
    err = fake_pynvml.NVMLError(fake_pynvml.NVML_ERROR_NOT_SUPPORTED)
    assert type(err) is fake_pynvml.NVMLError_NotSupported
    real = pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
    assert type(real).__name__ == type(err).__name__
    assert fake_pynvml.NVMLError_LibraryNotFound().value == pynvml.NVML_ERROR_LIBRARY_NOT_FOUND


def test_fake_struct_fields_match_real() -> None:
    for name in (
        "c_nvmlUtilization_t",
        "c_nvmlMemory_t",
        "c_nvmlFieldValue_t",
        "c_nvmlProcessUtilizationSample_t",
    ):
        fake_fields = [f[0] for f in getattr(fake_pynvml, name)._fields_]
        real_fields = [f[0] for f in getattr(pynvml, name)._fields_]
        assert fake_fields == real_fields, name
