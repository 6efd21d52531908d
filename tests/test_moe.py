"""course_lib.moe: gating, dispatch == the definition, the balancing loss, capacity, parameter counts."""

from __future__ import annotations


import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib import moe
from course_lib.ffn import GatedFeedForward


def _experts(n, d, d_ff=8, kind="swiglu", dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return torch.nn.ModuleList(
        moe.build_feed_forward(kind, d, d_ff, bias=False, dtype=dtype) for _ in range(n))


# ----------------------------------------------------------------------------- gating
@settings(max_examples=30, deadline=None)
@given(T=st.integers(1, 20), n=st.integers(1, 9), data=st.data())
def test_top_k_gating_is_renormalised_softmax_of_top_k_logits(T, n, data):
    k = data.draw(st.integers(1, n))
    g = torch.Generator().manual_seed(T * 31 + n)
    logits = torch.randn(T, n, generator=g, dtype=torch.float64) * 3
    w, idx, p = moe.top_k_gating(logits, k)
    assert w.shape == idx.shape == (T, k) and p.shape == (T, n)
    torch.testing.assert_close(w.sum(-1), torch.ones(T, dtype=torch.float64))
    torch.testing.assert_close(p.sum(-1), torch.ones(T, dtype=torch.float64))
    # the chosen experts are the k largest logits, and the weights are softmax over those logits only
    want_idx = logits.argsort(-1, descending=True)[:, :k]
    assert torch.equal(idx, want_idx)
    torch.testing.assert_close(w, torch.softmax(logits.gather(-1, idx), -1))
    # Mixtral form == Switch form: the top-k probabilities divided by their sum
    torch.testing.assert_close(w, p.gather(-1, idx) / p.gather(-1, idx).sum(-1, keepdim=True))


def test_router_probs_is_softmax_over_experts_not_tokens():
    logits = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(moe.router_probs(logits), torch.softmax(logits, dim=-1))
    assert not torch.allclose(moe.router_probs(logits), torch.softmax(logits, dim=0))


# ----------------------------------------------------------------------------- dispatch
@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 17), n=st.integers(1, 6), d=st.integers(1, 7), data=st.data())
def test_dispatch_equals_naive_loop(T, n, d, data):
    k = data.draw(st.integers(1, n))
    kind = data.draw(st.sampled_from(["swiglu", "gelu", "relu"]))
    experts = _experts(n, d, kind=kind, seed=T + n + d)
    g = torch.Generator().manual_seed(T * 7 + n * 3 + d)
    x = torch.randn(T, d, generator=g, dtype=torch.float64)
    w, idx, _ = moe.top_k_gating(torch.randn(T, n, generator=g, dtype=torch.float64), k)
    torch.testing.assert_close(moe.moe_dispatch(x, w, idx, experts), moe.moe_naive(x, w, idx, experts))


def test_dispatch_float32_and_unused_experts():
    experts = _experts(6, 8, dtype=torch.float32)
    x = torch.randn(10, 8)
    idx = torch.tensor([[0, 2]] * 10)                       # experts 1, 3, 4, 5 get no token
    w = torch.full((10, 2), 0.5)
    torch.testing.assert_close(moe.moe_dispatch(x, w, idx, experts), moe.moe_naive(x, w, idx, experts),
                               atol=1e-6, rtol=1e-5)


def test_top_k_equal_n_is_the_dense_softmax_weighted_sum():
    n, d, T = 5, 6, 9
    experts = _experts(n, d)
    x = torch.randn(T, d, dtype=torch.float64)
    logits = torch.randn(T, n, dtype=torch.float64)
    w, idx, p = moe.top_k_gating(logits, n)
    want = sum(torch.softmax(logits, -1)[:, i:i + 1] * experts[i](x) for i in range(n))
    torch.testing.assert_close(moe.moe_dispatch(x, w, idx, experts), want)
    torch.testing.assert_close(moe.dense_moe(x, p, experts), want)


def test_top_1_is_the_chosen_expert_output():
    experts = _experts(4, 5)
    x = torch.randn(7, 5, dtype=torch.float64)
    w, idx, _ = moe.top_k_gating(torch.randn(7, 4, dtype=torch.float64), 1)
    assert torch.equal(w, torch.ones(7, 1, dtype=torch.float64))
    want = torch.stack([experts[int(i)](x[t]) for t, i in enumerate(idx[:, 0])])
    torch.testing.assert_close(moe.moe_dispatch(x, w, idx, experts), want)


def test_layer_gradients_flow_to_router_and_chosen_experts_only():
    torch.manual_seed(0)
    layer = moe.MoE(8, 16, n_experts=4, top_k=2, dtype=torch.float64)
    x = torch.randn(3, 4, 8, dtype=torch.float64)
    y = layer(x)
    assert y.shape == x.shape
    (y.square().sum() + layer.aux_loss).backward()
    assert layer.router.weight.grad is not None and layer.router.weight.grad.abs().sum() > 0
    used = set(layer.last_indices.unique().tolist())
    for i, e in enumerate(layer.experts):
        g = e.gate_proj.weight.grad
        assert (g is not None and g.abs().sum() > 0) == (i in used)


def test_gate_gradient_through_renormalised_weights_matches_autograd_of_naive():
    torch.manual_seed(1)
    layer = moe.MoE(6, 12, n_experts=5, top_k=2, dtype=torch.float64)
    x = torch.randn(11, 6, dtype=torch.float64)
    layer(x).sum().backward()
    g_dispatch = layer.router.weight.grad.clone()
    layer.zero_grad()
    w, idx, _ = moe.top_k_gating(layer.router(x), 2)
    moe.moe_naive(x, w, idx, layer.experts).sum().backward()
    torch.testing.assert_close(g_dispatch, layer.router.weight.grad)


def test_layer_is_the_functions():
    torch.manual_seed(2)
    layer = moe.MoE(8, 16, n_experts=4, top_k=2, kind="gelu", dtype=torch.float64)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    flat = x.reshape(-1, 8)
    w, idx, p = moe.top_k_gating(flat @ layer.router.weight.T, 2)
    torch.testing.assert_close(layer(x).reshape(-1, 8), moe.moe_naive(flat, w, idx, layer.experts))
    torch.testing.assert_close(layer.aux_loss, moe.load_balancing_loss(p, idx, 0.01))


# ----------------------------------------------------------------------------- noise
def test_noisy_top_k_logits_follow_shazeer():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, 6, generator=g, dtype=torch.float64)
    wg = torch.randn(6, 5, generator=g, dtype=torch.float64)
    wn = torch.randn(6, 5, generator=g, dtype=torch.float64)
    h = moe.noisy_top_k_logits(x, wg, wn, 2, generator=torch.Generator().manual_seed(4))
    eps = torch.randn(12, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    full = x @ wg + eps * torch.nn.functional.softplus(x @ wn)
    kept = torch.isfinite(h)
    assert (kept.sum(-1) == 2).all()
    assert torch.equal(kept, torch.zeros_like(kept).scatter(-1, full.topk(2, -1).indices, True))
    torch.testing.assert_close(h[kept], full[kept])
    assert not torch.allclose(full, x @ wg)                          # the noise is there


def test_mix_uniform_noise_is_a_distribution():
    p = torch.softmax(torch.randn(50, 4, dtype=torch.float64), -1)
    q = moe.mix_uniform_noise(p, 0.3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(q.sum(-1), torch.ones(50, dtype=torch.float64))
    assert (q >= 0.7 * p - 1e-12).all() and (q <= 0.7 * p + 0.3 + 1e-12).all()
    torch.testing.assert_close(moe.mix_uniform_noise(p, 0.0), p)


# ----------------------------------------------------------------------------- balance loss
@pytest.mark.parametrize("n", [2, 4, 8])
def test_balance_loss_is_alpha_at_uniform_routing(n):
    T, alpha = 8 * n, 0.01
    probs = torch.full((T, n), 1.0 / n, dtype=torch.float64)
    idx = torch.arange(T) % n
    assert moe.load_balancing_loss(probs, idx, alpha).item() == pytest.approx(alpha, rel=1e-12)
    # perfectly balanced counts with non-uniform but balanced probabilities: still α
    probs2 = torch.softmax(torch.randn(T, n, dtype=torch.float64), -1)
    f = torch.full((n,), 1.0 / n, dtype=torch.float64)
    assert moe.load_balancing_loss(probs2, idx, alpha).item() == pytest.approx(alpha * n * (f * probs2.mean(0)).sum().item())
    assert moe.load_balancing_loss(probs2, idx, alpha).item() == pytest.approx(alpha)


def test_balance_loss_collapsed_router_is_alpha_times_n():
    n, alpha = 8, 0.01
    probs = torch.zeros(32, n, dtype=torch.float64)
    probs[:, 3] = 1.0
    idx = torch.full((32,), 3)
    assert moe.load_balancing_loss(probs, idx, alpha).item() == pytest.approx(alpha * n)


def test_balance_loss_uses_counts_and_top_k_assignments():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1]], dtype=torch.float64)
    idx = torch.tensor([[0, 1], [0, 2]])
    f = torch.tensor([2, 1, 1], dtype=torch.float64) / 4
    torch.testing.assert_close(moe.expert_fractions(idx, 3), f)
    want = 0.1 * 3 * (f * probs.mean(0)).sum()
    torch.testing.assert_close(moe.load_balancing_loss(probs, idx, 0.1), want)


def test_balance_loss_gradient_lowers_overloaded_expert_probability():
    logits = torch.zeros(16, 4, dtype=torch.float64, requires_grad=True)
    idx = torch.zeros(16, dtype=torch.long)                          # everything went to expert 0
    moe.load_balancing_loss(torch.softmax(logits, -1), idx, 1.0).backward()
    assert (logits.grad[:, 0] > 0).all() and (logits.grad[:, 1:] < 0).all()


# ----------------------------------------------------------------------------- capacity
def test_capacity_and_dropped_tokens():
    assert moe.expert_capacity(64, 8, 1.0) == 8
    assert moe.expert_capacity(64, 8, 1.25, k=2) == 20
    idx = torch.tensor([[0], [0], [1], [0], [2], [0]])
    keep = moe.capacity_keep_mask(idx, 3, 2)
    assert keep[:, 0].tolist() == [True, True, True, False, True, False]
    experts = _experts(3, 4)
    x = torch.randn(6, 4, dtype=torch.float64)
    w = torch.ones(6, 1, dtype=torch.float64)
    y = moe.moe_dispatch(x, w, idx, experts, keep)
    assert torch.equal(y[3], torch.zeros(4, dtype=torch.float64)) and torch.equal(y[5], torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(y[keep[:, 0]], moe.moe_naive(x, w, idx, experts)[keep[:, 0]])


def test_layer_counts_dropped_tokens():
    torch.manual_seed(0)
    layer = moe.MoE(8, 8, n_experts=4, top_k=1, capacity_factor=1.0)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0] = 1.0                                  # a router that prefers expert 0
    x = torch.rand(1, 40, 8) + 0.1
    layer(x)
    assert layer.dropped == 40 - 10
    layer.capacity_factor = None
    layer(x)
    assert layer.dropped == 0


# ----------------------------------------------------------------------------- parameter count
def _moe_config(**kw):
    from course_lib.model import ModelConfig
    return ModelConfig(**{**dict(ffn="swiglu", norm="rmsnorm", pos_encoding="rope", bias=False,
                                 tie_embeddings=False), **kw})


def test_mixtral_parameter_count():
    from course_lib.model import count_parameters
    cfg = _moe_config(d_model=4096, d_ff=14336, n_layers=32, n_experts=8, top_k=2, vocab_size=32000,
                      n_heads=32, n_kv_heads=8)
    total, active = count_parameters(cfg), count_parameters(cfg, active=True)
    assert round(total / 1e9, 1) == 46.7 and round(active / 1e9, 1) == 12.9


def test_parameter_count_matches_built_modules():
    from course_lib.model import count_parameters
    d, d_ff, n, k, V, L = 16, 24, 4, 2, 50, 3
    layer = moe.MoE(d, d_ff, n_experts=n, top_k=k)
    attn = 2 * d * d + 2 * d * 2 * (d // 4)                          # 4 heads, 2 kv heads
    per_layer = sum(p.numel() for p in layer.parameters()) + attn + 2 * d
    cfg = _moe_config(d_model=d, d_ff=d_ff, n_layers=L, n_experts=n, top_k=k, vocab_size=V, n_heads=4, n_kv_heads=2)
    total, active = count_parameters(cfg), count_parameters(cfg, active=True)
    assert total == L * per_layer + 2 * V * d + d
    one_expert = sum(p.numel() for p in GatedFeedForward(d, d_ff).parameters())
    assert total - active == L * (n - k) * one_expert


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call, match", [
    (lambda: moe.top_k_gating(torch.randn(4, 3), 4), "k: expected an int in \\[1, n_experts = 3\\]"),
    (lambda: moe.top_k_gating(torch.randn(4, 3), 0), "k: expected"),
    (lambda: moe.top_k_gating(torch.randn(2, 4, 3), 1), "logits"),
    (lambda: moe.top_k_gating(torch.ones(4, 3, dtype=torch.long), 1), "logits"),
    (lambda: moe.moe_dispatch(torch.randn(4, 2), torch.ones(4, 1), torch.zeros(3, 1, dtype=torch.long),
                              _experts(2, 2)), "weights, indices"),
    (lambda: moe.moe_dispatch(torch.randn(4, 2), torch.ones(4, 1), torch.full((4, 1), 2), _experts(2, 2)),
     "indices: expected expert ids in \\[0, 2\\)"),
    (lambda: moe.moe_dispatch(torch.randn(4, 2), torch.ones(4, 1), torch.zeros(4, 1), _experts(2, 2)),
     "indices: expected an integer dtype"),
    (lambda: moe.load_balancing_loss(torch.rand(4, 3), torch.zeros(5, dtype=torch.long)), "indices: expected first"),
    (lambda: moe.expert_capacity(10, 0, 1.0), "n_experts"),
    (lambda: moe.expert_capacity(10, 2, 0.0), "capacity_factor"),
    (lambda: moe.MoE(8, 8, n_experts=4, top_k=5), "k: expected"),
    (lambda: moe.MoE(8, 8, n_experts=0), "n_experts"),
    (lambda: moe.MoE(8, 8, kind="tanh"), "kind"),
    (lambda: moe.mix_uniform_noise(torch.rand(3, 2), 1.5), "alpha"),
    (lambda: moe.noisy_top_k_logits(torch.randn(3, 4), torch.randn(5, 2), torch.randn(5, 2), 1), "w_gate"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------------- the model (build_ffn)
def test_decoder_lm_with_moe_layers():
    from course_lib.model import DecoderLM, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=30, d_model=32, n_layers=2, n_heads=4, ffn="swiglu", d_ff=48, n_experts=4, top_k=2,
                      bias=False)
    model = DecoderLM(cfg)
    assert all(isinstance(b.ffn, moe.MoE) and b.ffn.top_k == 2 and len(b.ffn.experts) == 4 for b in model.blocks)
    x = torch.randint(0, 30, (2, 9))
    logits = model(x)
    assert logits.shape == (2, 9, 30)
    aux = moe.moe_aux_loss(model)
    assert aux.requires_grad and aux.item() > 0
    aux.backward()
    assert all(b.ffn.router.weight.grad.abs().sum() > 0 for b in model.blocks)
    dense = DecoderLM(ModelConfig(vocab_size=30, d_model=32, n_layers=2, n_heads=4))
    assert not any(isinstance(m, moe.MoE) for m in dense.modules())


@pytest.mark.parametrize("kw, match", [
    (dict(n_experts=-1), "n_experts"),
    (dict(n_experts=4, top_k=5), "top_k"),
    (dict(n_experts=4, top_k=0), "top_k"),
    (dict(moe_alpha=-0.1), "moe_alpha"),
])
def test_model_config_moe_validation(kw, match):
    from course_lib.model import ModelConfig

    with pytest.raises(ValueError, match=match):
        ModelConfig(vocab_size=10, d_model=16, n_heads=2, **kw)


def test_moe_model_cached_generation_equals_uncached():
    # routing is per token, so a token routed during cached decoding meets the same experts as in a full recompute
    from course_lib.generation import generate
    from course_lib.model import DecoderLM, ModelConfig

    torch.manual_seed(3)
    model = DecoderLM(ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn="swiglu",
                                  d_ff=48, n_experts=4, top_k=2, pos_encoding="rope")).eval()
    prompts = [[1, 2, 3, 4], [5, 6], [7, 8, 9]]
    a, la = generate(model, prompts, 12, return_logits=True)
    b, lb = generate(model, prompts, 12, use_cache=False, return_logits=True)
    assert torch.equal(a, b)
    torch.testing.assert_close(la, lb, atol=1e-4, rtol=1e-4)


def test_noisy_layer_trains_its_noise_and_is_clean_in_eval():
    torch.manual_seed(4)
    layer = moe.MoE(8, 16, n_experts=4, top_k=2, noisy=True, dtype=torch.float64)
    x = torch.randn(20, 8, dtype=torch.float64)
    layer(x).square().sum().backward()
    assert layer.w_noise.grad is not None and layer.w_noise.grad.abs().sum() > 0
    w, idx, _ = layer.route(x)
    torch.testing.assert_close(w.sum(-1), torch.ones(20, dtype=torch.float64))
    layer.eval()
    w, idx, _ = moe.top_k_gating(layer.router(x), 2)
    torch.testing.assert_close(layer(x), moe.moe_naive(x, w, idx, layer.experts))
