"""The Exercise 5 checks pass the reference answers and name the likely mistake otherwise.

Each wrong answer below is written the way a student would write it (not taken from the
grading module), so the checks are shown to recognise the mistake itself.
"""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.grading import ch05
from helpers import refused_then_passes, stub


# ----------------------------------------------------------------------------- task 1
def merge_ok(a, b, *, rescale=(True, True), flip=False):
    (m1, l1), (m2, l2) = a, b
    m = torch.maximum(m1, m2)
    ms = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    f1 = torch.exp(m1 - ms) if rescale[0] else 1.0
    f2 = torch.exp(m2 - ms) if rescale[1] else 1.0
    if flip:
        f1, f2 = torch.exp(ms - m1), torch.exp(ms - m2)
    return m, f1 * l1 + f2 * l2


def merge_nan(a, b):
    (m1, l1), (m2, l2) = a, b
    m = torch.maximum(m1, m2)
    return m, torch.exp(m1 - m) * l1 + torch.exp(m2 - m) * l2    # −inf − (−inf) = NaN for two empty blocks


def test_merge_passes(capsys):
    ch05.check_merge(merge_ok)
    assert capsys.readouterr().out == "✓ merge: all 8 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "merge_stats is not implemented yet"),
    (lambda a, b: merge_ok(a, b, rescale=(False, False)), "missing rescale by e\\^\\(m_old − m_new\\)"),
    (lambda a, b: merge_ok(a, b, rescale=(False, True)), "missing rescale .* for the first block"),
    (lambda a, b: merge_ok(a, b, rescale=(True, False)), "missing rescale .* for the second block"),
    (lambda a, b: merge_ok(a, b, flip=True), "exponent sign flipped"),
    (lambda a, b: (a[0] + b[0], merge_ok(a, b)[1]), "larger of the two maxima"),
    (lambda a, b: (torch.maximum(a[0], b[0]), torch.maximum(a[1], b[1])), "maximum of the two sums"),
    (lambda a, b: merge_ok(a, b)[0], "expected a pair"),
])
def test_merge_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch05.check_merge(wrong)


def test_merge_without_the_guard_fails_on_fully_masked_rows():
    with pytest.raises(AssertionError, match="NaN in the result.*e\\^\\(−inf − \\(−inf\\)\\) is NaN"):
        ch05.check_merge(merge_nan)


# ----------------------------------------------------------------------------- task 2
def kinds_ok(N, Br, Bc, *, by_index=False, skip_ge=False, full_lt=False, transpose=False, as_bool=False):
    Tr, Tc = -(-N // Br), -(-N // Bc)
    out = torch.zeros(Tr, Tc, dtype=torch.long)
    for i in range(Tr):
        r0, r1 = i * Br, min((i + 1) * Br, N)
        for j in range(Tc):
            c0, c1 = j * Bc, min((j + 1) * Bc, N)
            if by_index:
                out[i, j] = 0 if j > i else (1 if j == i else 2)
            elif (c0 >= r1 - 1) if skip_ge else (c0 > r1 - 1):
                out[i, j] = 0
            elif (c1 - 1 < r0) if full_lt else (c1 - 1 <= r0):
                out[i, j] = 2
            else:
                out[i, j] = 1
    if as_bool:
        return out > 0
    return out.T if transpose else out


def test_tile_kinds_passes(capsys):
    ch05.check_tile_kinds(kinds_ok)
    assert capsys.readouterr().out == "✓ tile_kinds: all 9 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "causal_tile_kinds is not implemented yet"),
    (lambda N, Br, Bc: kinds_ok(N, Br, Bc, by_index=True), "compared block indices"),
    (lambda N, Br, Bc: kinds_ok(N, Br, Bc, skip_ge=True), "off by one at the skip"),
    (lambda N, Br, Bc: kinds_ok(N, Br, Bc, full_lt=True), "off by one at the full tiles"),
    (lambda N, Br, Bc: kinds_ok(N, Br, Bc, transpose=True), "transposed"),
    (lambda N, Br, Bc: 2 - kinds_ok(N, Br, Bc), "0 and 2 swapped"),
    (lambda N, Br, Bc: kinds_ok(N, Br, Bc, as_bool=True), "expected an integer tensor"),
    (lambda N, Br, Bc: kinds_ok(N, Br, Bc).float(), "expected an integer tensor"),
])
def test_tile_kinds_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch05.check_tile_kinds(wrong)


# ----------------------------------------------------------------------------- task 3
def forward_ok(q, k, v, Br, Bc, causal=False, *, rescale=True, normalize="end", pad=False, mask=True,
               skip=True, scale=True, L_kind="lse", transposed_mask=False):
    N, d = q.shape[-2], q.shape[-1]
    Nk = k.shape[-2]
    if pad:                                            # fixed-size tiles: pad K, V with zeros
        extra = (-Nk) % Bc
        k = torch.cat([k, torch.zeros(*k.shape[:-2], extra, d)], -2)
        v = torch.cat([v, torch.zeros(*v.shape[:-2], extra, v.shape[-1])], -2)
    O = torch.zeros(*q.shape[:-1], v.shape[-1])
    L = torch.zeros(q.shape[:-1])
    for r0 in range(0, N, Br):
        Qi = q[..., r0:r0 + Br, :]
        R = Qi.shape[-2]
        m = torch.full(Qi.shape[:-1], -math.inf)
        l = torch.zeros(Qi.shape[:-1])
        acc = torch.zeros(*Qi.shape[:-1], v.shape[-1])
        for c0 in range(0, k.shape[-2], Bc):
            if causal and skip and c0 > r0 + R - 1:
                break
            Kj, Vj = k[..., c0:c0 + Bc, :], v[..., c0:c0 + Bc, :]
            S = Qi @ Kj.transpose(-2, -1)
            if scale:
                S = S / math.sqrt(d)
            if causal and mask:
                rows = torch.arange(r0, r0 + R)[:, None]
                cols = torch.arange(c0, c0 + Kj.shape[-2])[None, :]
                S = S.masked_fill((cols < rows) if transposed_mask else (cols > rows), -math.inf)
            m_new = torch.maximum(m, S.amax(-1))
            P = torch.exp(S - m_new[..., None])
            a = torch.exp(m - m_new) if rescale else torch.ones_like(m)
            l = a * l + P.sum(-1)
            acc = a[..., None] * acc + P @ Vj
            if normalize == "inside":
                acc = acc / l[..., None]
            m = m_new
        O[..., r0:r0 + R, :] = acc if normalize == "inside" else acc / l[..., None]
        L[..., r0:r0 + R] = {"lse": m + torch.log(l), "m": m, "logl": torch.log(l), "l": l}[L_kind]
    return O, L


def test_flash_forward_passes(capsys):
    ch05.check_flash_forward(forward_ok)
    assert capsys.readouterr().out == "✓ flash_forward: all 8 cases passed\n"


def causal_only(**kw):
    # right for causal=False (so the non-causal cases pass), wrong only in the causal cases
    return lambda q, k, v, Br, Bc, causal=False: forward_ok(q, k, v, Br, Bc, causal, **kw)


@pytest.mark.parametrize("wrong, message", [
    (stub, "flash_forward is not implemented yet"),
    (causal_only(rescale=False), "missing rescale by e\\^\\(m_old − m_new\\)"),
    (causal_only(normalize="inside"), "normalizing inside the loop"),
    (causal_only(pad=True), "forgot to mask the unfilled tail of the last block"),
    (causal_only(scale=False), "scores not scaled"),
    (causal_only(mask=False), "tiles on the diagonal are not masked"),
    (causal_only(mask=False, skip=False), "causal=True was ignored"),
    (lambda q, k, v, Br, Bc, causal=False: forward_ok(q, k, v, Br, Bc, False), "causal=True was ignored"),
    (causal_only(transposed_mask=True), "causal mask transposed"),
    (causal_only(L_kind="m"), "L is the row maximum m only"),
    (causal_only(L_kind="logl"), "L is log ℓ only"),
    (causal_only(L_kind="l"), "returned ℓ instead of the log-sum-exp"),
    (lambda q, k, v, Br, Bc, causal=False: forward_ok(q, k, v, Br, Bc, causal)[0], "expected a pair"),
    (lambda q, k, v, Br, Bc, causal=False: (forward_ok(q, k, v, Br, Bc, causal)[0][..., :-1, :], None),
     "expected shape"),
])
def test_flash_forward_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch05.check_flash_forward(wrong)


def test_flash_forward_must_be_tiled_not_only_right():
    """Right values the wrong way: an untiled softmax(S) V with logsumexp, and a loop that masks every
    tile above the diagonal instead of skipping it, both fail — with a message saying what was missed."""
    def untiled(q, k, v, Br, Bc, causal=False):
        s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if causal:
            s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool).tril(), -math.inf)
        return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)
    with pytest.raises(AssertionError, match="materialised for all keys at once"):
        ch05.check_flash_forward(untiled)
    with pytest.raises(AssertionError, match="computed \\(and masked\\) instead of skipped"):
        ch05.check_flash_forward(lambda q, k, v, Br, Bc, causal=False: forward_ok(q, k, v, Br, Bc, causal, skip=False))


def test_flash_forward_without_the_max_overflows():
    def no_max(q, k, v, Br, Bc, causal=False):
        s = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])) * 40
        e = torch.exp(s)
        return e @ v / e.sum(-1, keepdim=True), torch.log(e.sum(-1))
    with pytest.raises(AssertionError, match="NaN or inf|wrong values"):
        ch05.check_flash_forward(no_max)


# ----------------------------------------------------------------------------- task 4
def io_ok(N, d, M, *, s_pass=2, bc="ceil", init=True, stats=True, o_twice=True, kv_per_query_block=False):
    standard = 4 * N * d + 2 * s_pass * N * N
    Bc = {"ceil": math.ceil(M / (4 * d)), "floor": M // (4 * d), "Br": min(math.ceil(M / (4 * d)), d),
          "ceil_d": math.ceil(M / d)}[bc]
    Tc = math.ceil(N / Bc)
    per_step = (2 if o_twice else 1) * N * d + (4 * N if stats else 0) + N * d     # Q read + O + ℓ, m
    flash = 2 * N * d + Tc * per_step + ((N * d + (2 * N if stats else 0)) if init else 0)
    if kv_per_query_block:
        Br = min(math.ceil(M / (4 * d)), d)
        flash += 2 * N * d * (math.ceil(N / Br) - 1)
    return standard, flash


def test_hbm_accesses_passes(capsys):
    ch05.check_hbm_accesses(io_ok)
    assert capsys.readouterr().out == "✓ hbm_accesses: all 7 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "hbm_accesses is not implemented yet"),
    (lambda N, d, M: io_ok(N, d, M, s_pass=1), "S and P counted once instead of written and read"),
    (lambda N, d, M: io_ok(N, d, M, bc="floor"), "used the wrong block size formula"),
    (lambda N, d, M: io_ok(N, d, M, bc="ceil_d"), "used the wrong block size formula"),
    (lambda N, d, M: io_ok(N, d, M, bc="Br"), "used the wrong block size formula"),
    (lambda N, d, M: io_ok(N, d, M, init=False), "initialised in HBM"),
    (lambda N, d, M: io_ok(N, d, M, stats=False), "forgot ℓ and m"),
    (lambda N, d, M: io_ok(N, d, M, o_twice=False), "counted O once per outer step"),
    (lambda N, d, M: io_ok(N, d, M, kv_per_query_block=True), "K and V are read once in all"),
    (lambda N, d, M: (io_ok(N, d, M)[0], io_ok(N, d, M)[1] + 1), "flash = .* expected"),
    (lambda N, d, M: io_ok(N, d, M)[0], "expected a pair"),
    (lambda N, d, M: (float("nan"), 0), "expected a finite number"),
])
def test_hbm_accesses_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch05.check_hbm_accesses(wrong)


# ----------------------------------------------------------------------------- task 5
def backward_ok(q, k, v, o, L, do, *, D_kind="dOO", jac=True, scale_grads=True, dv_T=True, from_L=True, dk_T=True,
                dq_T=False, L_unsqueezed=True):
    scale = 1 / math.sqrt(q.shape[-1])
    S = q @ k.transpose(-2, -1) * scale
    L_ = L[..., None] if L_unsqueezed else L            # the mistake: S − L broadcasts L along the keys
    P = torch.exp(S - L_) if from_L else torch.exp(S - S.amax(-1, keepdim=True))
    dv = (P.transpose(-2, -1) if dv_T else P) @ do
    dP = do @ v.transpose(-2, -1)
    D = {"dOO": (do * o).sum(-1, keepdim=True), "dP": dP.sum(-1, keepdim=True), "none": 0,
         "no_keepdim": (do * o).sum(-1)}[D_kind]
    dS = P * (dP - D) if jac else dP
    s = scale if scale_grads else 1.0
    dq = s * ((dS.transpose(-2, -1) if dq_T else dS) @ k)
    dk = s * ((dS.transpose(-2, -1) if dk_T else dS) @ q)
    return dq, dk, dv


def test_backward_passes(capsys):
    ch05.check_backward(backward_ok)
    assert capsys.readouterr().out == "✓ backward: all 5 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (stub, "backward_from_lse is not implemented yet"),
    (lambda *a: backward_ok(*a, D_kind="dP"), "D = rowsum\\(dP\\) instead of"),
    (lambda *a: backward_ok(*a, D_kind="none"), "missing the − D term"),
    (lambda *a: backward_ok(*a, jac=False), "the softmax Jacobian is missing"),
    (lambda *a: backward_ok(*a, scale_grads=False), "without the scale"),
    (lambda *a: backward_ok(*a, dv_T=False), "dV = P dO"),
    (lambda *a: backward_ok(*a, from_L=False), "P not recomputed from L"),
    (lambda *a: backward_ok(*a, dk_T=False), "dK = dS Q"),
    (lambda *a: backward_ok(*a, dq_T=True), "dQ = dSᵀ K"),
    (lambda *a: backward_ok(*a, L_unsqueezed=False), "S − L broadcast L along the keys"),
    (lambda *a: backward_ok(*a, D_kind="no_keepdim"), "D without keepdim"),
    (lambda *a: backward_ok(*a)[:2], "expected a tuple"),
])
def test_backward_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch05.check_backward(wrong)


def test_backward_must_use_the_saved_L_and_O():
    """Right gradients the wrong way: autograd through a new softmax, or D from the N × N product P ∘ dP."""
    def by_autograd(q, k, v, o, L, do):
        q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
        out = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1) @ v
        return torch.autograd.grad(out, (q, k, v), do)

    def D_from_P(q, k, v, o, L, do):
        scale = 1 / math.sqrt(q.shape[-1])
        P = torch.exp(q @ k.transpose(-2, -1) * scale - L[..., None])
        dP = do @ v.transpose(-2, -1)
        dS = P * (dP - (P * dP).sum(-1, keepdim=True))
        return scale * dS @ k, scale * dS.transpose(-2, -1) @ q, P.transpose(-2, -1) @ do

    with pytest.raises(AssertionError, match="your gradients ignore the saved L"):
        ch05.check_backward(by_autograd)
    with pytest.raises(AssertionError, match="D computed as rowsum\\(P ∘ dP\\)"):
        ch05.check_backward(D_from_P)
    with pytest.raises(AssertionError, match="your gradients ignore the saved L"):
        ch05.check_backward(lambda q, k, v, o, L, do: backward_ok(q, k, v, o, torch.logsumexp(
            q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1), do))
    with pytest.raises(AssertionError, match="D computed as rowsum\\(P ∘ dP\\) \\(or from a recomputed O = P V\\)"):
        ch05.check_backward(lambda q, k, v, o, L, do: backward_ok(
            q, k, v, torch.exp(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) - L[..., None]) @ v, L, do))


# ----------------------------------------------------------------------------- task 6 (transfer)
def chunk_ok(q, k, v, *, normalise=True, scale=True, lse_kind="lse"):
    s = q @ k.transpose(-2, -1)
    if scale:
        s = s / math.sqrt(q.shape[-1])
    m = s.amax(-1, keepdim=True)
    p = torch.exp(s - m)
    ell = p.sum(-1, keepdim=True)
    o = p @ v / ell if normalise else p @ v
    lse = {"lse": m + torch.log(ell), "m": m, "logl": torch.log(ell), "l": ell,
           "unscaled": torch.logsumexp(q @ k.transpose(-2, -1), -1, keepdim=True)}[lse_kind]
    return o, lse.squeeze(-1)


def merge_chunks_ok(o_parts, lse_parts, *, how="lse", lse_out="lse"):
    if how == "lse":                                  # the stable merge
        lse = torch.logsumexp(lse_parts, 0)
        w = torch.exp(lse_parts - lse)
    elif how == "naive":                              # e^(lse_c) / Σ e^(lse_c): overflows
        e = torch.exp(lse_parts)
        lse, w = torch.log(e.sum(0)), e / e.sum(0)
    elif how == "max_shift":                          # stable, but no guard for an empty chunk
        top = lse_parts.amax(0)
        e = torch.exp(lse_parts - top)
        lse, w = top + torch.log(e.sum(0)), e / e.sum(0)
        w = torch.where(torch.isfinite(lse_parts), w, torch.full_like(w, float("nan")))
    elif how == "mean":
        lse, w = torch.logsumexp(lse_parts, 0), torch.ones_like(lse_parts) / lse_parts.shape[0]
    elif how == "unnormalised":
        lse, w = torch.logsumexp(lse_parts, 0), torch.exp(lse_parts - lse_parts.amax(0))
    elif how == "exp":
        lse, w = torch.logsumexp(lse_parts, 0), torch.exp(lse_parts)
    elif how == "argmax":
        lse = torch.logsumexp(lse_parts, 0)
        w = (lse_parts == lse_parts.amax(0)).to(o_parts.dtype)
    o = (w[..., None] * o_parts).sum(0)
    if lse_out == "max":
        lse = lse_parts.amax(0)
    elif lse_out == "sum":
        lse = lse_parts.sum(0)
    return o, lse


def test_split_kv_passes(capsys):
    ch05.check_split_kv(chunk_ok, merge_chunks_ok)
    assert capsys.readouterr().out == "✓ split_kv: all 12 cases passed\n"


@pytest.mark.parametrize("chunk, merge, message", [
    (stub, merge_chunks_ok, "chunk_attention is not implemented yet"),
    (chunk_ok, stub, "merge_chunks is not implemented yet"),
    (lambda *a: chunk_ok(*a, normalise=False), merge_chunks_ok, "the chunk's output is not normalised"),
    (lambda *a: chunk_ok(*a, scale=False), merge_chunks_ok, "scores not scaled"),
    (lambda *a: chunk_ok(*a, lse_kind="m"), merge_chunks_ok, "lse is the chunk's maximum score m only"),
    (lambda *a: chunk_ok(*a, lse_kind="logl"), merge_chunks_ok, "lse is log ℓ only"),
    (lambda *a: chunk_ok(*a, lse_kind="l"), merge_chunks_ok, "returned ℓ instead of the log-sum-exp"),
    (lambda *a: chunk_ok(*a, lse_kind="unscaled"), merge_chunks_ok, "lse of the unscaled scores"),
    (lambda *a: chunk_ok(*a)[0], merge_chunks_ok, "expected a pair"),
    (lambda q, k, v: (torch.exp(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])) @ v
                      / torch.exp(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).sum(-1, keepdim=True),
                      torch.log(torch.exp(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).sum(-1))),
     merge_chunks_ok, "NaN or inf values where the reference is finite \\(overflow in exp\\?"),
    (chunk_ok, lambda *a: merge_chunks_ok(*a, how="mean"), "averaged the chunk outputs"),
    (chunk_ok, lambda *a: merge_chunks_ok(*a, how="unnormalised"), "weights e\\^\\(lse_c − max_c lse_c\\) not normalised"),
    (chunk_ok, lambda *a: merge_chunks_ok(*a, how="exp"), "weights e\\^\\(lse_c\\) not normalised"),
    (chunk_ok, lambda *a: merge_chunks_ok(*a, how="argmax"), "took the output of the chunk with the largest lse only"),
    (chunk_ok, lambda *a: merge_chunks_ok(*a, how="naive"), "e\\^\\(lse_c\\) overflows for large scores"),
    (chunk_ok, lambda *a: merge_chunks_ok(*a, how="max_shift"), "An empty chunk has lse = −inf"),
    (chunk_ok, lambda *a: merge_chunks_ok(*a, lse_out="max"), "lse is the largest lse_c"),
    (chunk_ok, lambda *a: merge_chunks_ok(*a, lse_out="sum"), "lse is the sum of the lse_c"),
    (chunk_ok, lambda o, lse: (o.sum(0), lse.sum(0)), "wrong values"),
])
def test_split_kv_names_the_mistake(chunk, merge, message):
    with pytest.raises(AssertionError, match=message):
        ch05.check_split_kv(chunk, merge)



# ----------------------------------------------------------------------------- task 7 (transfer)
def window_ok(q, k, v, Br, Bc, window, *, width=0, causal_only=False, symmetric=False, guard=True, skip="window",
              scale=True):
    """The FA-2 loop over the band: ``skip`` = "window" (the right key blocks), "causal" (every block up
    to the diagonal, masked), "none" (every block, masked)."""
    W = window + width
    N, d = q.shape[-2], q.shape[-1]
    O = torch.empty_like(q)
    for r0 in range(0, N, Br):
        r1 = min(r0 + Br, N)
        Qi = q[..., r0:r1, :]
        m = torch.full(Qi.shape[:-1], -math.inf)
        l = torch.zeros(Qi.shape[:-1])
        acc = torch.zeros_like(Qi)
        first = max(0, r0 - W + 1) // Bc * Bc if skip == "window" and not causal_only else 0
        last = N if (skip == "none" or symmetric) else r1
        for c0 in range(first, last, Bc):
            c1 = min(c0 + Bc, N)
            S = Qi @ k[..., c0:c1, :].transpose(-2, -1)
            if scale:
                S = S / math.sqrt(d)
            dist = torch.arange(r0, r1)[:, None] - torch.arange(c0, c1)[None, :]
            hide = dist.abs() >= W if symmetric else (dist < 0) | ((dist >= W) & (not causal_only))
            S = S.masked_fill(hide, -math.inf)
            m_new = torch.maximum(m, S.amax(-1))
            shift = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new)) if guard else m_new
            P = torch.exp(S - shift[..., None])
            alpha = torch.exp(m - shift)
            l = alpha * l + P.sum(-1)
            acc = alpha[..., None] * acc + P @ v[..., c0:c1, :]
            m = m_new
        O[..., r0:r1, :] = acc / l[..., None]
    return O


def test_flash_window_passes(capsys):
    ch05.check_flash_window(window_ok)
    assert capsys.readouterr().out == "✓ flash_forward_window: all 7 cases passed\n"


def test_flash_window_accepts_O_and_L_as_in_task_3(capsys):
    ch05.check_flash_window(lambda *a: (window_ok(*a), None))
    assert "all 7 cases passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (stub, "flash_forward_window is not implemented yet"),
    (lambda *a: window_ok(*a, width=1), "the window is one key too wide"),
    (lambda *a: window_ok(*a, width=-1) if a[-1] > 1 else window_ok(*a), "the window is one key too narrow"),
    (lambda *a: window_ok(*a, causal_only=True), "the window was ignored"),
    (lambda *a: window_ok(*a, symmetric=True), "the band is not causal"),
    (lambda *a: window_ok(*a, scale=False), "scores not scaled"),
    (lambda *a: window_ok(*a, guard=False), "e\\^\\(−inf − \\(−inf\\)\\) is NaN"),
    (lambda *a: window_ok(*a)[..., :-1, :], "expected shape"),
])
def test_flash_window_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch05.check_flash_window(wrong)


def test_flash_window_must_skip_the_tiles_outside_the_band():
    """Right values the wrong way: masking instead of skipping, or a full N × N mask, fails with the reason."""
    with pytest.raises(AssertionError, match="every tile left of the diagonal was computed"):
        ch05.check_flash_window(lambda *a: window_ok(*a, skip="causal"))
    with pytest.raises(AssertionError, match="tiles beyond the window were computed|every tile left"):
        ch05.check_flash_window(lambda *a: window_ok(*a, skip="none"))

    def dense(q, k, v, Br, Bc, window):
        from course_lib.sparse import sliding_window_mask
        s = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~sliding_window_mask(q.shape[-2], window),
                                                                              -math.inf)
        return torch.softmax(s, -1) @ v
    with pytest.raises(AssertionError, match="tiles beyond the window were computed|every tile left"):
        ch05.check_flash_window(dense)


def test_flash_window_with_a_global_mask_fails_on_memory():
    """Tiles skipped, but the mask built once for all N × N pairs and sliced per tile: O(N²) memory."""
    def global_mask(q, k, v, Br, Bc, window):
        from course_lib.sparse import sliding_window_mask
        N, d = q.shape[-2], q.shape[-1]
        keep = sliding_window_mask(N, window)
        O = torch.empty_like(q)
        for r0 in range(0, N, Br):
            r1 = min(r0 + Br, N)
            m = torch.full(q.shape[:-2] + (r1 - r0,), -math.inf)
            l, acc = torch.zeros_like(m), torch.zeros_like(q[..., r0:r1, :])
            for c0 in range(max(0, r0 - window + 1) // Bc * Bc, r1, Bc):
                c1 = min(c0 + Bc, N)
                S = (q[..., r0:r1, :] @ k[..., c0:c1, :].transpose(-2, -1) / math.sqrt(d)).masked_fill(
                    ~keep[r0:r1, c0:c1], -math.inf)
                m_new = torch.maximum(m, S.amax(-1))
                shift = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
                P, a = torch.exp(S - shift[..., None]), torch.exp(m - shift)
                l, acc, m = a * l + P.sum(-1), a[..., None] * acc + P @ v[..., c0:c1, :], m_new
            O[..., r0:r1, :] = acc / l[..., None]
        return O
    with pytest.raises(AssertionError, match="a full N × N mask or score matrix was built"):
        ch05.check_flash_window(global_mask)


def test_flash_window_without_matrix_products_is_told_to_use_them():
    def elementwise(q, k, v, Br, Bc, window):
        from course_lib.sparse import sliding_window_mask
        s = (q[..., :, None, :] * k[..., None, :, :]).sum(-1) / math.sqrt(q.shape[-1])
        p = torch.softmax(s.masked_fill(~sliding_window_mask(q.shape[-2], window), -math.inf), -1)
        return (p[..., None] * v[..., None, :, :]).sum(-2)
    with pytest.raises(AssertionError, match="no matrix product was counted"):
        ch05.check_flash_window(elementwise)


# ----------------------------------------------------------------------------- calling the library scores nothing
import torch.nn.functional as F  # noqa: E402

from course_lib import flash  # noqa: E402
from course_lib.sparse import block_sparse_attention, sliding_window_mask  # noqa: E402


def chunk_by_sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v), torch.logsumexp(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1)


def io_by_library(N, d, M):
    return flash.standard_attention_io(N, d).total, flash.flash_attention_io(N, d, M).total


def window_by_blocks(q, k, v, Br, Bc, window):
    """SDPA, one query block at a time over the band's keys (no N × N tensor)."""
    N = q.shape[-2]
    O = torch.empty_like(q)
    for r0 in range(0, N, Br):
        r1, c0 = min(r0 + Br, N), max(0, r0 - window + 1)
        dist = torch.arange(r0, r1)[:, None] - torch.arange(c0, r1)[None, :]
        O[..., r0:r1, :] = F.scaled_dot_product_attention(q[..., r0:r1, :], k[..., c0:r1, :], v[..., c0:r1, :],
                                                          attn_mask=(dist >= 0) & (dist < window))
    return O


@pytest.mark.parametrize("check, answer", [
    (ch05.check_merge, flash.online_softmax_merge),
    (ch05.check_tile_kinds, lambda N, Br, Bc: ch05.reference_tile_kinds(N, Br, Bc)),
    (ch05.check_flash_forward, lambda q, k, v, Br, Bc, causal=False:
        flash.flash_attention_forward(q, k, v, Br=Br, Bc=Bc, causal=causal)),
    (ch05.check_hbm_accesses, io_by_library),
    (ch05.check_backward, lambda q, k, v, o, L, do: flash.flash_attention_backward(q, k, v, o, L, do)),
    (lambda chunk: ch05.check_split_kv(chunk, merge_chunks_ok), chunk_by_sdpa),
    (lambda chunk: ch05.check_split_kv(chunk, merge_chunks_ok),
     lambda q, k, v: flash.flash_attention_forward(q, k, v)),
])
def test_calling_the_library_scores_nothing(check, answer, monkeypatch):
    refused_then_passes(check, answer, ch05, monkeypatch)


def window_by_block_sparse(q, k, v, Br, Bc, window):
    return block_sparse_attention(q, k, v, sliding_window_mask(q.shape[-2], window), Br)


@pytest.mark.parametrize("answer", [window_by_blocks, window_by_block_sparse])
def test_calling_the_library_scores_nothing_in_the_window_task(answer):
    """(Lifted, the refusal would still leave the FLOP and memory measurements to fail these.)"""
    with pytest.raises(AssertionError, match="the library .* does the work here"):
        ch05.check_flash_window(answer)
