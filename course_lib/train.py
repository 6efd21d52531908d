"""A small, seeded training loop for ``course_lib.model.DecoderLM`` on a ``course_lib.data.CharCorpus``.

    loss = cross-entropy(logits[:, t], x[t + 1])        next-token prediction, averaged over tokens

AdamW (decoupled weight decay on matrices only, not on biases, norms or embeddings' …),
a linear warm-up then cosine decay of the learning rate, gradient clipping at 1.0. Batches come
from a seeded ``torch.Generator``, so a run is reproducible on the same machine and device.

Also: :func:`evaluate` (mean validation loss over fixed, non-overlapping windows),
:func:`save_checkpoint` / :func:`load_checkpoint` (weights, config and tokenizer in one file), and
the measurements of Chapter 9, :func:`layer_grad_norms` and :func:`xavier_init_`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.data import CharCorpus, CharTokenizer
from course_lib.model import DecoderLM, ModelConfig
from course_lib.moe import moe_aux_loss

try:  # a progress bar when tqdm is installed, a printed line every N steps otherwise
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None

__all__ = [
    "lm_loss", "lr_at", "train", "evaluate", "save_checkpoint", "load_checkpoint",
    "layer_grad_norms", "xavier_init_",
]


def lm_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``model(x)`` ``[B, T, V]`` against the next tokens ``y`` ``[B, T]``."""
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))


def lr_at(step: int, steps: int, lr: float, warmup: int, min_lr_ratio: float = 0.1) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_lr_ratio · lr`` at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _param_groups(model, weight_decay: float):
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2 and "emb" not in n]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not (p.dim() >= 2 and "emb" not in n)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def train(model, data, steps: int, batch_size: int = 32, seq_len: int = 128, lr: float = 3e-3, *,
          weight_decay: float = 0.1, warmup: int | None = None, grad_clip: float = 1.0, seed: int = 0,
          device=None, progress: bool = True, log_every: int = 50, callback=None) -> list[float]:
    """Train ``model`` on ``data`` for ``steps`` AdamW steps; return the training loss of every step.

    Args:
        model: a ``DecoderLM`` (moved to ``device``; default: where its parameters are).
        data: a ``CharCorpus`` (anything with ``get_batch(split, batch_size, seq_len, generator, device)``).
        warmup: warm-up steps (default ``steps // 10``).
        progress: a tqdm bar (or, without tqdm, a line every ``log_every`` steps).
        callback: called as ``callback(step, model, loss)`` after every step (e.g. to save checkpoints).
    """
    for name, v in (("steps", steps), ("batch_size", batch_size), ("seq_len", seq_len)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive int; got {v!r}")
    if seq_len > model.config.max_seq_len and model.config.pos_encoding == "learned":
        raise ValueError(f"seq_len: expected at most the model's max_seq_len = {model.config.max_seq_len}; got {seq_len}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device).train()
    warmup = max(1, steps // 10) if warmup is None else warmup
    torch.manual_seed(seed)                                  # dropout
    gen = torch.Generator().manual_seed(seed)                # batches
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.95))
    history: list[float] = []
    bar = tqdm(range(steps), desc="train", disable=not progress, leave=False) if tqdm else range(steps)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        x, y = data.get_batch("train", batch_size, seq_len, gen, device)
        loss = lm_loss(model, x, y)
        opt.zero_grad(set_to_none=True)
        (loss + moe_aux_loss(model)).backward()     # + the load-balancing losses of MoE layers (Chapter 8)
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        history.append(loss.item())
        if callback is not None:
            callback(step, model, history[-1])
        if tqdm and progress and (step % 10 == 0 or step == steps - 1):
            bar.set_postfix(loss=f"{history[-1]:.3f}")
        elif not tqdm and progress and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:5d}  loss {history[-1]:.3f}")
    model.eval()
    return history


@torch.no_grad()
def evaluate(model, data, seq_len: int = 128, *, split: str = "val", batch_size: int = 32,
             max_batches: int | None = 20) -> float:
    """Mean next-token loss (nats per token) over fixed windows of a split: deterministic."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in data.sequential_batches(split, batch_size, seq_len, max_batches):
        total += lm_loss(model, x.to(device), y.to(device)).item() * y.numel()
        count += y.numel()
    model.train(was_training)
    return total / count


def save_checkpoint(path, model, tokenizer=None, **meta) -> None:
    """Save config, weights (in their current dtype) and the tokenizer's vocabulary to ``path``."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.endswith("lm_head.weight")
             or not model.config.tie_embeddings}
    torch.save({"config": model.config.to_dict(), "state_dict": state,
                "tokenizer": tokenizer.state_dict() if tokenizer is not None else None, "meta": meta}, path)


def load_checkpoint(path, *, device=None, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer, meta)`` from :func:`save_checkpoint`; the model in ``dtype``, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path: no checkpoint at {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = DecoderLM(ModelConfig(**blob["config"]))
    state = {k: v.to(dtype) for k, v in blob["state_dict"].items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:
        raise ValueError(f"path: checkpoint does not match the model (missing {missing}, unexpected {unexpected})")
    tok = CharTokenizer.from_state_dict(blob["tokenizer"]) if blob.get("tokenizer") else None
    return model.to(device=device, dtype=dtype).eval(), tok, blob.get("meta", {})


# ----------------------------------------------------------------------------- Chapter 9 measurements
def layer_grad_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     names: tuple[str, ...] = ("ffn.up_proj.weight", "ffn.down_proj.weight")) -> torch.Tensor:
    """Gradient norms ``[n_layers, len(names)]`` of the loss ``lm_loss(model, x, y)`` per block.

    The default measures the two FFN matrices W¹ (``up_proj``) and W² (``down_proj``), the
    quantities of Xiong et al.'s Figure 3 (Chapter 9). The model's gradients are cleared before and after.
    """
    model.zero_grad(set_to_none=True)
    lm_loss(model, x, y).backward()
    out = torch.zeros(len(model.blocks), len(names))
    for i, block in enumerate(model.blocks):
        params = dict(block.named_parameters())
        for j, name in enumerate(names):
            if name not in params:
                raise ValueError(f"names: block {i} has no parameter {name!r}")
            out[i, j] = params[name].grad.norm().item()
    model.zero_grad(set_to_none=True)
    return out


def xavier_init_(model: nn.Module) -> nn.Module:
    """Xavier-normal weights for every ``nn.Linear`` (biases zero), in place: the setting of Xiong
    et al.'s analysis (no 1/√(2L) scaling of the residual projections, unlike GPT-2's init)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


CH04_COMMAND = ("python -m course_lib.train --out /tmp/ch04_400.pt --steps 400 --lr 4e-3 --threads 1 && "
                "python -m course_lib.train --init /tmp/ch04_400.pt --out course_lib/checkpoints/ch04_char_lm.pt "
                "--steps 600 --lr 3e-3 --threads 1")


def main(argv=None) -> int:
    """Train a character-level DecoderLM on the standard-library corpus and save it in fp16.

    The Chapter 4 checkpoint ``course_lib/checkpoints/ch04_char_lm.pt`` was made by
    :data:`CH04_COMMAND`: 400 steps, then 600 more from those weights (about 25 minutes on one
    CPU core; defaults: batch 24 × 128 characters, d_model 128, 4 layers, 4 heads).
    """
    import argparse

    p = argparse.ArgumentParser(prog="python -m course_lib.train", description=main.__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=24)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--min-count", type=int, default=20, help="rarer characters map to <unk>")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--init", default=None, help="start from this checkpoint's weights (same shape)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = CharCorpus(min_count=args.min_count)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=corpus.vocab_size, d_model=args.d_model, n_layers=args.layers,
                      n_heads=args.heads, max_seq_len=args.max_seq_len)
    model = DecoderLM(cfg)
    if args.init:
        init, _, _ = load_checkpoint(args.init)
        model.load_state_dict(init.state_dict())
    model = model.to(args.device or "cpu")
    hist = train(model, corpus, args.steps, args.batch_size, args.seq_len, args.lr)
    val = evaluate(model, corpus, args.seq_len)
    print(f"final train loss {hist[-1]:.3f}, validation loss {val:.3f}")
    command = "python -m course_lib.train " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    save_checkpoint(args.out, model.half(), corpus.tokenizer, steps=args.steps, batch_size=args.batch_size,
                    seq_len=args.seq_len, lr=args.lr, corpus_fingerprint=corpus.fingerprint(),
                    val_loss=round(val, 4), command=command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
