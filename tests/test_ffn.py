"""course_lib.ffn: activations against torch, GLU variants against a hand-written LLaMA MLP and
nn.Linear compositions, the position-wise property, parameter counts and FLOPs by formula,
LLaMA's hidden-size rule, the model's ``ffn`` field, and the ValueErrors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from course_lib.ffn import (
    ACTIVATIONS,
    FFN_KINDS,
    GLU_VARIANTS,
    FeedForward,
    GatedFeedForward,
    build_feed_forward,
    ffn_flops_per_token,
    ffn_num_parameters,
    gelu,
    glu_hidden_dim,
    silu,
)
from course_lib.model import DecoderLM, ModelConfig, build_ffn


def close(a, b, atol=1e-6, rtol=1e-5):
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


# ----------------------------------------------------------------------------- activations
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gelu_matches_torch(dtype):
    x = torch.linspace(-8, 8, 1001, dtype=dtype)
    close(gelu(x), F.gelu(x))
    close(gelu(x, approximate="tanh"), F.gelu(x, approximate="tanh"))
    # the tanh form is an approximation: close to, but not equal to, the exact erf form
    err = (gelu(x, "tanh") - gelu(x)).abs().max().item()
    assert 1e-5 < err < 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_silu_matches_torch(dtype):
    x = torch.linspace(-10, 10, 1001, dtype=dtype)
    close(silu(x), F.silu(x))
    close(silu(x, beta=1.702), x * torch.sigmoid(1.702 * x))
    close(silu(x, beta=50.0), F.relu(x), atol=1e-2, rtol=0)          # β → ∞: ReLU
    assert silu(x).min().item() < -0.27                               # not monotone: min ≈ −0.278


def test_activation_errors():
    with pytest.raises(ValueError, match="approximate: expected 'none' or 'tanh'; got 'erf'"):
        gelu(torch.zeros(3), approximate="erf")
    with pytest.raises(ValueError, match="x: expected a floating dtype; got torch.int64"):
        silu(torch.arange(3))
    with pytest.raises(ValueError, match="x: expected a torch.Tensor; got list"):
        gelu([1.0])


# ----------------------------------------------------------------------------- GLU variants
class LlamaMLP(nn.Module):
    """Hand-written, as in Hugging Face's modeling_llama: down(act(gate(x)) * up(x)), no biases."""

    def __init__(self, d, h):
        super().__init__()
        self.gate_proj = nn.Linear(d, h, bias=False)
        self.up_proj = nn.Linear(d, h, bias=False)
        self.down_proj = nn.Linear(h, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def test_swiglu_matches_llama_mlp():
    torch.manual_seed(0)
    ref = LlamaMLP(16, 40)
    ours = GatedFeedForward(16, 40, variant="swiglu")
    ours.load_state_dict(ref.state_dict())                            # same parameter names
    x = torch.randn(3, 7, 16)
    close(ours(x), ref(x))


@pytest.mark.parametrize("variant, act", [
    ("glu", torch.sigmoid), ("bilinear", lambda t: t), ("reglu", F.relu), ("geglu", F.gelu), ("swiglu", F.silu),
])
@pytest.mark.parametrize("bias", [False, True])
def test_glu_variants_match_formula(variant, act, bias):
    torch.manual_seed(1)
    f = GatedFeedForward(8, 12, variant=variant, bias=bias)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    f = f.double()
    W, V, U = f.gate_proj, f.up_proj, f.down_proj
    want = (act(x @ W.weight.T + (W.bias if bias else 0)) * (x @ V.weight.T + (V.bias if bias else 0))) @ U.weight.T
    if bias:
        want = want + U.bias
    close(f(x), want, atol=1e-12, rtol=1e-10)
    # gate and up are not interchangeable (except for the bilinear variant)
    swapped = U(act(V(x)) * W(x))
    assert torch.allclose(f(x), swapped) == (variant == "bilinear")


@pytest.mark.parametrize("kind", ["relu", "gelu"])
def test_standard_ffn_is_linear_composition(kind):
    torch.manual_seed(2)
    f = build_feed_forward(kind, 6, 10)
    assert isinstance(f, FeedForward)
    x = torch.randn(4, 6)
    close(f(x), f.down_proj(ACTIVATIONS[kind](f.up_proj(x))))


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(FFN_KINDS), B=st.integers(1, 3), T=st.integers(1, 9), d=st.integers(1, 12),
       h=st.integers(1, 20), bias=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_position_wise(kind, B, T, d, h, bias, dtype):
    """The FFN of a sequence equals the FFN applied to each position on its own (and to a shuffle)."""
    torch.manual_seed(B * 100 + T)
    f = build_feed_forward(kind, d, h, bias=bias, dtype=dtype)
    x = torch.randn(B, T, d, dtype=dtype)
    y = f(x)
    assert y.shape == x.shape and y.dtype == dtype
    per_position = torch.stack([f(x[:, t]) for t in range(T)], dim=1)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    close(y, per_position, atol=tol, rtol=tol)
    perm = torch.randperm(T)
    close(f(x[:, perm]), y[:, perm], atol=tol, rtol=tol)
    assert sum(p.numel() for p in f.parameters()) == ffn_num_parameters(d, h, kind, bias)


# ----------------------------------------------------------------------------- sizes and costs
def test_glu_hidden_dim_llama():
    assert glu_hidden_dim(4096) == 11008                              # LLaMA-7B
    assert glu_hidden_dim(5120) == 13824                              # LLaMA-13B
    assert glu_hidden_dim(6656) == 17920                              # LLaMA-33B
    assert glu_hidden_dim(8192) == 22016                              # LLaMA-65B
    assert glu_hidden_dim(8192, multiple_of=4096, ffn_dim_multiplier=1.3) == 28672   # LLaMA-2 70B
    assert glu_hidden_dim(4096, multiple_of=1024, ffn_dim_multiplier=1.3) == 14336   # LLaMA-3 8B


@settings(max_examples=50, deadline=None)
@given(d=st.integers(1, 10_000), m=st.sampled_from([1, 8, 64, 128, 256]))
def test_glu_hidden_dim_properties(d, m):
    h = glu_hidden_dim(d, multiple_of=m)
    assert h % m == 0
    assert 8 * d / 3 - 1 <= h < 8 * d / 3 + m                        # 8/3·d rounded up to the multiple
    # GLU with that width has at least (and about) the weights of a 4d FFN
    assert 3 * d * h >= ffn_num_parameters(d, 4 * d, "gelu", bias=False) - 3 * d
    assert 3 * d * h <= 2 * d * 4 * d + 3 * d * m


def test_parameter_matching_exact_when_divisible():
    d = 3 * 64
    h = 8 * d // 3
    assert glu_hidden_dim(d, multiple_of=64) == h
    assert ffn_num_parameters(d, h, "swiglu", bias=False) == ffn_num_parameters(d, 4 * d, "gelu", bias=False)
    assert ffn_flops_per_token(d, h, "swiglu") == ffn_flops_per_token(d, 4 * d, "gelu") == 8 * d * d * 2


@pytest.mark.parametrize("kind", FFN_KINDS)
def test_counts_match_the_modules(kind):
    for bias in (False, True):
        f = build_feed_forward(kind, 10, 14, bias=bias)
        assert sum(p.numel() for p in f.parameters()) == ffn_num_parameters(10, 14, kind, bias)
    assert ffn_flops_per_token(10, 14, kind) == (6 if kind in GLU_VARIANTS else 4) * 140


def test_flops_are_two_per_multiply_add():
    from torch.utils.flop_counter import FlopCounterMode
    for kind in ("gelu", "swiglu"):
        f = build_feed_forward(kind, 32, 48, bias=False)
        x = torch.randn(5, 32)
        with FlopCounterMode(display=False) as counter:
            f(x)
        assert counter.get_total_flops() == 5 * ffn_flops_per_token(32, 48, kind)


def test_defaults():
    assert FeedForward(6).d_ff == 24
    assert GatedFeedForward(4096 // 64).d_ff == glu_hidden_dim(64) == 256
    assert build_feed_forward("swiglu", 48).d_ff == 256
    g = GatedFeedForward(8)
    assert g.gate_proj.bias is None and g.up_proj.bias is None and g.down_proj.bias is None


# ----------------------------------------------------------------------------- the model's ffn field
@pytest.mark.parametrize("kind", FFN_KINDS)
def test_model_ffn_field(kind):
    cfg = ModelConfig(vocab_size=20, d_model=24, n_heads=2, n_layers=1, max_seq_len=16, ffn=kind)
    f = build_ffn(cfg)
    if kind in GLU_VARIANTS:
        assert isinstance(f, GatedFeedForward) and f.variant == kind and f.d_ff == glu_hidden_dim(24, multiple_of=64)
    else:
        assert isinstance(f, FeedForward) and f.activation == kind and f.d_ff == 96
    m = DecoderLM(cfg)
    assert m(torch.randint(0, 20, (2, 5))).shape == (2, 5, 20)
    assert ModelConfig(vocab_size=20).ffn == "gelu"                   # GPT-2's default is unchanged
    assert build_ffn(ModelConfig(vocab_size=20, d_model=24, n_heads=2, ffn="swiglu", d_ff=40)).d_ff == 40


# ----------------------------------------------------------------------------- errors
def test_errors():
    with pytest.raises(ValueError, match="variant: expected one of .*; got 'swish'"):
        GatedFeedForward(4, 8, variant="swish")
    with pytest.raises(ValueError, match="d_ff: expected an integer ≥ 1; got 0"):
        GatedFeedForward(4, 0)
    with pytest.raises(ValueError, match="d_model: expected an integer ≥ 1; got 2.5"):
        GatedFeedForward(2.5, 8)
    with pytest.raises(ValueError, match=r"dropout: expected a probability in \[0, 1\); got 1.0"):
        GatedFeedForward(4, 8, dropout=1.0)
    with pytest.raises(ValueError, match="kind: expected one of .*; got 'tanh'"):
        build_feed_forward("tanh", 4)
    with pytest.raises(ValueError, match="kind: expected one of"):
        ffn_num_parameters(4, 8, "swish")
    with pytest.raises(ValueError, match="multiple_of: expected an integer ≥ 1; got 0"):
        glu_hidden_dim(64, multiple_of=0)
    with pytest.raises(ValueError, match="ffn_dim_multiplier: expected a number > 0; got -1"):
        glu_hidden_dim(64, ffn_dim_multiplier=-1)
    with pytest.raises(ValueError, match="d_ff: expected an integer ≥ 1; got -3"):
        ffn_flops_per_token(4, -3)
    with pytest.raises(ValueError, match="ffn: expected one of .*; got 'swish'"):
        ModelConfig(vocab_size=10, ffn="swish")
