"""Chapter 4 — generating text with a KV cache, and measuring what the cache buys.

Above the model (``course_lib.model``) and the caches (``course_lib.kv_cache``):

* :func:`left_pad` — prompts of different lengths, left-padded with their attention mask;
* :func:`make_cache` — a static, rolling or concatenating cache shaped for a model;
* :func:`generate` — batched greedy or sampled decoding, with or without a cache;
* :func:`decode_benchmark` — cached vs uncached decoding (``--bench``);
* :func:`gqa_benchmark` — the time of one decoding step against the number of K/V heads, with the
  K/V heads copied (``repeat_kv``) and with grouped queries (``sdpa``), at a size where reading
  the cache is most of a step's memory traffic (``--bench-gqa``; writes
  ``course_lib/experiments/results/gqa_decode.json``).

Command line::

    python -m course_lib.generation --bench        # KV cache: speed-up and identical tokens
    python -m course_lib.generation --bench-gqa    # GQA/MQA: step time against K/V heads

Tests: ``tests/test_kv_cache.py`` (cached = uncached generation, tokens and logits; the benchmarks
at tiny sizes).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from course_lib.kv_cache import ConcatKVCache, KVCache, RollingKVCache
from course_lib.model import DecoderLM, ModelConfig
from course_lib.utils import check_choice, check_int, check_number

__all__ = [
    "left_pad",
    "make_cache",
    "generate",
    "decode_benchmark",
    "gqa_benchmark",
]

RESULTS = Path(__file__).resolve().parent / "experiments" / "results"


def make_cache(model, batch: int, max_len: int, kind: str = "static"):
    """A cache of ``kind`` (``"static"`` → :class:`KVCache`, ``"rolling"`` → :class:`RollingKVCache`
    with the model's window — ``max_len`` is then unused —, ``"concat"`` → :class:`ConcatKVCache`) shaped for ``model``."""
    cfg = model.config
    p = next(model.parameters())
    common = dict(n_layers=cfg.n_layers, batch=batch, n_kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim)
    if kind == "static":
        return KVCache(max_len=max_len, dtype=p.dtype, device=p.device, **common)
    if kind == "rolling":
        if cfg.window is None:
            raise ValueError("kind: 'rolling' needs a model with a sliding window (config.window); got window=None")
        if cfg.local_global:
            raise ValueError("kind: 'rolling' keeps only the last window keys, but local_global models have "
                             "global layers that need every key; expected 'static' or 'concat'")
        return RollingKVCache(window=cfg.window, dtype=p.dtype, device=p.device, **common)
    if kind == "concat":
        return ConcatKVCache(**common)
    raise ValueError(f"kind: expected 'static', 'rolling' or 'concat'; got {kind!r}")


def left_pad(prompts, pad_id: int = 0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of token ids of different lengths → ``(input_ids [B, P], attention_mask [B, P])``.

    Left padding puts every prompt's last token in the last column, so the next token of every
    sequence goes into the same column.
    """
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"prompts: expected a non-empty list of token-id lists; got {type(prompts).__name__}")
    lens = [len(p) for p in prompts]
    if min(lens) < 1:
        raise ValueError(f"prompts: expected every prompt to have at least one token; got lengths {lens}")
    P = max(lens)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), P), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, P - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[b, P - len(p):] = 1
    return ids.to(device), mask.to(device)


def _next_token(logits: torch.Tensor, temperature: float, top_k: int | None, generator) -> torch.Tensor:
    """``[B, V]`` logits → ``[B]`` token ids: argmax at temperature 0, else a (top-k) sample."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, prompts, max_new_tokens: int, *, use_cache: bool = True, cache: str | None = None,
             temperature: float = 0.0, top_k: int | None = None, generator: torch.Generator | None = None,
             pad_id: int = 0, return_logits: bool = False, timings: list | None = None):
    """Generate ``max_new_tokens`` tokens after each prompt.

    Args:
        model: a ``course_lib.model.DecoderLM``.
        prompts: a list of token-id lists, of different lengths (they are left-padded).
        use_cache: False recomputes the whole sequence every step (the baseline).
        cache: ``"static"`` (default; ``"rolling"`` when every layer has a window) or ``"concat"``.
        temperature: 0 → greedy (argmax); > 0 → sample from ``softmax(logits / temperature)``.
        top_k: sample only among the ``top_k`` most likely tokens.
        generator: a seeded ``torch.Generator`` for reproducible sampling.
        return_logits: also return the logits of every step, ``[B, max_new_tokens, V]``.
        timings: if a list, the wall time of every step (seconds) is appended to it.
    Returns:
        the new tokens ``[B, max_new_tokens]`` (and the logits).
    """
    check_int("max_new_tokens", max_new_tokens)
    check_number("temperature", temperature, at_least=0)
    check_int("top_k", top_k, optional=True)
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)
    B, P = ids.shape
    total = P + max_new_tokens
    # preallocated: no torch.cat per step
    all_ids = torch.full((B, total), pad_id, dtype=torch.long, device=device)
    all_mask = torch.ones((B, total), dtype=torch.long, device=device)
    all_ids[:, :P], all_mask[:, :P] = ids, mask
    padded = bool((mask == 0).any())
    kv = None
    if use_cache:
        # a rolling buffer only when every layer is windowed (Gemma-2's global layers need every key)
        windowed = model.config.window is not None and not model.config.local_global
        kind = cache or ("rolling" if windowed else "static")
        kv = make_cache(model, B, total, kind)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    was_training = model.training
    model.eval()
    new_logits = []
    try:
        for t in range(max_new_tokens):
            start = time.perf_counter() if timings is not None else 0.0
            S = P + t
            m = all_mask[:, :S] if padded else None
            if kv is None:
                logits = model(all_ids[:, :S], attention_mask=m)[:, -1]
            else:
                step = all_ids[:, :P] if t == 0 else all_ids[:, S - 1:S]
                logits = model(step, attention_mask=m, cache=kv)[:, -1]
            all_ids[:, S] = _next_token(logits, temperature, top_k, generator)
            if return_logits:
                new_logits.append(logits.float())
            if timings is not None:
                sync()
                timings.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    tokens = all_ids[:, P:]
    if return_logits:
        return tokens, torch.stack(new_logits, dim=1)
    return tokens


# ----------------------------------------------------------------------------- benchmarks
def _timed(fn, repeats: int, device) -> tuple[float, object]:
    """Best wall time of ``fn()`` over ``repeats`` runs (after one warm-up) and its last result."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best, out


def decode_benchmark(d_model: int = 256, n_layers: int = 4, n_heads: int = 4, n_kv_heads: int | None = None,
                     prompt_len: int = 128, new_tokens: int = 256, batch: int = 1, vocab_size: int = 100,
                     seed: int = 0, device=None, repeats: int = 1) -> dict:
    """Time greedy decoding with and without the KV cache on a randomly initialised model.

    Speed does not depend on the weights, so no training is needed; the tokens are compared
    (they must be identical). Returns a dict with the times (best of ``repeats``), tokens/s,
    the speed-up and ``identical``.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                      n_kv_heads=n_kv_heads, max_seq_len=prompt_len + new_tokens)
    model = DecoderLM(cfg).to(device).eval()
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(vocab_size, (batch, prompt_len), generator=g).tolist()
    out = {}
    for use_cache in (False, True):
        key = "cached" if use_cache else "uncached"
        out[f"{key}_s"], out[f"{key}_tokens"] = _timed(
            lambda: generate(model, prompts, new_tokens, use_cache=use_cache), repeats, device)
    out["identical"] = bool(torch.equal(out["cached_tokens"], out["uncached_tokens"]))
    out["speedup"] = out["uncached_s"] / out["cached_s"]
    out["cached_tok_per_s"] = batch * new_tokens / out["cached_s"]
    out["uncached_tok_per_s"] = batch * new_tokens / out["uncached_s"]
    out["config"] = dict(d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                         prompt_len=prompt_len, new_tokens=new_tokens, batch=batch,
                         threads=torch.get_num_threads(), device=str(device))
    return out


@torch.no_grad()
def gqa_benchmark(d_model: int = 256, n_layers: int = 4, n_heads: int = 8, kv_heads=(8, 4, 2, 1),
                  batch: int = 32, context: int = 2048, new_tokens: int = 16, vocab_size: int = 100,
                  implementations=("repeat_kv", "sdpa"), repeats: int = 3, seed: int = 0, device=None) -> dict:
    """Time of one greedy decoding step against the number of K/V heads, for each attention implementation.

    A decoding step reads every weight once and, for each of the ``batch`` sequences, the whole
    cache: ``2 · n_layers · h_kv · head_dim · context`` numbers. The default size is chosen so that
    the cache dominates a step's traffic on a CPU: in fp32 the MHA cache of 32 sequences of 2048
    tokens is 537 MB against 15 MB of weights (36×), so the step time should fall with ``h_kv`` — if
    the attention reads each K/V head once (``"sdpa"``, grouped queries). ``"repeat_kv"`` first
    writes ``n_rep`` copies of the cache and reads them back, the traffic of MHA whatever ``h_kv``
    is (except MQA, whose single head PyTorch's reshape keeps as a stride-0 view). What does not
    shrink with ``h_kv`` — the projections and FFN of 32 tokens, dozens of small kernel launches per
    layer — keeps the gain below the 8× of the cache bytes.

    The cache is filled with ``context`` random keys and values (a step's cost does not depend on
    their values; a real 2048-token prefill would dominate the run), then ``new_tokens`` tokens are
    decoded greedily; the time is the best of ``repeats`` runs, divided by ``new_tokens``. Every
    implementation decodes from the same cache with the same weights: the tokens must be identical.

    Returns ``{"rows": [{kv_heads, implementation, ms_per_step, cache_mb, weights_mb, tokens_identical}],
    "config": ..., "machine": ...}``.
    """
    check_int("context", context)
    check_int("new_tokens", new_tokens)
    for impl in implementations:
        check_choice("implementations", impl, ("repeat_kv", "sdpa", "eager"))
    device = torch.device(device) if device is not None else torch.device("cpu")
    rows = []
    for h_kv in kv_heads:
        cfg = ModelConfig(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                          n_kv_heads=h_kv, max_seq_len=context + new_tokens + 1)
        torch.manual_seed(seed)
        base = DecoderLM(cfg).to(device).eval()
        g = torch.Generator().manual_seed(seed)
        cache = make_cache(base, batch, context + new_tokens + 1)
        shape = (batch, h_kv, context, cfg.head_dim)
        for layer in range(n_layers):       # a full cache of random keys and values
            cache.update(torch.randn(shape, generator=g).to(device), torch.randn(shape, generator=g).to(device), layer)
        first = torch.randint(vocab_size, (batch, 1), generator=g).to(device)
        tokens = {}
        for impl in implementations:
            model = DecoderLM(cfg.replace(attn_implementation=impl)).to(device).eval()
            model.load_state_dict(base.state_dict())

            def decode():
                cache.crop(context)
                ids, out = first, []
                for _ in range(new_tokens):
                    ids = model(ids, cache=cache)[:, -1].argmax(-1, keepdim=True)
                    out.append(ids)
                return torch.cat(out, dim=1)

            seconds, tokens[impl] = _timed(decode, repeats, device)
            rows.append(dict(kv_heads=h_kv, implementation=impl, ms_per_step=1e3 * seconds / new_tokens,
                             cache_mb=2 * n_layers * batch * h_kv * cfg.head_dim * context * 4 / 1e6,
                             weights_mb=base.num_parameters() * 4 / 1e6))
        same = all(torch.equal(t, tokens[implementations[0]]) for t in tokens.values())
        for row in rows[-len(implementations):]:
            row["tokens_identical"] = same
    config = dict(d_model=d_model, n_layers=n_layers, n_heads=n_heads, kv_heads=list(kv_heads), batch=batch,
                  context=context, new_tokens=new_tokens, repeats=repeats, dtype="float32",
                  threads=torch.get_num_threads(), device=str(device))
    machine = dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                   torch=torch.__version__, cpu_count=__import__("os").cpu_count())
    return {"rows": rows, "config": config, "machine": machine}


def gqa_table(result: dict) -> str:
    """The rows of :func:`gqa_benchmark` as a Markdown table, with each step time relative to MHA."""
    rows = result["rows"]
    mha = {r["implementation"]: r["ms_per_step"] for r in rows if r["kv_heads"] == max(x["kv_heads"] for x in rows)}
    lines = ["| K/V heads | implementation | cache, MB | ms per step | speed-up vs MHA | same tokens |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['kv_heads']} | {r['implementation']} | {r['cache_mb']:.0f} | {r['ms_per_step']:.1f} | "
                     f"{mha[r['implementation']] / r['ms_per_step']:.2f}× | {r['tokens_identical']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.generation",
        description="Chapter 4: decoding speed with and without the KV cache, and against the number of K/V heads.")
    parser.add_argument("--bench", action="store_true", help="cached vs uncached decoding (identical tokens)")
    parser.add_argument("--bench-gqa", action="store_true", help="decode step time against K/V heads")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=None, help="default: 4 (--bench), 8 (--bench-gqa)")
    parser.add_argument("--kv-heads", type=int, default=None, help="--bench: K/V heads of the model")
    parser.add_argument("--prompt", type=int, default=128, help="--bench: prompt length")
    parser.add_argument("--new", type=int, default=None, help="new tokens (default: 256 --bench, 16 --bench-gqa)")
    parser.add_argument("--batch", type=int, default=None, help="default: 1 (--bench), 32 (--bench-gqa)")
    parser.add_argument("--context", type=int, default=2048, help="--bench-gqa: tokens in the cache")
    parser.add_argument("--repeats", type=int, default=None, help="default: 1 (--bench), 3 (--bench-gqa)")
    parser.add_argument("--device", default=None, help="default: cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=str(RESULTS / "gqa_decode.json"), help="--bench-gqa: the JSON written")
    args = parser.parse_args(argv)
    if not (args.bench or args.bench_gqa):
        parser.print_help()
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    ok = True
    if args.bench:
        r = decode_benchmark(args.d_model, args.layers, args.heads or 4, args.kv_heads, args.prompt, args.new or 256,
                             args.batch or 1, device=args.device, repeats=args.repeats or 1)
        c = r["config"]
        print(f"model: d_model={c['d_model']}, layers={c['n_layers']}, heads={c['n_heads']}, "
              f"kv_heads={c['n_kv_heads'] or c['n_heads']}; prompt {c['prompt_len']}, {c['new_tokens']} new tokens, "
              f"batch {c['batch']}; {c['device']}, {c['threads']} threads")
        print(f"without cache: {r['uncached_s']:.2f} s  ({r['uncached_tok_per_s']:.0f} tokens/s)")
        print(f"with cache:    {r['cached_s']:.2f} s  ({r['cached_tok_per_s']:.0f} tokens/s)")
        print(f"speed-up: {r['speedup']:.1f}x   identical tokens: {r['identical']}")
        ok &= r["identical"]
    if args.bench_gqa:
        heads = args.heads or 8
        kv = tuple(h for h in (8, 4, 2, 1) if heads % h == 0 and h <= heads)
        r = gqa_benchmark(args.d_model, args.layers, heads, kv, args.batch or 32, args.context, args.new or 16,
                          repeats=args.repeats or 3, device=args.device)
        r["command"] = "python -m course_lib.generation " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
        c = r["config"]
        print(f"d_model {c['d_model']}, {c['n_layers']} layers, {c['n_heads']} heads, batch {c['batch']}, "
              f"context {c['context']}, fp32, {c['device']}, {c['threads']} threads")
        print(gqa_table(r))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(r, indent=1) + "\n")
        print("wrote", args.out)
        ok &= all(row["tokens_identical"] for row in r["rows"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
