"""Checks for Exercise 13 (assembling modern LLMs).

Tasks, in the order of the exercise notebook:

1. ``softcap(x, cap)`` — Gemma-2's ``cap · tanh(x / cap)``;
2. ``capped_scores(scores, mask, cap)`` — soft-capped attention scores, masked keys at −inf;
3. ``llama_cfg`` — a LLaMA-3-style ``ModelConfig`` built from a description;
4. ``count_params(spec)`` — the parameter count of a published model by formula;
5. ``local_layers(n_layers)`` — which layers of Gemma-2 use the sliding window.

References: ``course_lib.attention.softcap``, ``course_lib.model.count_parameters``
and ``course_lib.model.ModelConfig.layer_window``; a wrong answer is compared with the known
wrong answers (no rescaling by σ, capped after the mask, K/V heads counted as query heads, …).
"""

from __future__ import annotations

import torch

from course_lib.architectures import PUBLISHED, gemma2_config
from course_lib.attention import softcap as reference_softcap
from course_lib.grading import call_student, expect_close, expect_number, expect_tensor, passed
from course_lib.model import ModelConfig, count_parameters

__all__ = [
    "LLAMA_DESCRIPTION",
    "check_softcap",
    "check_capped_scores",
    "check_llama_config",
    "check_count_params",
    "check_local_layers",
]


# ----------------------------------------------------------------------------- task 1
def check_softcap(softcap_fn) -> None:
    """Task 1: ``softcap(x, cap) = cap · tanh(x / cap)``, same shape and dtype as x."""
    g = torch.Generator().manual_seed(13)
    cases = [(torch.randn(5, 7, generator=g, dtype=torch.float64) * 80, 50.0),
             (torch.randn(3, 4, 6, generator=g) * 60, 30.0),
             (torch.linspace(-200, 200, 41, dtype=torch.float64), 50.0),
             (torch.randn(10, generator=g) * 0.01, 1.0),
             (torch.randn(2, 9, generator=g, dtype=torch.float64) * 5, 2.5)]
    for x, cap in cases:
        name = f"softcap(x of shape {tuple(x.shape)}, cap={cap:g})"
        got = expect_tensor(name, call_student(softcap_fn, x.clone(), cap, name="softcap"), tuple(x.shape), x.dtype)
        want = reference_softcap(x, cap)
        expect_close(name, got, want, mistakes={
            "tanh without rescaling by σ: cap · tanh(x / cap) lies in (−cap, cap); "
            "tanh(x / cap) alone lies in (−1, 1)": torch.tanh(x / cap),
            "tanh(x) · cap: divide by the cap inside tanh, cap · tanh(x / cap)": cap * torch.tanh(x),
            "tanh(x) without the cap at all: use cap · tanh(x / cap)": torch.tanh(x),
            "hard clipping (clamp): soft-capping is the smooth cap · tanh(x / cap)": x.clamp(-cap, cap),
        })
    passed("softcap", len(cases))


# ----------------------------------------------------------------------------- task 2
def check_capped_scores(capped_scores_fn) -> None:
    """Task 2: ``masked_fill(softcap(scores, cap), ~mask, −inf)`` — cap first, then mask."""
    g = torch.Generator().manual_seed(131)
    cases = [(6, 6, 50.0, False), (4, 9, 30.0, False), (7, 7, 5.0, True), (1, 5, 50.0, True)]
    for T, S, cap, window in cases:
        scores = torch.randn(2, 3, T, S, generator=g) * 2 * cap
        mask = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)
        if window:
            mask &= ~torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T - 3)
        name = f"capped_scores(scores {tuple(scores.shape)}, mask {tuple(mask.shape)}, cap={cap:g})"
        got = call_student(capped_scores_fn, scores.clone(), mask.clone(), cap, name="capped_scores")
        got = expect_tensor(name, got, tuple(scores.shape), scores.dtype)
        want = reference_softcap(scores, cap).masked_fill(~mask, float("-inf"))
        expect_close(name, got, want, mistakes={
            "capped after the mask: cap · tanh(−inf / cap) = −cap, so masked keys get a finite score "
            "and some weight; cap first, then set masked scores to −inf":
                reference_softcap(scores.masked_fill(~mask, float("-inf")), cap),
            "mask inverted: True = may attend, so fill −inf where the mask is False":
                reference_softcap(scores, cap).masked_fill(mask, float("-inf")),
            "not capped: apply cap · tanh(scores / cap) before masking": scores.masked_fill(~mask, float("-inf")),
            "tanh without rescaling by σ (values in (−1, 1))":
                torch.tanh(scores / cap).masked_fill(~mask, float("-inf")),
            "masked with 0 instead of −inf: exp(0) = 1 gives masked keys weight":
                reference_softcap(scores, cap).masked_fill(~mask, 0.0),
        })
    passed("capped_scores", len(cases))


# ----------------------------------------------------------------------------- task 3
LLAMA_DESCRIPTION = dict(
    vocab_size=96, d_model=64, n_layers=4, n_heads=8, n_kv_heads=2, max_seq_len=256, norm="rmsnorm",
    norm_placement="pre", pos_encoding="rope", rope_base=500000.0, ffn="swiglu", bias=False, dropout=0.0,
    tie_embeddings=False, n_experts=0, window=None,
)
_FIELD_HINTS = {
    "n_kv_heads": "GQA: 2 K/V heads shared by the 8 query heads (n_kv_heads=2; None would be MHA)",
    "norm": "LLaMA normalizes with RMSNorm (norm='rmsnorm')",
    "norm_placement": "LLaMA normalizes before each sub-layer (norm_placement='pre')",
    "pos_encoding": "LLaMA rotates q and k: pos_encoding='rope'",
    "rope_base": "LLaMA-3 raised RoPE's base to 500 000 (rope_base=500000.0)",
    "ffn": "LLaMA's FFN is SwiGLU (ffn='swiglu')",
    "bias": "LLaMA has no biases (bias=False)",
    "dropout": "LLaMA trains without dropout (dropout=0.0)",
    "tie_embeddings": "LLaMA's output head is a separate matrix (tie_embeddings=False)",
}


def check_llama_config(config) -> None:
    """Task 3: a ``ModelConfig`` with every field of :data:`LLAMA_DESCRIPTION`."""
    if config is None or config is NotImplemented:
        raise AssertionError("llama_cfg is not implemented yet: replace `None` with a ModelConfig(...)")
    if not isinstance(config, ModelConfig):
        raise AssertionError(f"llama_cfg: expected a course_lib.model.ModelConfig; got {type(config).__name__}")
    n = 0
    for field, want in LLAMA_DESCRIPTION.items():
        got = getattr(config, field)
        n += 1
        if got != want:
            if field == "n_kv_heads" and got in (None, config.n_heads):
                raise AssertionError("llama_cfg.n_kv_heads: kv heads counted as query heads — with "
                                     f"{config.n_heads} K/V heads this is MHA; LLaMA-3 shares each K/V head "
                                     "among 4 query heads (n_kv_heads=2)")
            hint = _FIELD_HINTS.get(field, "see the description")
            raise AssertionError(f"llama_cfg.{field}: expected {want!r}; got {got!r} ({hint})")
    passed("llama_config", n)


# ----------------------------------------------------------------------------- task 4
def _toy_specs() -> dict:
    return {
        "toy-untied-gqa": dict(vocab_size=100, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8,
                               d_ff=96, ffn="swiglu", norm="rmsnorm", pos_encoding="rope", bias=False,
                               tie_embeddings=False, max_seq_len=64),
        "toy-sandwich": dict(vocab_size=50, d_model=24, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16,
                             d_ff=64, ffn="geglu", norm="rmsnorm", norm_placement="sandwich", pos_encoding="rope",
                             bias=False, tie_embeddings=True, max_seq_len=64),
    }


def spec_of(**config_kwargs) -> dict:
    """The spec a student's ``count_params`` receives: a ``ModelConfig``'s fields, every one resolved."""
    return ModelConfig(**config_kwargs).to_dict()


def _count(spec: dict) -> int:
    return count_parameters(ModelConfig(**spec))


def _variant(spec: dict, **changes) -> int | None:
    alt = {**spec, **changes}
    if alt == spec:
        return None
    return _count(alt)


def check_count_params(count_params_fn) -> None:
    """Task 4: the total parameters of a model described by a spec dict (a resolved ``ModelConfig``'s fields)."""
    kwargs = {**_toy_specs(), **{k: PUBLISHED[k] for k in ("gpt2-small", "llama-3-8b", "mistral-7b", "gemma-2-9b")}}
    for key, kw in kwargs.items():
        spec = spec_of(**kw)
        name = f"count_params({key})"
        got = expect_number(name, call_student(count_params_fn, dict(spec), name="count_params"))
        want = _count(spec)
        if got == want:
            continue
        d, h = spec["d_model"], spec["n_heads"]
        sandwich, learned = spec["norm_placement"] == "sandwich", spec["pos_encoding"] == "learned"
        mistakes = {
            "kv heads counted as query heads: K and V have n_kv_heads · head_dim outputs each, not n_heads · head_dim":
                _variant(spec, n_kv_heads=h),
            "untied head counted once: an untied output head adds another vocab_size · d_model":
                _variant(spec, tie_embeddings=True),
            "tied head counted twice: a tied head reuses the embedding matrix":
                _variant(spec, tie_embeddings=False),
            "sandwich norms forgotten: Gemma-2 has 4 norms per layer (before and after attention and FFN)":
                _variant(spec, norm_placement="pre"),
            "head_dim taken as d_model / n_heads: use the spec's head_dim (Gemma-2: 16 · 256 = 4096 ≠ 3584)":
                _variant(spec, head_dim=d // h),
            "GLU FFN counted as two matrices: SwiGLU/GeGLU have three (gate, up, down): 3 · d · d_ff":
                (want - spec["n_layers"] * spec["d_ff"] * d)
                if spec["ffn"] in ("swiglu", "geglu") and not spec["bias"] else None,
            "learned positions forgotten: GPT-2 has a max_seq_len · d_model position table":
                (want - spec["max_seq_len"] * d) if learned else None,
            "norms forgotten: count every norm's γ (and LayerNorm's β), 2 per layer (4 with the sandwich) + the final one":
                want - (spec["n_layers"] * (4 if sandwich else 2) + 1) * d * (2 if spec["norm"] == "layernorm" else 1),
        }
        for message, alt in mistakes.items():
            if alt is not None and got == alt:
                raise AssertionError(f"{name}: {message}")
        raise AssertionError(f"{name}: expected {want:,}; got {got:,.0f} (off by {got - want:+,.0f})")
    passed("count_params", len(kwargs))


# ----------------------------------------------------------------------------- task 5
def check_local_layers(local_layers_fn) -> None:
    """Task 5: the indices of Gemma-2's local (sliding-window) layers among ``n_layers``: 0, 2, 4, …"""
    cases = [42, 26, 46, 1, 2, 7]
    for n in cases:
        name = f"local_layers({n})"
        got = call_student(local_layers_fn, n, name="local_layers")
        if isinstance(got, torch.Tensor):
            got = got.tolist()
        try:
            got = [int(i) for i in got]
        except (TypeError, ValueError):
            raise AssertionError(f"{name}: expected a list of layer indices; got {type(got).__name__}") from None
        cfg = gemma2_config(n_layers=n)
        want = [i for i in range(n) if cfg.layer_window(i) is not None]
        if got == want:
            continue
        if got == [i for i in range(n) if i % 2 == 1]:
            raise AssertionError(f"{name}: local/global alternation off by one: layer 0 is local in Gemma-2 "
                                 "(the even 0-based layers 0, 2, 4, … use the window; the odd ones are global)")
        if got == list(range(n)):
            raise AssertionError(f"{name}: every layer local is Mistral; Gemma-2 alternates local and global layers")
        raise AssertionError(f"{name}: expected {want}; got {got}")
    passed("local_layers", len(cases))
