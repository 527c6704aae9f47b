"""Fixtures: a fake pynvml installed in sys.modules, and a PATH without nvidia-smi."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from . import fake_pynvml
from .fake_pynvml import FakeDevice, FakeNvml


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNvml]:
    """One fake H100; ``import pynvml`` inside steadygen now gets the fake.

    Change ``fake_nvml.devices`` (or call ``fake_nvml.devices[0].update(...)``) between reads.
    """
    state = fake_pynvml.install(FakeNvml(devices=[FakeDevice()]))
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml)
    yield state
    fake_pynvml.install(FakeNvml())


@pytest.fixture
def no_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An empty PATH, so the nvidia-smi fallback is not found."""
    monkeypatch.setenv("PATH", str(tmp_path))
