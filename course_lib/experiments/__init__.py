"""Experiments that take longer than a chapter's time budget, run as commands.

Each module is runnable with ``python -m course_lib.experiments.<name>`` (``--help`` lists its
options), saves its numbers, the exact command, the settings, the torch version, the machine and
the wall time to ``course_lib/experiments/results/<name>.json`` (and a figure next to it), and
offers a ``--quick`` mode with tiny sizes that the tests and the chapters run.

* ``extrapolation`` — Chapter 6: small decoders that differ only in the position scheme, trained
  at one context length and evaluated at 1×, 2×, 4×, 8× that length; then RoPE extended by
  position interpolation vs plain extension.
* ``pretraining`` — Chapter 14, four commands (``finetune``, ``bert``, ``roberta``, ``icl``) writing
  ``results/pretraining_<command>.{json,png}``: a pre-trained decoder fine-tuned vs one trained from
  scratch against the number of labels (L1 score, linear probe, L2, L3); a small BERT pre-trained
  with MLM + NSP, and with MLM only; in-context learning of random functions, accuracy against k.
* ``seq2seq`` — Chapter 2: a small encoder–decoder of ``course_lib.mha`` layers trained to reverse
  (or copy) random sequences; saves a fp16 checkpoint (``checkpoints/ch02_reverse.pt``) and its
  evaluation: exact match, and how often each cross-attention head looks at source position T−1−i.
* ``gqa_uptraining`` — Chapter 4: the Chapter 4 checkpoint mean-pooled to 2 and 1 K/V heads, then
  uptrained for 5% of its original steps (Ainslie et al., 2023), with an MHA control.
"""

from __future__ import annotations

import platform
import time

import torch

from course_lib.utils import load_average, machine_description

__all__ = ["command_line", "run_meta"]


def command_line(module: str, argv) -> str:
    """The command that reproduces a run: ``python -m course_lib.experiments.<module> <argv…>``."""
    return f"python -m course_lib.experiments.{module}" + (" " + " ".join(argv) if argv else "")


def run_meta(started: float, device="cpu", command: str | None = None, **extra) -> dict:
    """What every saved result says of its run: the command, torch and Python, the machine, the wall time
    since ``started`` (``time.perf_counter()``), the date and the load average (other programs slow a run
    down); ``extra`` adds an experiment's own fields."""
    return {"command": command, "torch": torch.__version__, "python": platform.python_version(),
            "machine": machine_description(device), "wall_seconds": round(time.perf_counter() - started, 1),
            "date": time.strftime("%Y-%m-%d"), "load_average": load_average(), **extra}
