"""CPU contention at several machine shapes, with real processes on this machine, scored
against scenarios the attribution was not tuned on (steadygen/bench/shapes.py):

- our server pinned to one CPU with burners on that CPU (contention: named, burner named),
- pinned to one CPU with burners on the other CPU (the burners can never be blamed: they
  cannot run on our CPU),
- burners scaled to the CPUs our process may use,
- burners started outside our process tree and session, in their own scheduling groups.

How it holds on a busy shared machine: each shape gets a fresh server whose baseline (and
CPU calibration) comes from its own clean runs in that shape; clean and interfered blocks of
two jobs alternate, so the background load drifts alike over both; interfered blocks whose
burners did not report a heartbeat all through are left out rather than scored.

Marked slow (about two minutes, and run with ``-m slow``): on a 2-core machine shared with
other heavy work, a burst of that work during a shape's warm-up sets its calibration's bar
too high (or one arriving later pushes clean runs past it), and then a shape misses the
0.95 bar; the figures measured so far, good and bad, are in docs/benchmarks.md
("Attribution accuracy") with their raw JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from steadygen.bench.runner import InProcessTarget
from steadygen.bench.shapes import ShapeResult, run_shape, shapes_for_this_machine
from steadygen.config import load_settings

pytestmark = pytest.mark.slow

SHAPES = {s.name: s for s in shapes_for_this_machine(seconds=300)}
CONTENDED = [n for n, s in SHAPES.items() if s.contended]
MIN_VALID_INTERFERED = 4  # fewer scored interfered jobs than this: the shape is not tested


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path,
            cache_dir: Path) -> dict[str, ShapeResult]:
    data = tmp_path_factory.mktemp("attribution-shapes")

    def make_target(data_dir: Path) -> Any:
        return InProcessTarget(load_settings(data_dir=data_dir, cache_dir=cache_dir,
                                             model="zimage-tiny", device="cpu", sampler_hz=20))

    return {name: run_shape(shape, make_target, data, warm_jobs=10, blocks=8, block=2)
            for name, shape in SHAPES.items()}


def detail(r: ShapeResult) -> list[Any]:
    return [(j.interfered, j.valid, j.named, round(j.total_s, 2),
             j.wait_per_cpu and round(j.wait_per_cpu, 2), j.limit and round(j.limit, 2))
            for j in r.jobs] + r.invalid_blocks


@pytest.mark.parametrize("name", CONTENDED)
def test_contention_is_named_with_precision_and_recall_of_95_percent(
    results: dict[str, ShapeResult], name: str, record_property: Any
) -> None:
    r = results[name]
    score = r.score()
    record_property(f"{name}_score", score)
    print(f"\n{name}: {score}")
    assert score["tp"] + score["fn"] >= MIN_VALID_INTERFERED, detail(r)
    assert score["precision"] is not None and score["precision"] >= 0.95, detail(r)
    assert score["recall"] is not None and score["recall"] >= 0.95, detail(r)


@pytest.mark.parametrize("name", CONTENDED)
def test_the_burners_are_named_and_the_calibration_is_stated(
    results: dict[str, ShapeResult], name: str
) -> None:
    r = results[name]
    found = [j for j in r.jobs if j.valid and j.interfered and j.named]
    assert found
    assert sum(j.burner_named for j in found) >= 0.9 * len(found), [
        j.evidence for j in found]
    for j in found:
        assert "calibrated on" in j.evidence and "clean runs of this machine" in j.evidence
        assert j.wait_per_cpu is not None and j.limit is not None
        assert j.wait_per_cpu > j.limit


@pytest.mark.skipif("pinned-other-cpu" not in SHAPES, reason="needs two CPUs")
def test_burners_on_another_cpu_are_never_blamed(results: dict[str, ShapeResult]) -> None:
    r = results["pinned-other-cpu"]
    assert not any(j.burner_named for j in r.jobs), detail(r)
    clean = [j for j in r.jobs if not j.interfered]
    assert sum(j.named for j in clean) <= 0.05 * len(clean), detail(r)
