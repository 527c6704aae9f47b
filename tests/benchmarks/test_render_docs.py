"""Every figure in docs/ comes from a raw output file in the repository, and
benchmarks/render_docs.py reproduces the committed Markdown from those files.

A figure region (``<!-- figures:NAME -->`` ... ``<!-- /figures -->``) whose file is missing
fails here, naming the command that makes it: ``benchmarks/run_all.sh``.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC_FILES = sorted((REPO / "docs").glob("*.md"))
# Where a path such as docs/figures/<name>.json may be named: the docs, code, tests, scripts.
SCANNED = ("docs", "benchmarks", "tests", "deploy", "scripts", "steadygen", "README.md")
TEXT_SUFFIXES = {".md", ".py", ".sh", ".yaml", ".yml", ".toml", ".txt", ".html", ""}
REFERENCE = re.compile(r"\bdocs/[A-Za-z0-9_./-]+\.(?:json|md|png|html)\b")


def load_render_docs() -> ModuleType:
    path = REPO / "benchmarks" / "render_docs.py"
    spec = importlib.util.spec_from_file_location("steadygen_render_docs", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


render_docs = load_render_docs()


def test_docs_have_figure_regions_and_each_is_known() -> None:
    names = [n for path in DOC_FILES for n in render_docs.regions(path.read_text())]
    assert "eta_accuracy" in names and "soak" in names, names
    assert len(names) == len(set(names)), "a figure region appears twice"
    assert set(names) <= set(render_docs.figures()), sorted(set(names) - set(render_docs.figures()))


@pytest.mark.parametrize("doc", DOC_FILES, ids=[p.name for p in DOC_FILES])
def test_every_figure_region_has_its_raw_output(doc: Path) -> None:
    known = render_docs.figures()
    missing = [f"{name}: {known[name].source.relative_to(REPO)}"
               for name in render_docs.regions(doc.read_text())
               if not known[name].source.is_file()]
    assert not missing, (
        f"{doc.name} quotes figures whose raw output is not in the repository: "
        f"{'; '.join(missing)}. Run benchmarks/run_all.sh (every CPU benchmark, then "
        "benchmarks/render_docs.py) and commit docs/figures/."
    )


@pytest.mark.parametrize("doc", DOC_FILES, ids=[p.name for p in DOC_FILES])
def test_rendering_the_committed_figures_changes_nothing(doc: Path) -> None:
    text = doc.read_text()
    once, _ = render_docs.render_text(text, render_docs.figures())
    assert once == text, (f"{doc.name} differs from its figures: run "
                          "python benchmarks/render_docs.py and commit the result")
    twice, _ = render_docs.render_text(once, render_docs.figures())
    assert twice == once


def referenced_paths() -> dict[str, set[str]]:
    """docs/... file paths named anywhere in the scanned files -> the files naming them."""
    found: dict[str, set[str]] = {}
    for top in SCANNED:
        root = REPO / top
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for f in files:
            if f.suffix not in TEXT_SUFFIXES or "__pycache__" in f.parts:
                continue
            try:
                text = f.read_text()
            except UnicodeDecodeError:
                continue
            for ref in REFERENCE.findall(text):
                found.setdefault(ref, set()).add(str(f.relative_to(REPO)))
    return found


def test_every_docs_file_named_anywhere_exists() -> None:
    refs = referenced_paths()
    assert "docs/figures/eta_accuracy.json" in refs  # the scan sees the benchmarks' docstrings
    missing = {ref: sorted(by) for ref, by in refs.items() if not (REPO / ref).is_file()}
    assert not missing, (f"files named but not in the repository: {missing}; the "
                         "docs/figures/ ones are made by benchmarks/run_all.sh")


# The mechanism itself, on made-up figures in a temporary directory.

def fake_figure(tmp_path: Path, payload: dict[str, Any] | None) -> Any:
    source = tmp_path / "fake.json"
    if payload is not None:
        source.write_text(json.dumps(payload))
    return render_docs.Figure(source, lambda d: f"value {d['value']}\n", "make-fake")


def test_a_region_is_replaced_and_the_prose_kept(tmp_path: Path) -> None:
    known = {"fake": fake_figure(tmp_path, {"value": 7})}
    text = "Prose 1.\n\n<!-- figures:fake -->\nold 3\n<!-- /figures -->\n\nProse 2.\n"
    new, missing = render_docs.render_text(text, known)
    assert missing == []
    assert new == "Prose 1.\n\n<!-- figures:fake -->\nvalue 7\n<!-- /figures -->\n\nProse 2.\n"
    assert render_docs.render_text(new, known) == (new, [])


def test_a_missing_source_is_named_and_its_region_left_alone(tmp_path: Path) -> None:
    known = {"fake": fake_figure(tmp_path, None)}
    text = "<!-- figures:fake -->\nold 3\n<!-- /figures -->\n"
    new, missing = render_docs.render_text(text, known)
    assert new == text
    assert len(missing) == 1 and "fake.json" in missing[0] and "make-fake" in missing[0]


def test_an_unknown_region_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(render_docs.MissingFigure, match="nosuch"):
        render_docs.render_text("<!-- figures:nosuch -->\n<!-- /figures -->\n",
                                {"fake": fake_figure(tmp_path, {"value": 1})})
