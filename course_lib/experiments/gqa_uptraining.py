"""Uptraining a mean-pooled GQA / MQA model: how much of the lost quality comes back (Chapter 4).

Ainslie et al. (2023) convert a multi-head checkpoint to grouped-query attention in two steps:
mean-pool the key and value heads of each group (``course_lib.model.mha_to_gqa``), then continue
pre-training the converted model for a small fraction α of the original steps ("uptraining";
α = 5% in the paper). This command does both on the Chapter 4 checkpoint
(``checkpoints/ch04_char_lm.pt``: 1000 steps of batch 24 × 128 characters), for every
``n_kv_heads`` in ``--kv-heads``:

* the validation loss of the MHA checkpoint, of the pooled model right after conversion, and
  during and after ``--steps`` uptraining steps (default 50 = 5% of 1000) with the checkpoint's
  batch size and sequence length (``course_lib.train.train``: AdamW, warm-up, cosine decay);
* the same number of steps for the MHA model itself (the control: how much the extra training
  alone lowers the loss);
* the recovered fraction of the gap, ``(pooled − uptrained) / (pooled − MHA)``.

The loss is ``course_lib.train.evaluate(model, corpus, 128, max_batches=4)``, the validation
figure Chapter 4 compares the conversions with. Run it (a few minutes on one CPU core)::

    python -m course_lib.experiments.gqa_uptraining          # writes results/gqa_uptraining.{json,png}
    python -m course_lib.experiments.gqa_uptraining --quick --out /tmp/x   # a few steps, seconds

The JSON holds the numbers, the exact command, the settings, torch, the machine and the wall time;
Chapter 4 loads it, checks its "right after conversion" losses against its own, and plots it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from course_lib.data import CharCorpus
from course_lib.model import mha_to_gqa
from course_lib.train import evaluate, load_checkpoint, train
from course_lib.experiments import command_line, run_meta

__all__ = ["Settings", "QUICK", "RESULTS_DIR", "CHECKPOINT", "run", "load_results", "plot_results", "main"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "ch04_char_lm.pt"


@dataclass
class Settings:
    """Everything that defines a run (saved with the results)."""

    kv_heads: tuple[int, ...] = (2, 1)   # the conversions; the checkpoint has 4
    steps: int = 50                      # uptraining steps: 5% of the checkpoint's 1000
    original_steps: int = 1000
    batch_size: int = 24                 # the checkpoint's
    seq_len: int = 128                   # the checkpoint's
    lr: float = 1e-3
    eval_every: int = 10
    eval_batches: int = 4                # Chapter 4's validation figure: 4 batches of 32 × 128
    seed: int = 1                        # batches (the checkpoint's own run used seed 0)
    control: bool = True                 # also train the MHA model for the same steps
    threads: int = 1
    quick: bool = False


QUICK = Settings(kv_heads=(1,), steps=6, eval_every=3, eval_batches=1, batch_size=8, control=False, quick=True)


def _eval(model, corpus, s: Settings) -> float:
    return round(evaluate(model, corpus, s.seq_len, max_batches=s.eval_batches), 4)


def _uptrain(model, corpus, s: Settings, progress: bool) -> dict:
    """Train ``model`` in place for ``s.steps``; the validation loss every ``s.eval_every`` steps."""
    curve = {0: _eval(model, corpus, s)}

    def callback(step, m, loss):
        if (step + 1) % s.eval_every == 0 or step + 1 == s.steps:
            curve[step + 1] = _eval(m, corpus, s)
            m.train()

    history = train(model, corpus, s.steps, s.batch_size, s.seq_len, s.lr, seed=s.seed, progress=progress,
                    callback=callback)
    return {"steps": list(curve), "val_loss": list(curve.values()),
            "train_loss": [round(v, 4) for v in history]}


def run(s: Settings = Settings(), *, checkpoint=None, device=None, progress: bool = True, log=print) -> dict:
    """Convert and uptrain; return the results dict (see the module docstring)."""
    threads = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    try:
        t0 = time.perf_counter()
        model, tok, meta = load_checkpoint(CHECKPOINT if checkpoint is None else checkpoint, device=device)
        corpus = CharCorpus(min_count=20)
        if tok.itos != corpus.tokenizer.itos:
            raise ValueError("checkpoint: its vocabulary does not match CharCorpus(min_count=20)")
        h = model.config.n_heads
        for hkv in s.kv_heads:
            if h % hkv or hkv >= h:
                raise ValueError(f"kv_heads: expected divisors of n_heads = {h} below it; got {hkv}")
        mha_loss = _eval(model, corpus, s)
        results = {"n_heads": h, "mha_loss": mha_loss, "uniform_loss": round(float(torch.tensor(model.config.vocab_size).log()), 4),
                   "checkpoint_steps": meta.get("steps"), "runs": {}}
        log(f"MHA ({h} K/V heads): {mha_loss:.3f}")
        for hkv in s.kv_heads:
            m = mha_to_gqa(model, hkv)
            run_ = _uptrain(m, corpus, s, progress)
            pooled, up = run_["val_loss"][0], run_["val_loss"][-1]
            run_["recovered"] = round((pooled - up) / (pooled - mha_loss), 4) if pooled > mha_loss else None
            results["runs"][str(hkv)] = run_
            log(f"{hkv} K/V heads: pooled {pooled:.3f} → uptrained {up:.3f} ({s.steps} steps), "
                f"recovered {run_['recovered']:.0%} of the gap")
        if s.control:
            m = mha_to_gqa(model, h)   # a copy of the MHA model
            results["runs"][str(h)] = _uptrain(m, corpus, s, progress)
            log(f"control, MHA trained {s.steps} more steps: {results['runs'][str(h)]['val_loss'][-1]:.3f}")
        results["settings"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(s).items()}
        results["meta"] = run_meta(t0, next(model.parameters()).device,
                                   checkpoint=Path(CHECKPOINT if checkpoint is None else checkpoint).name,
                                   corpus_fingerprint=corpus.fingerprint())
    finally:
        torch.set_num_threads(threads)
    return results



# ----------------------------------------------------------------------------- show
def load_results(path=None) -> dict:
    """The saved results (default: ``results/gqa_uptraining.json``)."""
    path = RESULTS_DIR / "gqa_uptraining.json" if path is None else Path(path)
    return json.loads(Path(path).read_text())


def plot_results(results: dict, ax=None):
    """Validation loss against uptraining steps, one line per number of K/V heads. Returns the figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.8))
    fig = ax.figure
    h = results["n_heads"]
    for key, r in sorted(results["runs"].items(), key=lambda kv: -int(kv[0])):
        hkv = int(key)
        label = (f"MHA, {h} K/V heads, trained on (control)" if hkv == h
                 else f"{'MQA' if hkv == 1 else 'GQA'}, {hkv} K/V head{'s' if hkv > 1 else ''}, pooled, then uptrained")
        ax.plot(r["steps"], r["val_loss"], "o-", ms=4, label=label, color="gray" if hkv == h else None)
    ax.axhline(results["mha_loss"], color="k", ls=":", lw=1, label=f"MHA checkpoint ({results['mha_loss']:.2f})")
    steps = results["settings"]["steps"]
    frac = steps / results["settings"]["original_steps"]
    ax.set(xlabel=f"uptraining steps ({steps} = {frac:.0%} of the checkpoint's {results['settings']['original_steps']})",
           ylabel="validation loss (nats/char)", title="mean-pooled K/V heads, then uptrained")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- command line
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m course_lib.experiments.gqa_uptraining",
                                     description=__doc__.split("\n")[0])
    d = Settings()
    parser.add_argument("--steps", type=int, default=None, help=f"uptraining steps (default {d.steps})")
    parser.add_argument("--kv-heads", default=None, help="comma-separated K/V head counts (default 2,1)")
    parser.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {d.lr})")
    parser.add_argument("--no-control", action="store_true", help="skip the MHA control run")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1; 0 = torch's default)")
    parser.add_argument("--quick", action="store_true", help="a few steps, one conversion (seconds; a smoke test)")
    parser.add_argument("--out", default=None, help=f"output directory (default {RESULTS_DIR})")
    parser.add_argument("--device", default=None, help="cpu (default) or cuda")
    parser.add_argument("--no-progress", action="store_true")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    s = dataclasses.replace(QUICK if args.quick else d)
    if args.steps is not None:
        s.steps = args.steps
    if args.kv_heads:
        s.kv_heads = tuple(int(x) for x in args.kv_heads.split(","))
    if args.lr is not None:
        s.lr = args.lr
    if args.no_control:
        s.control = False
    if args.threads is not None:
        s.threads = args.threads
    results = run(s, device=args.device, progress=not args.no_progress)
    results["meta"]["command"] = command_line("gqa_uptraining", argv)
    out = RESULTS_DIR if args.out is None else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gqa_uptraining.json").write_text(json.dumps(results, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    fig = plot_results(results)
    fig.suptitle(f"{results['meta']['command']} — {results['meta']['wall_seconds']:.0f} s", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "gqa_uptraining.png", dpi=110)
    print(f"saved {out / 'gqa_uptraining.json'} and {out / 'gqa_uptraining.png'} ({results['meta']['wall_seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
