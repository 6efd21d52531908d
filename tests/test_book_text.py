"""The book stands alone: its text never points at source material a reader does not have.

The course grew out of a series of lectures, but the book is read without them, so no chapter,
solution, exercise or book page may say "the lecture", "the slide(s)", "the deck" (or "the
lecture's", "lectures'", …): each such sentence either cites the paper or says the thing itself.
Reads the sources only (no execution), so it runs in ``make test-lib``.

    .venv/bin/python -m pytest -q tests/test_book_text.py
"""

from __future__ import annotations

import json
import re

import pytest

from helpers import ROOT

# "the lecture(s)/slide(s)/deck(s)", any possessive ("lecture's", "lectures'", "deck's"), "slides",
# "lecture slide". Not matched: "slider" (the widgets), "four lectures" (the intro's history).
BANNED = re.compile(
    r"\bthe\s+(?:lectures?|slides?|decks?)\b"
    r"|\b(?:lectures?|slides?|decks?)'"
    r"|\bslides\b"
    r"|\blecture\s+slides?\b",
    re.IGNORECASE,
)

NOTEBOOK_DIRS = ("notebooks", "solutions", "exercises")


def _texts() -> list[tuple[str, str]]:
    """(location, text) for every cell source of every notebook and every book page."""
    out = []
    for folder in NOTEBOOK_DIRS:
        for path in sorted((ROOT / folder).glob("*.ipynb")):
            cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
            for i, cell in enumerate(cells):
                source = cell["source"]
                out.append((f"{folder}/{path.name} [cell {i}]",
                            "".join(source) if isinstance(source, list) else source))
    for path in sorted((ROOT / "book").rglob("*.md")):
        if path.is_file():
            out.append((str(path.relative_to(ROOT)), path.read_text(encoding="utf-8")))
    return out


def offending(text: str) -> list[str]:
    """The banned phrases in ``text``, each with some context."""
    return [text[max(0, m.start() - 40):m.end() + 40].replace("\n", " ") for m in BANNED.finditer(text)]


@pytest.mark.parametrize("phrase", [
    "as the lecture shows", "The lecture's example", "in the lectures' words", "The slide states",
    "see the slides", "written on slides", "the deck writes", "the deck's typo", "The lecture slide says",
])
def test_the_pattern_catches_pointers_to_the_lectures(phrase):
    assert offending(phrase), f"BANNED misses {phrase!r}"


@pytest.mark.parametrize("phrase", [
    "Move the slider", "widgets.FloatLogSlider(", "the course grew out of four lectures on",
])
def test_the_pattern_leaves_ordinary_words_alone(phrase):
    assert not offending(phrase), f"BANNED wrongly matches {phrase!r}"


def test_there_is_text_to_read():
    locations = {loc.split(" ")[0] for loc, _ in _texts()}
    for folder in NOTEBOOK_DIRS:
        assert any(loc.startswith(folder + "/") for loc in locations), f"no notebooks read in {folder}/"
    assert "book/intro.md" in locations


def test_the_book_never_points_at_the_lectures():
    hits = [f"{loc}: …{snippet}…" for loc, text in _texts() for snippet in offending(text)]
    assert not hits, ("the book is read without the source lectures; say the thing or cite the paper "
                      "instead of pointing at a lecture/slide/deck:\n" + "\n".join(hits))


def test_the_intro_says_what_the_course_grew_out_of():
    intro = (ROOT / "book" / "intro.md").read_text(encoding="utf-8")
    assert re.search(r"grew out of", intro), "book/intro.md should say in one paragraph what the course grew out of"
