"""A small encoder–decoder trained to reverse (or copy) a sequence of symbols (Chapter 2).

The model is built from Chapter 2's own parts: ``course_lib.mha.EncoderLayer`` and
``DecoderLayer`` (post-norm, as in Vaswani et al., 2017), a token embedding shared by source and
target, the fixed sinusoidal positions of ``course_lib.positional`` and a linear head::

    source  x_0 … x_{T−1}                    → encoder → memory [B, T, d_model]
    decoder input  <bos> y_0 … y_{T−2}  + memory → decoder → logits for y_0 … y_{T−1}

with ``y_i = x_{T−1−i}`` (``--task reverse``) or ``y_i = x_i`` (``--task copy``): symbols drawn
uniformly at random, a fresh batch at every step, teacher forcing, cross-entropy. To write
``y_i`` the decoder must find source position ``T−1−i`` (reverse), and the only way from the
decoder to the source is cross-attention: a trained model's cross-attention map is an
anti-diagonal. The command measures that (per decoder layer and head, the fraction of decoder
positions whose largest cross-attention weight falls on the expected source position) and the
exact-match accuracy of greedy decoding on fresh sequences.

Run it (about a minute on one laptop CPU core)::

    python -m course_lib.experiments.seq2seq                  # writes results/seq2seq_reverse.{json,png}
                                                              # and checkpoints/ch02_reverse.pt (fp16)
    python -m course_lib.experiments.seq2seq --quick --out /tmp/x    # tiny, seconds

The saved JSON holds the evaluation of the **saved** (fp16) weights, the exact command, the
settings, torch, the machine and the wall time; ``evaluate(load_model(path)[0], settings)``
reproduces it (``tests/test_seq2seq.py``). Chapter 2 loads the checkpoint, evaluates it on its
own fresh sequences and plots the map.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.mha import DecoderLayer, EncoderLayer
from course_lib.positional import SinusoidalPositionalEmbedding
from course_lib.train import lr_at
from course_lib.experiments import command_line, run_meta
from course_lib.utils import check_choice, check_tensor, set_seed

__all__ = ["Settings", "QUICK", "RESULTS_DIR", "CHECKPOINT_DIR", "Seq2Seq", "make_batch", "expected_source_position",
           "greedy_decode", "cross_attention_maps", "evaluate", "train_model", "run", "save_model", "load_model",
           "load_results", "plot_cross_attention", "main"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "checkpoints"
TASKS = ("reverse", "copy")


@dataclass
class Settings:
    """Everything that defines a run (saved with the results and in the checkpoint)."""

    task: str = "reverse"
    seq_len: int = 10            # T: source and target length
    n_symbols: int = 10          # source symbols 0 … n_symbols − 1; <bos> is n_symbols
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2            # encoder layers, and as many decoder layers
    d_ff: int = 128
    steps: int = 500
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 50
    n_eval: int = 1000           # fresh sequences for the saved evaluation
    seed: int = 0                # model initialisation and training batches
    eval_seed: int = 1234        # the evaluation sequences (a different stream from training)
    threads: int = 1
    quick: bool = False

    @property
    def vocab_size(self) -> int:
        return self.n_symbols + 1

    @property
    def bos(self) -> int:
        return self.n_symbols


# tiny sizes for tests: seconds
QUICK = Settings(seq_len=6, n_symbols=8, d_model=32, n_heads=2, n_layers=1, d_ff=64, steps=120, batch_size=32,
                 lr=3e-3, warmup=20, n_eval=200, quick=True)


# ----------------------------------------------------------------------------- the model
class Seq2Seq(nn.Module):
    """An encoder–decoder of ``EncoderLayer`` and ``DecoderLayer`` (post-norm, no dropout).

    ``forward(src [B, S], tgt_in [B, T]) → logits [B, T, vocab_size]``. The decoder's
    self-attention is causal (``DecoderLayer``'s default), so position t of the logits depends
    on ``tgt_in[:, :t+1]`` and on the whole source.
    """

    def __init__(self, s: Settings):
        super().__init__()
        self.settings = s
        self.embed = nn.Embedding(s.vocab_size, s.d_model)
        self.pos = SinusoidalPositionalEmbedding(s.d_model)
        self.encoder = nn.ModuleList(EncoderLayer(s.d_model, s.n_heads, s.d_ff, dropout=0.0) for _ in range(s.n_layers))
        self.decoder = nn.ModuleList(DecoderLayer(s.d_model, s.n_heads, s.d_ff, dropout=0.0) for _ in range(s.n_layers))
        self.head = nn.Linear(s.d_model, s.vocab_size)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))

    def encode(self, src: torch.Tensor) -> torch.Tensor:
        """``src`` ``[B, S]`` → memory ``[B, S, d_model]``."""
        check_tensor("src", src, ndim=2)
        x = self._embed(src)
        for layer in self.encoder:
            x = layer(x)
        return x

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """``tgt_in`` ``[B, T]`` and memory ``[B, S, d_model]`` → logits ``[B, T, vocab_size]``."""
        check_tensor("tgt_in", tgt_in, ndim=2)
        x = self._embed(tgt_in)
        for layer in self.decoder:
            x = layer(x, memory)
        return self.head(x)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return self.decode(tgt_in, self.encode(src))


# ----------------------------------------------------------------------------- data and measurements
def make_batch(s: Settings, batch_size: int, generator: torch.Generator, device=None):
    """``(src, tgt_in, tgt)``, each ``[batch_size, T]``: random symbols, the decoder input
    ``<bos> y_0 … y_{T−2}`` (teacher forcing) and the target ``y`` (``src`` reversed, or copied)."""
    check_choice("task", s.task, TASKS)
    src = torch.randint(s.n_symbols, (batch_size, s.seq_len), generator=generator)
    tgt = src.flip(1) if s.task == "reverse" else src.clone()
    bos = torch.full((batch_size, 1), s.bos, dtype=src.dtype)
    tgt_in = torch.cat([bos, tgt[:, :-1]], dim=1)
    return src.to(device), tgt_in.to(device), tgt.to(device)


def expected_source_position(task: str, T: int) -> torch.Tensor:
    """``[T]``: the source position decoder step i must read, ``T−1−i`` (reverse) or ``i`` (copy)."""
    check_choice("task", task, TASKS)
    i = torch.arange(T)
    return T - 1 - i if task == "reverse" else i


@torch.no_grad()
def greedy_decode(model: Seq2Seq, src: torch.Tensor) -> torch.Tensor:
    """``[B, T]``: the model's own output, one token at a time, each the argmax given the previous ones."""
    model.eval()
    memory = model.encode(src)
    out = torch.full((src.shape[0], 1), model.settings.bos, dtype=torch.long, device=src.device)
    for _ in range(model.settings.seq_len):
        nxt = model.decode(out, memory)[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], dim=1)
    return out[:, 1:]


@torch.no_grad()
def cross_attention_maps(model: Seq2Seq, src: torch.Tensor, tgt_in: torch.Tensor) -> list[torch.Tensor]:
    """The cross-attention weights of every decoder layer, ``[B, h, T, S]`` each (rows: decoder
    positions, columns: source positions), for a teacher-forced pass.

    ``DecoderLayer`` returns only its output; a forward hook on each ``cross_attn`` reruns that
    module on the same inputs with ``return_weights=True``.
    """
    model.eval()
    maps, handles = [], []

    def hook(module, args, kwargs, output):
        x, cond = args[0], args[1] if len(args) > 1 else kwargs.get("context")
        maps.append(module.forward(x, cond, mask=kwargs.get("mask"), return_weights=True)[1])

    for layer in model.decoder:
        handles.append(layer.cross_attn.register_forward_hook(hook, with_kwargs=True))
    try:
        model(src, tgt_in)
    finally:
        for h in handles:
            h.remove()
    return maps


@torch.no_grad()
def evaluate(model: Seq2Seq, s: Settings | None = None, *, n: int | None = None, seed: int | None = None) -> dict:
    """Measure ``model`` on ``n`` fresh sequences drawn with ``seed`` (defaults: ``s.n_eval``, ``s.eval_seed``).

    Returns ``exact_match`` (greedy decoding, whole sequence right), ``token_accuracy`` (greedy),
    ``loss`` (teacher-forced cross-entropy, nats), and ``argmax_on_expected[layer][head]``: the
    fraction of decoder positions whose largest cross-attention weight is on the expected source
    position (``expected_source_position``), and ``mean_weight_on_expected[layer][head]``.
    """
    s = model.settings if s is None else s
    n = s.n_eval if n is None else n
    seed = s.eval_seed if seed is None else seed
    device = next(model.parameters()).device
    model.eval()
    src, tgt_in, tgt = make_batch(s, n, torch.Generator().manual_seed(seed), device)
    pred = greedy_decode(model, src)
    logits = model(src, tgt_in)
    loss = F.cross_entropy(logits.flatten(0, 1), tgt.flatten()).item()
    want = expected_source_position(s.task, s.seq_len).to(device)
    rows = torch.arange(s.seq_len, device=device)
    on_argmax, on_weight = [], []
    for w in cross_attention_maps(model, src, tgt_in):          # [B, h, T, S]
        on_argmax.append([round((w[:, h].argmax(-1) == want).float().mean().item(), 4) for h in range(w.shape[1])])
        on_weight.append([round(w[:, h, rows, want].mean().item(), 4) for h in range(w.shape[1])])
    return {
        "n": n, "seed": seed,
        "exact_match": round((pred == tgt).all(-1).float().mean().item(), 4),
        "token_accuracy": round((pred == tgt).float().mean().item(), 4),
        "loss": round(loss, 4),
        "argmax_on_expected": on_argmax,
        "mean_weight_on_expected": on_weight,
    }


# ----------------------------------------------------------------------------- training
def train_model(s: Settings, *, device=None, log=print) -> tuple[Seq2Seq, list[float]]:
    """Train a fresh :class:`Seq2Seq` for ``s.steps`` AdamW steps (warm-up, cosine decay,
    ``course_lib.train.lr_at``); return it and the training loss of every step."""
    device = torch.device("cpu" if device is None else device)
    g = set_seed(s.seed)
    model = Seq2Seq(s).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=(0.9, 0.98), weight_decay=0.01)
    history = []
    model.train()
    for step in range(s.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, s.steps, s.lr, s.warmup)
        src, tgt_in, tgt = make_batch(s, s.batch_size, g, device)
        loss = F.cross_entropy(model(src, tgt_in).flatten(0, 1), tgt.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        history.append(loss.item())
        if log and (step % 250 == 0 or step == s.steps - 1):
            log(f"step {step:5d}  loss {history[-1]:.4f}")
    return model.eval(), history


def save_model(path, model: Seq2Seq) -> None:
    """Settings and weights in fp16 (a few hundred KB)."""
    state = {k: v.detach().cpu().half() for k, v in model.state_dict().items()}
    torch.save({"settings": dataclasses.asdict(model.settings), "state_dict": state}, path)


def load_model(path=None, *, device=None) -> tuple[Seq2Seq, Settings]:
    """``(model, settings)`` from :func:`save_model` (default: ``checkpoints/ch02_reverse.pt``); fp32, eval mode."""
    path = CHECKPOINT_DIR / "ch02_reverse.pt" if path is None else Path(path)
    if not path.is_file():
        raise ValueError(f"path: no checkpoint at {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    s = Settings(**blob["settings"])
    model = Seq2Seq(s)
    model.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    return model.to(device).eval(), s


def run(s: Settings = Settings(), *, device=None, log=print, checkpoint=None) -> dict:
    """Train, round the weights to fp16 (what :func:`save_model` stores), evaluate; return the results.

    ``checkpoint``: where to save the model (nothing is saved when None).
    """
    check_choice("task", s.task, TASKS)
    threads = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    try:
        t0 = time.perf_counter()
        model, history = train_model(s, device=device, log=log)
        train_seconds = time.perf_counter() - t0
        with torch.no_grad():   # evaluate exactly the weights that are saved
            for p in model.parameters():
                p.copy_(p.half().float())
        if checkpoint is not None:
            save_model(checkpoint, model)
        results = evaluate(model, s)
        n = max(1, s.steps // 50)
        results["train_loss"] = [round(sum(history[i:i + n]) / len(history[i:i + n]), 4) for i in range(0, s.steps, n)]
        results["train_loss_every"] = n
        results["chance_loss"] = round(math.log(s.n_symbols), 4)
        results["n_parameters"] = sum(p.numel() for p in model.parameters())
        results["settings"] = dataclasses.asdict(s)
        results["meta"] = run_meta(t0, next(model.parameters()).device, train_seconds=round(train_seconds, 1))
    finally:
        torch.set_num_threads(threads)
    log(f"exact match {results['exact_match']:.3f}, token accuracy {results['token_accuracy']:.3f}, "
        f"argmax on the expected source position per layer/head {results['argmax_on_expected']}")
    return results



# ----------------------------------------------------------------------------- show
def load_results(path=None, task: str = "reverse") -> dict:
    """The saved results (default: ``results/seq2seq_<task>.json``)."""
    path = RESULTS_DIR / f"seq2seq_{task}.json" if path is None else Path(path)
    return json.loads(Path(path).read_text())


def plot_cross_attention(weights, task: str = "reverse", *, axes=None, titles=None, source=None, output=None):
    """One panel per head: cross-attention maps ``[h, T, S]`` (rows: decoder steps, columns:
    source positions), the expected source position of each step outlined. Returns the figure.

    ``source``, ``output``: optional tick labels (the source symbols, the symbols written at each step).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from course_lib.attention import plot_attention
    from course_lib.diagrams import PALETTE

    check_tensor("weights", weights, ndim=3)
    h, T, S = weights.shape
    if axes is None:
        fig, axes = plt.subplots(1, h, figsize=(min(8, 2.1 * h + 0.6), 2.5), squeeze=False)
        axes = axes[0]
    fig = axes[0].figure
    want = expected_source_position(task, T)
    for i, ax in enumerate(axes):
        plot_attention(weights[i], output, source, ax=ax, colorbar=False, vmax=1,
                       title=titles[i] if titles else f"head {i + 1}")
        for r in range(T):
            ax.add_patch(Rectangle((want[r] - 0.5, r - 0.5), 1, 1, fill=False, ec=PALETTE["new"], lw=0.9))
        ax.set_xlabel("source" if source is not None else "source position")
        ax.set_ylabel(("output" if output is not None else "decoder step") if i == 0 else "")
        if source is None:
            ax.set_xticks(range(0, S, max(1, S // 5)))
        else:
            ax.tick_params(axis="x", labelrotation=0)
            for label in ax.get_xticklabels():
                label.set_horizontalalignment("center")
        if output is None:
            ax.set_yticks(range(0, T, max(1, T // 5)))
    fig.tight_layout()
    return fig


def _figure(model: Seq2Seq, results: dict):
    s = model.settings
    src, tgt_in, _ = make_batch(s, s.n_eval, torch.Generator().manual_seed(s.eval_seed))
    maps = cross_attention_maps(model, src, tgt_in)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(maps), s.n_heads, figsize=(min(8, 2.1 * s.n_heads + 0.6), 2.3 * len(maps)),
                             squeeze=False)
    for layer, w in enumerate(maps):
        titles = [f"layer {layer + 1}, head {h + 1}: {results['argmax_on_expected'][layer][h]:.0%}"
                  for h in range(s.n_heads)]
        plot_cross_attention(w.mean(0), s.task, axes=axes[layer], titles=titles)
    fig.suptitle(f"{results['meta']['command']}\nexact match {results['exact_match']:.1%}, "
                 f"trained in {results['meta']['train_seconds']:.0f} s", fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- command line
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m course_lib.experiments.seq2seq", description=__doc__.split("\n")[0])
    d = Settings()
    parser.add_argument("--task", choices=TASKS, default=None, help=f"default {d.task}")
    parser.add_argument("--steps", type=int, default=None, help=f"training steps (default {d.steps}; quick {QUICK.steps})")
    parser.add_argument("--seq-len", type=int, default=None, help=f"T (default {d.seq_len})")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1; 0 = torch's default)")
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps (seconds; a smoke test)")
    parser.add_argument("--out", default=None, help=f"output directory of the JSON and figure (default {RESULTS_DIR}); "
                                                    f"the checkpoint goes to {CHECKPOINT_DIR} by default, to --out otherwise")
    parser.add_argument("--device", default=None, help="cpu (default) or cuda")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    s = dataclasses.replace(QUICK if args.quick else d)
    for field, value in (("task", args.task), ("steps", args.steps), ("seq_len", args.seq_len), ("seed", args.seed),
                         ("threads", args.threads)):
        if value is not None:
            setattr(s, field, value)
    out = RESULTS_DIR if args.out is None else Path(args.out)
    ckpt_dir = CHECKPOINT_DIR if args.out is None else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt = ckpt_dir / f"ch02_{s.task}.pt"
    results = run(s, device=args.device, checkpoint=ckpt)
    results["meta"]["command"] = command_line("seq2seq", argv)
    results["checkpoint"] = ckpt.name
    (out / f"seq2seq_{s.task}.json").write_text(json.dumps(results, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    model, _ = load_model(ckpt)
    _figure(model, results).savefig(out / f"seq2seq_{s.task}.png", dpi=110)
    print(f"saved {out / f'seq2seq_{s.task}.json'}, {out / f'seq2seq_{s.task}.png'} and {ckpt} "
          f"({ckpt.stat().st_size / 1024:.0f} KB, {results['meta']['wall_seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
