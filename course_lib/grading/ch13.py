"""Checks for Exercise 13 (assembling modern LLMs).

Tasks, in the order of the exercise notebook:

1. ``softcap(x, cap)`` — Gemma-2's ``cap · tanh(x / cap)``;
2. ``capped_scores(scores, mask, cap)`` — soft-capped attention scores, masked keys at −inf;
3. ``llama_cfg`` — a LLaMA-3-style ``ModelConfig`` built from a description;
4. ``count_params(spec)`` — the parameter count of a published model by formula;
5. ``local_layers(n_layers)`` — which layers of Gemma-2 use the sliding window;
6. (transfer) ``qwen2_config(hf)`` — a released Qwen2 ``config.json`` (a dict) → ``ModelConfig``, compared
   field by field with ``course_lib.pretrained.config_from_hf``, counted against the released checkpoints
   (7B, 1.5B, 0.5B); two unseen Qwen2-shaped configs drawn in the check;
7. (transfer) ``max_context(config, memory_bytes, batch, bytes_per_elem)`` — the longest context whose KV
   cache fits next to the weights, for published models (GQA, Gemma-2's head width, MHA).

References: ``course_lib.attention.softcap``, ``course_lib.model.count_parameters``,
``course_lib.model.ModelConfig.layer_window`` and ``course_lib.pretrained.config_from_hf``; an answer
that calls the reference of its task is refused (:mod:`course_lib.grading.forbid`); a wrong
answer is compared with the known wrong answers (no rescaling by σ, capped after the mask, K/V heads
counted as query heads, qkv biases missing, the window of an unused ``sliding_window`` taken, …).
"""

from __future__ import annotations

import math

import torch

from course_lib import attention, model
from course_lib.architectures import PUBLISHED, gemma2_config
from course_lib.attention import softcap as reference_softcap
from course_lib.grading import call_student, expect_close, expect_number, expect_tensor, passed
from course_lib.grading.forbid import call_without_library
from course_lib.model import ModelConfig, count_parameters

__all__ = [
    "LLAMA_DESCRIPTION",
    "check_softcap",
    "check_capped_scores",
    "check_llama_config",
    "check_count_params",
    "check_local_layers",
    "check_qwen2_config",
    "check_max_context",
    "QWEN2_CONFIGS",
    "QWEN2_TOTALS",
    "CONTEXT_CASES",
]


def _library(task: str) -> list[tuple[object, str]]:
    """The library functions a task's check compares with: calling them scores nothing. (Task 7 may use
    ``count_parameters``: the weights are its input, the cache is the task.)"""
    if task == "qwen2_config":
        from course_lib import pretrained
        return [(pretrained, "config_from_hf")]
    return {
        "softcap": [(attention, "softcap")],
        "capped_scores": [(attention, "softcap")],
        "count_params": [(model, "count_parameters"), (model, "DecoderLM")],
        "local_layers": [(ModelConfig, "layer_window")],
    }[task]


def _call(task: str, fn, *args, **kwargs):
    """The student's function, with the library functions of ``task`` forbidden."""
    return call_without_library(fn, _library(task), *args, name=task, **kwargs)


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
        got = expect_tensor(name, _call("softcap", softcap_fn, x.clone(), cap), tuple(x.shape), x.dtype)
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
        got = _call("capped_scores", capped_scores_fn, scores.clone(), mask.clone(), cap)
        got = expect_tensor(name, got, tuple(scores.shape), scores.dtype)
        want = reference_softcap(scores, cap).masked_fill(~mask, float("-inf"))
        finite_fill = got[..., ~mask]
        if (~mask).any() and torch.isfinite(finite_fill).all() and (finite_fill <= -1e4).all() and torch.allclose(
                got[..., mask], want[..., mask], atol=1e-5, rtol=1e-4):
            raise AssertionError(f"{name}: masked scores filled with a large finite number ({finite_fill.max():g}) "
                                 "instead of −inf: exp(−inf) is exactly 0, a finite fill only nearly so (and it "
                                 "turns a fully masked row into a uniform one where −inf makes it NaN)")
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
        got = expect_number(name, _call("count_params", count_params_fn, dict(spec)))
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
        got = _call("local_layers", local_layers_fn, n)
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


# ----------------------------------------------------------------------------- task 6 (transfer)
# config.json of the released Qwen2 base models (Yang et al., 2024), the fields a loader reads
_QWEN2_COMMON = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_act="silu", rms_norm_eps=1e-06,
                     rope_theta=1000000.0, max_position_embeddings=131072, sliding_window=131072,
                     use_sliding_window=False, attention_dropout=0.0, initializer_range=0.02,
                     bos_token_id=151643, eos_token_id=151643, torch_dtype="bfloat16", use_cache=True)
QWEN2_CONFIGS = {
    "Qwen2-7B": dict(_QWEN2_COMMON, vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                     num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, max_window_layers=28,
                     tie_word_embeddings=False),
    "Qwen2-1.5B": dict(_QWEN2_COMMON, vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                       num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, max_window_layers=28,
                       tie_word_embeddings=True),
    "Qwen2-0.5B": dict(_QWEN2_COMMON, vocab_size=151936, hidden_size=896, intermediate_size=4864,
                       num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, max_window_layers=24,
                       tie_word_embeddings=True),
}
#: the parameter counts of the released checkpoints (the sum of their tensors' sizes)
QWEN2_TOTALS = {"Qwen2-7B": 7_615_616_512, "Qwen2-1.5B": 1_543_714_304, "Qwen2-0.5B": 494_032_768}

_QWEN2_HINTS = {
    "d_model": "hidden_size is the width of the residual stream: d_model",
    "n_layers": "num_hidden_layers → n_layers",
    "n_heads": "num_attention_heads → n_heads",
    "n_kv_heads": "num_key_value_heads → n_kv_heads (Qwen2 uses GQA; left out, every query head gets its own K/V "
                  "head)",
    "head_dim": "head_dim = hidden_size / num_attention_heads (Qwen2's config has no head_dim field)",
    "max_seq_len": "max_position_embeddings → max_seq_len",
    "d_ff": "intermediate_size is the FFN's hidden width: d_ff",
    "ffn": "hidden_act 'silu' in LLaMA's gated FFN is SwiGLU: ffn='swiglu'",
    "pos_encoding": "Qwen2 rotates q and k: pos_encoding='rope'",
    "rope_base": "rope_theta is RoPE's base: rope_base",
    "norm": "Qwen2 normalizes with RMSNorm: norm='rmsnorm'",
    "norm_eps": "rms_norm_eps → norm_eps",
    "norm_placement": "Qwen2 is a pre-norm model: norm_placement='pre'",
    "bias": "bias=True puts biases on every linear map; Qwen2 has them on q, k, v only: bias=False, qkv_bias=True",
    "qkv_bias": "Qwen2's q, k and v projections have biases (its only ones): qkv_bias=True, bias=False",
    "tie_embeddings": "tie_word_embeddings → tie_embeddings: the small Qwen2 models tie the head, 7B does not; "
                      "read it from the config",
    "window": "sliding_window is set, but use_sliding_window is false: full attention, window=None",
    "dropout": "no dropout at inference or in Qwen2's pre-training: dropout=0.0",
    "vocab_size": "vocab_size → vocab_size (it differs between the models: 152064 vs 151936)",
}


def _qwen2_toy(g: torch.Generator, i: int) -> dict:
    """A Qwen2-shaped config.json the sheet never prints (GQA, sizes drawn with ``g``)."""
    n_kv = int(torch.randint(1, 4, (1,), generator=g))
    n_heads = n_kv * int(torch.randint(1, 5, (1,), generator=g))
    head_dim = 8 * int(torch.randint(1, 5, (1,), generator=g))
    return dict(_QWEN2_COMMON, vocab_size=int(torch.randint(50, 400, (1,), generator=g)),
                hidden_size=n_heads * head_dim, intermediate_size=int(torch.randint(16, 200, (1,), generator=g)),
                num_hidden_layers=int(torch.randint(1, 6, (1,), generator=g)), num_attention_heads=n_heads,
                num_key_value_heads=n_kv, max_position_embeddings=int(torch.randint(64, 4096, (1,), generator=g)),
                rope_theta=[10000.0, 1e6][i % 2], rms_norm_eps=[1e-6, 1e-5][i % 2], tie_word_embeddings=i % 2 == 0,
                max_window_layers=1)


def check_qwen2_config(qwen2_config_fn) -> None:
    """Task 6: a Qwen2 ``config.json`` dict → ``ModelConfig``: field by field against
    ``course_lib.pretrained.config_from_hf``, and the count against the released checkpoints' totals
    (tests/test_checks_ch13.py builds the models on the ``meta`` device: the same totals)."""
    from course_lib.pretrained import config_from_hf

    g = torch.Generator().manual_seed(1306)
    cases = list(QWEN2_CONFIGS.items()) + [(f"an unseen Qwen2-shaped config #{i + 1}", _qwen2_toy(g, i))
                                           for i in range(2)]
    for what, hf in cases:
        name = f"qwen2_config({what})"
        got = _call("qwen2_config", qwen2_config_fn, dict(hf))
        if not isinstance(got, ModelConfig):
            raise AssertionError(f"{name}: expected a course_lib.model.ModelConfig; got {type(got).__name__}")
        want = config_from_hf(hf)
        for field, value in want.to_dict().items():
            if field in ("attn_implementation", "attn_scale"):
                continue                                    # derived by ModelConfig itself
            if getattr(got, field) != value:
                hint = _QWEN2_HINTS.get(field, "see the table in the task")
                raise AssertionError(f"{name}.{field}: expected {value!r}; got {getattr(got, field)!r} ({hint})")
        n = count_parameters(got)
        if what in QWEN2_TOTALS and n != QWEN2_TOTALS[what]:
            raise AssertionError(f"{name}: count_parameters gives {n:,}; the released checkpoint has "
                                 f"{QWEN2_TOTALS[what]:,}")
    passed("qwen2_config", len(cases))


# ----------------------------------------------------------------------------- task 7 (transfer)
def _max_context(config: ModelConfig, memory_bytes: int, batch: int, bytes_per_elem: int, *,
                 kv_heads=None, head_dim=None, factor_kv=2, weights=True, per_batch=True, rounding=math.floor,
                 layers=True, capped=True) -> int:
    """Tokens per sequence whose full KV cache fits next to the weights, at most ``max_seq_len``; with the
    known mistakes."""
    kv_heads = config.n_kv_heads if kv_heads is None else kv_heads
    head_dim = config.head_dim if head_dim is None else head_dim
    per_token = factor_kv * (config.n_layers if layers else 1) * kv_heads * head_dim * bytes_per_elem
    free = memory_bytes - (count_parameters(config) * bytes_per_elem if weights else 0)
    tokens = max(0, int(rounding(free / (per_token * (batch if per_batch else 1)))))
    return min(tokens, config.max_seq_len) if capped else tokens


CONTEXT_CASES = {
    # what: (published model, memory in GiB, batch, bytes per number)
    "LLaMA-3-8B, 24 GiB, batch 16, bf16": ("llama-3-8b", 24, 16, 2),
    "Gemma-2-9B, 19 GiB, batch 1, bf16": ("gemma-2-9b", 19, 1, 2),
    "GPT-2 small, 8 GiB, batch 32, fp32: more would fit than its 1024 positions": ("gpt2-small", 8, 32, 4),
    "LLaMA-3-8B, 14 GiB, bf16: the weights alone do not fit": ("llama-3-8b", 14, 1, 2),
}


def check_max_context(max_context_fn) -> None:
    """Task 7: the longest context (tokens per sequence, at most ``max_seq_len``) whose KV cache fits in
    memory next to the weights."""
    from course_lib.architectures import published_config
    from course_lib.pretrained import config_from_hf

    g = torch.Generator().manual_seed(1307)
    cases = [(what, published_config(model), gib, batch, nb) for what, (model, gib, batch, nb) in CONTEXT_CASES.items()]
    for i, model in enumerate(("Qwen2-7B", "mistral-7b", "Qwen2-0.5B")):      # not printed in the sheet
        cfg = config_from_hf(QWEN2_CONFIGS[model]) if model in QWEN2_CONFIGS else published_config(model)
        gib = [24, 16, 4][i]
        batch = int(torch.randint(3, 17, (1,), generator=g))
        cases.append((f"{model}, {gib} GiB, batch {batch}, bf16", cfg, gib, batch, 2))
    first_failure = None
    for what, cfg, gib, batch, nb in cases:
        name = f"max_context({what})"
        memory = gib * 2 ** 30
        got = expect_number(name, call_student(max_context_fn, cfg, memory, batch, nb, name="max_context"))
        want = _max_context(cfg, memory, batch, nb)
        if got == want:
            continue
        if got != int(got):
            raise AssertionError(f"{name}: expected a whole number of tokens; got {got!r}")
        mistakes = {
            "the cache counted with n_heads: only the n_kv_heads K/V heads are cached (GQA)":
                dict(kv_heads=cfg.n_heads),
            "head width taken as d_model / n_heads: use config.head_dim (Gemma-2 9B: 256, not 3584 / 16 = 224)":
                dict(head_dim=cfg.d_model // cfg.n_heads),
            "keys and values: a factor 2 is missing": dict(factor_kv=1),
            "the weights were not subtracted: they sit in the same memory": dict(weights=False),
            "the batch was ignored: every sequence of the batch has its own cache": dict(per_batch=False),
            "n_layers forgotten: every layer caches its own keys and values": dict(layers=False),
            "rounded up: a cache of that many tokens no longer fits; round down": dict(rounding=math.ceil),
            "not capped: the model has only max_seq_len positions, however much memory is left":
                dict(capped=False),
        }
        matching = [message for message, mistake in mistakes.items()
                    if got == _max_context(cfg, memory, batch, nb, **mistake) != want]
        if len(matching) == 1:
            raise AssertionError(f"{name}: {matching[0]}")
        if want == 0 and got < 0:
            raise AssertionError(f"{name}: the weights alone do not fit: no context fits, return 0; got {got:g}")
        failure = f"{name}: expected {want:,} tokens; got {got:,.0f}"
        if matching:                # several mistakes give this number here: a later case may tell them apart
            first_failure = first_failure or f"{failure}; likely one of: " + " | ".join(matching)
            continue
        raise AssertionError(first_failure or failure)
    if first_failure:
        raise AssertionError(first_failure)
    passed("max_context", len(cases))
