"""A text corpus that needs no download, a character-level tokenizer, and a batch sampler.

**Corpus.** Python's own standard library, as source text: the files of :data:`STDLIB_FILES`
(about 1 MB of code, comments and docstrings), read from ``sysconfig.get_paths()["stdlib"]`` in
this fixed order and joined with a blank line. It is the same text on every machine with the
same Python version (the sources change a little between versions: :func:`corpus_fingerprint`
tells two corpora apart). A file missing from a trimmed installation is skipped and
left out of ``CharCorpus.files``.

**Tokenizer.** :class:`CharTokenizer` maps characters to ids: ``<pad>`` = 0, ``<unk>`` = 1,
then every character that occurs at least ``min_count`` times in the text, sorted by code
point — a deterministic vocabulary. A character outside it encodes to ``<unk>``.

**Splits and batches.** The first ``1 − val_fraction`` of the token stream is the training
split, the rest the validation split (contiguous, so validation text is unseen text). A batch
is ``batch_size`` windows of ``seq_len + 1`` tokens at random offsets, drawn from a seeded
``torch.Generator``: inputs ``x = w[:-1]``, targets ``y = w[1:]``.
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections import Counter
from pathlib import Path

import torch

__all__ = [
    "STDLIB_FILES",
    "PAD",
    "UNK",
    "load_stdlib_text",
    "corpus_fingerprint",
    "CharTokenizer",
    "CharCorpus",
]

# Pure-Python modules present in CPython 3.10 – 3.13, in a fixed order.
STDLIB_FILES = (
    "abc.py", "argparse.py", "ast.py", "base64.py", "bisect.py", "calendar.py",
    "collections/__init__.py", "colorsys.py", "contextlib.py", "copy.py", "csv.py",
    "dataclasses.py", "difflib.py", "enum.py", "fnmatch.py", "fractions.py", "functools.py",
    "genericpath.py", "gettext.py", "glob.py", "heapq.py", "hmac.py", "json/decoder.py",
    "json/encoder.py", "keyword.py", "linecache.py", "numbers.py", "operator.py", "pprint.py",
    "queue.py", "random.py", "shlex.py", "shutil.py", "statistics.py", "string.py",
    "textwrap.py", "tokenize.py", "types.py", "weakref.py",
)

PAD, UNK = "<pad>", "<unk>"


def load_stdlib_text(files=STDLIB_FILES, root: str | Path | None = None) -> tuple[str, list[str]]:
    """The corpus text and the list of files it was read from (missing files are skipped)."""
    root = Path(sysconfig.get_paths()["stdlib"] if root is None else root)
    parts, used = [], []
    for name in files:
        path = root / name
        if path.is_file():
            parts.append(path.read_text(encoding="utf-8"))
            used.append(name)
    if not parts:
        raise ValueError(f"root: expected the standard library's sources under {root}; found none of STDLIB_FILES")
    return "\n\n".join(parts), used


def corpus_fingerprint(text: str) -> str:
    """The first 12 hex digits of the SHA-256 of the text (same text ⇔ same fingerprint)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


class CharTokenizer:
    """Characters ↔ ids. ``<pad>`` = 0, ``<unk>`` = 1, then the characters in code-point order."""

    def __init__(self, chars):
        chars = list(chars)
        if len(set(chars)) != len(chars) or any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise ValueError("chars: expected distinct single characters")
        self.itos = [PAD, UNK] + sorted(chars)
        self.stoi = {c: i for i, c in enumerate(self.itos) if i >= 2}
        self.pad_id, self.unk_id = 0, 1

    @classmethod
    def from_text(cls, text: str, min_count: int = 1) -> "CharTokenizer":
        """The vocabulary of ``text``: characters seen at least ``min_count`` times."""
        if not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count: expected a positive int; got {min_count!r}")
        counts = Counter(text)
        return cls(c for c, n in counts.items() if n >= min_count)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of ``text`` (``unk_id`` for a character outside the vocabulary)."""
        get, unk = self.stoi.get, self.unk_id
        return [get(c, unk) for c in text]

    def decode(self, ids) -> str:
        """Text of ``ids`` (list or 1-D tensor); ``<pad>`` is dropped, ``<unk>`` shows as ``�``."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        out = []
        for i in ids:
            if not 0 <= i < len(self.itos):
                raise ValueError(f"ids: expected ids in [0, {len(self.itos)}); got {i}")
            if i == self.pad_id:
                continue
            out.append("\ufffd" if i == self.unk_id else self.itos[i])
        return "".join(out)

    def state_dict(self) -> dict:
        return {"chars": self.itos[2:]}

    @classmethod
    def from_state_dict(cls, state: dict) -> "CharTokenizer":
        return cls(state["chars"])


class CharCorpus:
    """Tokenized text with a train/validation split and a seeded batch sampler.

    Attributes:
        text, files, tokenizer; ``train`` and ``val``: 1-D ``torch.long`` token streams.
    """

    def __init__(self, text: str | None = None, *, tokenizer: CharTokenizer | None = None,
                 val_fraction: float = 0.1, min_count: int = 1, files: list[str] | None = None):
        if text is None:
            text, files = load_stdlib_text()
        if not (0.0 < val_fraction < 1.0):
            raise ValueError(f"val_fraction: expected a number in (0, 1); got {val_fraction!r}")
        self.text, self.files = text, files or []
        self.tokenizer = tokenizer or CharTokenizer.from_text(text, min_count=min_count)
        ids = torch.tensor(self.tokenizer.encode(text), dtype=torch.long)
        n_val = max(2, int(len(ids) * val_fraction))
        if len(ids) - n_val < 2:
            raise ValueError(f"text: expected enough text for two splits; got {len(ids)} characters")
        self.train, self.val = ids[:-n_val], ids[-n_val:]

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def fingerprint(self) -> str:
        return corpus_fingerprint(self.text)

    def split(self, name: str) -> torch.Tensor:
        if name not in ("train", "val"):
            raise ValueError(f"split: expected 'train' or 'val'; got {name!r}")
        return self.train if name == "train" else self.val

    def get_batch(self, split: str, batch_size: int, seq_len: int, generator: torch.Generator | None = None,
                  device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``, both ``[batch_size, seq_len]``: random windows, ``y`` shifted by one token."""
        data = self.split(split)
        for name, v in (("batch_size", batch_size), ("seq_len", seq_len)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int; got {v!r}")
        if seq_len + 1 > len(data):
            raise ValueError(f"seq_len: expected at most {len(data) - 1} for the {split} split; got {seq_len}")
        starts = torch.randint(len(data) - seq_len, (batch_size,), generator=generator)
        windows = torch.stack([data[s:s + seq_len + 1] for s in starts.tolist()])
        return windows[:, :-1].to(device), windows[:, 1:].to(device)

    def sequential_batches(self, split: str, batch_size: int, seq_len: int, max_batches: int | None = None):
        """Non-overlapping windows in order (deterministic evaluation): yields ``(x, y)``."""
        data = self.split(split)
        n = (len(data) - 1) // seq_len
        x = data[: n * seq_len].view(n, seq_len)
        y = data[1: n * seq_len + 1].view(n, seq_len)
        for i, start in enumerate(range(0, n, batch_size)):
            if max_batches is not None and i >= max_batches:
                return
            yield x[start:start + batch_size], y[start:start + batch_size]
