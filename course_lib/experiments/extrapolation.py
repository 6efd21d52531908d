"""Length extrapolation: train at one context length, evaluate at 1×, 2×, 4×, 8× (Chapter 6).

Small decoders (``course_lib.model.DecoderLM``) that differ **only** in ``pos_encoding`` are
trained with the same data, seed, steps and optimiser (``course_lib.train``) on the character
corpus of ``course_lib.data`` at context length ``L = --train-len``, then evaluated on held-out
text in windows of ``L, 2L, 4L, 8L`` tokens (``window_starts``: the same target tokens at every
length, cut into windows of different sizes). The question is the one of the ALiBi paper: does
the loss stay flat when the window is longer than anything seen in training?

Then the RoPE model is extended to ``L' = ft_factor · L`` in four ways:

* nothing (plain extrapolation);
* NTK-aware base scaling, no training (``base · s^(d/(d−2))``);
* fine-tuned for ``--ft-steps`` steps at length L' with the positions as they are
  ("FT" in Chen et al., 2023);
* fine-tuned for the same steps at L' with position interpolation (positions divided by
  s = L'/L, "PI").

The learned table is sized for the longest evaluation window (``max_seq_len = 8L``) but only
its first L rows are ever trained: the rows past L keep their random initialisation (and the
weight decay of AdamW shrinks them), which is exactly the learned scheme's problem. It is
evaluated like the others, not left out.

Run the full version (minutes on a laptop CPU)::

    python -m course_lib.experiments.extrapolation            # writes results/extrapolation.{json,png}
    python -m course_lib.experiments.extrapolation --quick --out /tmp/x   # tiny, seconds

The saved JSON holds the numbers, the exact command, the settings, the torch version, the
machine and the wall time; Chapter 6 loads and shows it.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from course_lib.data import CharCorpus
from course_lib.model import DecoderLM, ModelConfig
from course_lib.train import train
from course_lib.experiments import command_line, run_meta
from course_lib.utils import default_device, set_seed

try:  # a progress bar when tqdm is installed (it is in requirements.txt), plain prints otherwise
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None

__all__ = ["Settings", "QUICK", "RESULTS_DIR", "run", "window_starts", "position_losses", "plot_results", "load_results",
           "table", "main"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCHEMES = ("none", "sinusoidal", "learned", "relative", "rope", "alibi")
EXTENSIONS = ("RoPE, as trained", "RoPE + NTK base (no training)", "RoPE fine-tuned at L' (FT)",
              "RoPE fine-tuned at L' with PI")


@dataclass
class Settings:
    """Everything that defines a run (saved with the results)."""

    train_len: int = 64
    factors: tuple[int, ...] = (1, 2, 4, 8)
    schemes: tuple[str, ...] = ("none", "sinusoidal", "learned", "relative", "rope", "alibi")
    steps: int = 1000
    batch_size: int = 16
    lr: float = 3e-3
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    rel_max_distance: int = 16
    ft_factor: int = 4
    ft_steps: int = 150
    eval_tokens: int = 16384
    seed: int = 0
    threads: int = 1
    quick: bool = False

    @property
    def max_len(self) -> int:
        return self.train_len * max(self.factors)


# tiny sizes for tests and the chapter's in-notebook version
QUICK = Settings(train_len=16, schemes=("learned", "rope", "alibi"), steps=250, batch_size=16, lr=1e-2,
                 d_model=32, n_layers=2, n_heads=4, ft_steps=30, eval_tokens=1024, quick=True)


# ----------------------------------------------------------------------------- pieces
def _progress(iterable, total, desc, enabled):
    if enabled and tqdm is not None:
        return tqdm(iterable, total=total, desc=desc, leave=False)
    return iterable


def _train(model, corpus, steps, batch_size, seq_len, lr, seed, progress):
    return train(model, corpus, steps, batch_size, seq_len, lr, seed=seed, progress=progress)


def _config(s: Settings, vocab_size: int, pos_encoding: str, **kw) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, d_model=s.d_model, n_layers=s.n_layers, n_heads=s.n_heads,
                       max_seq_len=s.max_len, pos_encoding=pos_encoding, dropout=0.0, **kw)


def window_starts(n_tokens: int, span: int, n_spans: int, length: int) -> list[int]:
    """Start offsets of the evaluation windows of ``length`` tokens.

    ``n_spans`` spans of ``span`` tokens at evenly spaced offsets of the held-out text, each cut
    into ``span // length`` consecutive windows: every evaluation length scores **the same
    target tokens**; only how much context precedes each one differs.
    """
    if span % length:
        raise ValueError(f"length: expected a divisor of span = {span}; got {length}")
    last = n_tokens - span - 1
    if last < 0:
        raise ValueError(f"ids: expected more than span + 1 = {span + 1} tokens; got {n_tokens}")
    firsts = torch.linspace(0, last, n_spans).long().tolist()
    return [f + j * length for f in firsts for j in range(span // length)]


@torch.inference_mode()
def position_losses(model: DecoderLM, ids: torch.Tensor, length: int, starts: list[int], *,
                    batch_size: int = 8) -> torch.Tensor:
    """``[length]`` mean next-token loss at each position of the windows ``ids[s : s + length + 1]``."""
    model.eval()
    device = next(model.parameters()).device
    if not starts or max(starts) + length + 1 > ids.numel():
        raise ValueError(f"ids: expected at least {max(starts or [0]) + length + 1} tokens for these windows; got {ids.numel()}")
    total = torch.zeros(length, dtype=torch.float64)
    for i in range(0, len(starts), batch_size):
        chunk = torch.stack([ids[s:s + length + 1] for s in starts[i:i + batch_size]]).to(device)
        logits = model(chunk[:, :-1])
        loss = F.cross_entropy(logits.transpose(1, 2).float(), chunk[:, 1:], reduction="none")  # [b, length]
        total += loss.sum(0).double().cpu()
    return total / len(starts)


def _evaluate(model, val_ids, s: Settings, lengths) -> dict:
    out = {"loss": {}, "tail_loss": {}}
    span = max(lengths)
    n_spans = max(2, s.eval_tokens // span)
    for length in lengths:
        per_pos = position_losses(model, val_ids, length, window_starts(val_ids.numel(), span, n_spans, length))
        out["loss"][str(length)] = round(per_pos.mean().item(), 4)
        tail = per_pos[s.train_len:] if length > s.train_len else per_pos
        out["tail_loss"][str(length)] = round(tail.mean().item(), 4)
        if length == span:
            # per-position curve at the longest length, averaged in bins of L/8 positions
            b = max(1, s.train_len // 8)
            out["per_position"] = [round(v, 4) for v in per_pos.view(-1, b).mean(-1).tolist()]
            out["per_position_bin"] = b
    return out


# ----------------------------------------------------------------------------- the experiment
def run(s: Settings = Settings(), *, device=None, progress: bool = True, log=print, corpus: CharCorpus | None = None) -> dict:
    """Train and evaluate every scheme, then the RoPE extensions; return the results dict.

    ``corpus``: default ``CharCorpus()`` (the standard-library sources of ``course_lib.data``).
    """
    device = default_device() if device is None else torch.device(device)
    threads = torch.get_num_threads()
    if device.type == "cpu" and s.threads:
        # models this small gain little from intra-op threads, and on a busy machine two
        # spinning OpenMP threads per process are ~10× slower than one
        torch.set_num_threads(s.threads)
    try:
        return _run(s, device, progress, log, corpus)
    finally:
        torch.set_num_threads(threads)


def _run(s: Settings, device, progress, log, corpus) -> dict:
    t0 = time.perf_counter()
    corpus = CharCorpus() if corpus is None else corpus
    val_ids, vocab_size = corpus.val, corpus.vocab_size
    lengths = [s.train_len * f for f in s.factors]
    results = {"schemes": {}, "extension": {}, "lengths": lengths}

    models = {}
    for name in s.schemes:
        set_seed(s.seed)
        extra = {"rel_max_distance": s.rel_max_distance} if name == "relative" else {}
        model = DecoderLM(_config(s, vocab_size, name, **extra)).to(device)
        t = time.perf_counter()
        history = _train(model, corpus, s.steps, s.batch_size, s.train_len, s.lr, s.seed, progress)
        ev = _evaluate(model, val_ids, s, lengths)
        ev["final_train_loss"] = round(float(sum(history[-20:]) / len(history[-20:])), 4)
        ev["train_seconds"] = round(time.perf_counter() - t, 1)
        results["schemes"][name] = ev
        models[name] = model
        log(f"{name:>11}: " + "  ".join(f"{k}: {v:.3f}" for k, v in ev["loss"].items()))

    if "rope" in models:
        base = models["rope"]
        long_len = s.train_len * s.ft_factor
        scale = float(s.ft_factor)
        ext_lengths = [s.train_len * f for f in s.factors]
        results["extension"]["long_len"] = long_len
        results["extension"]["scale"] = scale
        variants = {}
        variants[EXTENSIONS[0]] = results["schemes"]["rope"]
        ntk = DecoderLM(_config(s, vocab_size, "rope", rope_scaling=scale, rope_scaling_type="ntk")).to(device)
        ntk.load_state_dict(base.state_dict())
        variants[EXTENSIONS[1]] = _evaluate(ntk, val_ids, s, ext_lengths)
        for label, scaling in ((EXTENSIONS[2], 1.0), (EXTENSIONS[3], scale)):
            set_seed(s.seed + 1)
            m = DecoderLM(_config(s, vocab_size, "rope", rope_scaling=scaling)).to(device)
            m.load_state_dict(base.state_dict())
            _train(m, corpus, s.ft_steps, max(1, s.batch_size // s.ft_factor), long_len, s.lr / 4, s.seed + 1, progress)
            variants[label] = _evaluate(m, val_ids, s, ext_lengths)
        for label, ev in variants.items():
            results["extension"][label] = ev
            log(f"{label:>34}: " + "  ".join(f"{k}: {v:.3f}" for k, v in ev["loss"].items()))

    results["settings"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(s).items()}
    results["meta"] = run_meta(t0, device, n_parameters={name: m.num_parameters() for name, m in models.items()})
    return results


# ----------------------------------------------------------------------------- show
def load_results(path: str | Path | None = None) -> dict:
    """The saved results (default: ``course_lib/experiments/results/extrapolation.json``)."""
    path = RESULTS_DIR / "extrapolation.json" if path is None else Path(path)
    return json.loads(Path(path).read_text())


def plot_results(results: dict, axes=None, title: str | None = None):
    """Two panels: loss vs evaluation length per scheme, and the RoPE extensions. Returns the figure."""
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    else:
        fig = axes[0].figure
    L = results["settings"]["train_len"]
    for name, ev in results["schemes"].items():
        xs = [int(k) for k in ev["loss"]]
        axes[0].plot(xs, list(ev["loss"].values()), "o-", label=name)
    axes[0].axvline(L, color="gray", ls=":", lw=1)
    axes[0].set(xscale="log", xlabel="evaluation length (tokens)", ylabel="mean loss over the window (nats)",
                title=f"trained at L = {L}")
    axes[0].set_xticks(results["lengths"], [str(x) for x in results["lengths"]])
    axes[0].legend(fontsize=8)
    ext = results.get("extension", {})
    for label in EXTENSIONS:
        if label in ext:
            ev = ext[label]
            axes[1].plot([int(k) for k in ev["loss"]], list(ev["loss"].values()), "o-", label=label)
    if ext:
        axes[1].axvline(L, color="gray", ls=":", lw=1)
        axes[1].axvline(ext["long_len"], color="gray", ls="--", lw=1)
        axes[1].set(xscale="log", xlabel="evaluation length (tokens)",
                    title=f"RoPE extended from L = {L} to L' = {ext['long_len']}")
        axes[1].set_xticks(results["lengths"], [str(x) for x in results["lengths"]])
        axes[1].legend(fontsize=8)
    for ax in axes:
        ax.minorticks_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def table(results: dict, key: str = "loss") -> str:
    """A plain-text table of ``results[...][key]`` (mean loss per evaluation length)."""
    rows = list(results["schemes"].items()) + [(k, v) for k, v in results.get("extension", {}).items()
                                               if isinstance(v, dict) and k != EXTENSIONS[0]]
    head = f"{'':>32}" + "".join(f"{x:>9}" for x in results["lengths"])
    lines = [head]
    for name, ev in rows:
        lines.append(f"{name:>32}" + "".join(f"{ev[key].get(str(x), math.nan):>9.3f}" for x in results["lengths"]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m course_lib.experiments.extrapolation", description=__doc__.split("\n")[0])
    d = Settings()
    parser.add_argument("--steps", type=int, default=None, help=f"training steps per model (default {d.steps}; quick {QUICK.steps})")
    parser.add_argument("--train-len", type=int, default=None, help=f"training context length L (default {d.train_len})")
    parser.add_argument("--ft-steps", type=int, default=None, help=f"fine-tuning steps at L' (default {d.ft_steps})")
    parser.add_argument("--schemes", default=None, help="comma-separated pos_encodings (default: " + ",".join(d.schemes) + ")")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1; 0 = leave torch's default)")
    parser.add_argument("--quick", action="store_true", help="tiny models and few steps (seconds; a smoke test)")
    parser.add_argument("--out", default=None, help=f"output directory (default {RESULTS_DIR})")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    s = copy.deepcopy(QUICK if args.quick else d)
    if args.steps is not None:
        s.steps = args.steps
    if args.train_len is not None:
        s.train_len = args.train_len
    if args.ft_steps is not None:
        s.ft_steps = args.ft_steps
    if args.seed is not None:
        s.seed = args.seed
    if args.threads is not None:
        s.threads = args.threads
    if args.schemes:
        s.schemes = tuple(x.strip() for x in args.schemes.split(","))
    results = run(s, device=args.device, progress=not args.no_progress)
    results["meta"]["command"] = command_line("extrapolation", argv if argv is not None else sys.argv[1:])
    out = RESULTS_DIR if args.out is None else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "extrapolation.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    fig = plot_results(results, title=f"{results['meta']['command']} — {results['meta']['wall_seconds']:.0f} s")
    fig.savefig(out / "extrapolation.png", dpi=110)
    print(table(results))
    print(f"saved {out / 'extrapolation.json'} and {out / 'extrapolation.png'} "
          f"({results['meta']['wall_seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
