"""Helpers the tests import: the repository root, the notebook lists, the toc walker, the exercise stub,
the refused-library assertion."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TOC = ROOT / "_toc.yml"
SOURCE_SUFFIXES = (".ipynb", ".md")


def notebooks(folder: str) -> list[Path]:
    """The chapter notebooks ``NN_topic.ipynb`` of ``folder`` (notebooks, solutions, exercises)."""
    return sorted((ROOT / folder).glob("[0-9][0-9]_*.ipynb"))


def stub(*args, **kwargs):
    """An unfilled exercise answer, as the generated exercise has it."""
    raise NotImplementedError("fill in this answer")


def toc_files(toc_path: Path = TOC) -> list[str]:
    """Every ``file`` of a jb-book ``_toc.yml``, root first, in reading order."""
    toc = yaml.safe_load(toc_path.read_text(encoding="utf-8"))
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            for key in ("parts", "chapters", "sections"):
                walk(entry.get(key))

    walk(toc.get("parts"))
    walk(toc.get("chapters"))
    return [str(Path(f).with_suffix("")) if Path(f).suffix in SOURCE_SUFFIXES else f for f in files]


def refused_then_passes(check, answer, module, monkeypatch) -> None:
    """``answer`` calls the library ``check`` compares with: it fails with the refusal, and passes once
    ``module``'s refusal is lifted — so the refusal, nothing else, is what fails it."""
    import pytest

    from course_lib.grading.forbid import call_allowing_library

    with pytest.raises(AssertionError, match="the library .* does the work here"):
        check(answer)
    monkeypatch.setattr(module, "call_without_library", call_allowing_library)
    check(answer)
