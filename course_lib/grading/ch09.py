"""Checks for Exercise 9 (Normalization: LayerNorm, RMSNorm, pre- vs post-norm).

Tasks, in the order of the exercise notebook:

1. ``layer_norm_forward(x, gamma, beta, eps)`` — LayerNorm over the last dimension;
2. ``rms_norm_forward(x, gamma, eps)`` — RMSNorm over the last dimension;
3. ``block_forward(x, attn, ffn, norm1, norm2, placement)`` — a Transformer block with its two
   residual sub-layers and the norms placed ``"pre"`` or ``"post"``;
4. ``prms_norm_forward(x, gamma, p, eps)`` — partial RMSNorm (the RMS of the first ⌈p·n⌉ entries);
5. (transfer) ``layer_norm_backward(x, gamma, grad_y, eps)`` → ``(grad_x, grad_gamma, grad_beta)`` —
   LayerNorm's gradient derived by hand; compared with autograd, which the answer may not call;
6. (transfer) ``fold_centring(W, b)`` → ``(W', b')`` — the centring of LayerNorm folded into the linear
   layer before it, so that ``LayerNorm(hW + b) = RMSNorm(hW' + b')`` (γ, β and ε unchanged).

References come from ``course_lib.norms`` (tested against ``torch.nn.functional.layer_norm`` and
``rms_norm``). When an answer is wrong, the check recomputes the known wrong answers (unbiased
variance, ε outside the square root, the wrong dimension, the mean subtracted in RMSNorm, post-LN
when pre-LN was asked, …) and names the one it matches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from course_lib.grading import call_student, expect_close, expect_tensor, passed
from course_lib.grading.forbid import AUTOGRAD_MESSAGE, autograd, call_without
from course_lib.norms import layer_norm, residual_block, rms_norm

__all__ = ["check_layer_norm", "check_rms_norm", "check_block", "check_prms_norm", "check_layer_norm_backward",
           "check_fold_centring"]

_HALF_TOL = dict(atol=1e-2, rtol=1e-2)   # fp16 inputs: the student may keep the statistics in fp16


def _cases(seed: int):
    """(description, x, eps): float64 first (mistakes are told apart there), then fp32 and fp16."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return [
        ("x [2, 5, 8], float64", r(2, 5, 8) * 2 + 1, 1e-5),
        ("x [4, 16] with a large mean, float64", r(4, 16) + 10, 1e-5),
        ("x [3, 7] with a tiny spread (ε matters), float64", r(3, 7) * 1e-2, 1e-3),
        ("x [6, 6] (square: the dimension matters), float64", r(6, 6) * 3, 1e-5),
        ("x [1, 3, 2, 12], eps = 0.1, float64", r(1, 3, 2, 12), 0.1),
        ("x [5, 32], float32", (r(5, 32) * 2 - 1).float(), 1e-5),
        ("x [2, 3, 40], float16", (r(2, 3, 40) * 3).half(), 1e-5),
    ]


def _gamma_beta(n: int, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    gamma = (1 + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)).to(dtype)
    beta = (0.3 * torch.randn(n, generator=g, dtype=torch.float64)).to(dtype)
    return gamma, beta


def _tol(dtype):
    return _HALF_TOL if dtype == torch.float16 else {}


def _normalise(x, dim, eps, *, centre=True, unbiased=False, eps_outside=False):
    """The normalised x (no γ, β) computed over ``dim``, with the chosen mistakes; float64."""
    x = x.double()
    c = x - x.mean(dim, keepdim=True) if centre else x
    n = x.shape[dim] if isinstance(dim, int) else x.numel()
    ms = (c * c).sum(dim, keepdim=True) / (n - 1 if unbiased else n)
    return c / (ms.sqrt() + eps) if eps_outside else c / (ms + eps).sqrt()


def _over_all(x, eps, centre=True):
    x = x.double()
    c = x - x.mean() if centre else x
    return c / ((c * c).mean() + eps).sqrt()


_LIBRARY_NORMS_MESSAGE = ("a library norm (F.layer_norm, F.rms_norm, nn.LayerNorm, course_lib.norms, …) does the "
                          "work here: compute it from the formula with mean, sqrt, … (the library is what the check "
                          "compares you with)")


def _library_norms() -> list[tuple[object, str]]:
    """The library norms an answer must not call: it is asked to compute them from the formula."""
    from course_lib import norms
    return [(F, "layer_norm"), (torch, "layer_norm"), (F, "rms_norm"), (torch, "rms_norm"), (F, "group_norm"),
            (torch.nn.LayerNorm, "forward"), (torch.nn.RMSNorm, "forward"), (norms, "layer_norm"), (norms, "rms_norm"),
            (norms.LayerNorm, "forward"), (norms.RMSNorm, "forward"), (torch.nn, "LayerNorm"), (torch.nn, "RMSNorm"),
            (norms, "LayerNorm"), (norms, "RMSNorm")]


# ----------------------------------------------------------------------------- task 1
def check_layer_norm(layer_norm_forward) -> None:
    """Task 1: ``(x − μ) / √(σ² + ε) · γ + β`` over the last dimension, σ² the biased variance."""
    cases = _cases(901)
    for i, (what, x, eps) in enumerate(cases):
        n = x.shape[-1]
        gamma, beta = _gamma_beta(n, x.dtype, 910 + i)
        name = f"layer_norm_forward on {what}"
        got = call_without(layer_norm_forward, _library_norms(), _LIBRARY_NORMS_MESSAGE, x.clone(), gamma.clone(),
                           beta.clone(), eps, name="layer_norm_forward")
        got = expect_tensor(name, got, tuple(x.shape))
        want = layer_norm(x.double(), gamma.double(), beta.double(), eps).to(x.dtype)
        gd, bd = gamma.double(), beta.double()
        aff = lambda y: (y * gd + bd).to(x.dtype)  # noqa: E731
        expect_close(name, got, want, **_tol(x.dtype), mistakes={
            "unbiased variance (torch.var's default divides by n − 1): LayerNorm uses the biased variance, "
            "Σ(x − μ)²/n (unbiased=False)": aff(_normalise(x, -1, eps, unbiased=True)),
            "eps outside the square root: divide by √(σ² + ε), not by σ + ε":
                aff(_normalise(x, -1, eps, eps_outside=True)),
            "normalised over the wrong dimension: the statistics are over the last dimension (dim=-1), "
            "one mean and variance per vector": aff(_normalise(x, 0, eps)) if x.dim() > 1 else None,
            "normalised over the wrong dimension (dim=-2): the statistics are over the last dimension":
                aff(_normalise(x, -2, eps)) if x.dim() > 1 else None,
            "normalised over the whole tensor: the statistics are per vector, over the last dimension only":
                aff(_over_all(x, eps)),
            "γ and β missing: multiply by gamma and add beta after normalising":
                _normalise(x, -1, eps).to(x.dtype),
            "β added before multiplying by γ: y = x̂ · γ + β": ((_normalise(x, -1, eps) + bd) * gd).to(x.dtype),
            "the mean was not subtracted (that is RMSNorm, not LayerNorm)":
                aff(_normalise(x, -1, eps, centre=False)),
        })
    passed("layer_norm", len(cases))


# ----------------------------------------------------------------------------- task 2
def check_rms_norm(rms_norm_forward) -> None:
    """Task 2: ``x / √(mean(x²) + ε) · γ`` over the last dimension; no mean, no β."""
    cases = _cases(902)
    for i, (what, x, eps) in enumerate(cases):
        n = x.shape[-1]
        gamma, _ = _gamma_beta(n, x.dtype, 920 + i)
        name = f"rms_norm_forward on {what}"
        got = call_without(rms_norm_forward, _library_norms(), _LIBRARY_NORMS_MESSAGE, x.clone(), gamma.clone(), eps,
                           name="rms_norm_forward")
        got = expect_tensor(name, got, tuple(x.shape))
        want = rms_norm(x.double(), gamma.double(), eps).to(x.dtype)
        gd = gamma.double()
        aff = lambda y: (y * gd).to(x.dtype)  # noqa: E731
        xd = x.double()
        expect_close(name, got, want, **_tol(x.dtype), mistakes={
            "subtracted the mean in RMSNorm: RMSNorm divides x itself by its root mean square, without centring":
                aff(_normalise(x, -1, eps)),
            "eps outside the square root: divide by √(mean(x²) + ε), not by RMS + ε":
                aff(_normalise(x, -1, eps, centre=False, eps_outside=True)),
            "normalised over the wrong dimension: the RMS is over the last dimension (dim=-1)":
                aff(_normalise(x, 0, eps, centre=False)) if x.dim() > 1 else None,
            "normalised over the wrong dimension (dim=-2): the RMS is over the last dimension":
                aff(_normalise(x, -2, eps, centre=False)) if x.dim() > 1 else None,
            "normalised over the whole tensor: one RMS per vector, over the last dimension only":
                aff(_over_all(x, eps, centre=False)),
            "sum of squares instead of their mean: divide Σx² by n before the square root":
                aff(xd / ((xd * xd).sum(-1, keepdim=True) + eps).sqrt()),
            "took the root of the mean without squaring (mean |x| or mean x): RMS = √(mean(x²))":
                aff(xd / (xd.abs().mean(-1, keepdim=True) + eps).sqrt()),
            "γ missing: multiply by gamma after normalising": _normalise(x, -1, eps, centre=False).to(x.dtype),
        })
    passed("rms_norm", len(cases))


# ----------------------------------------------------------------------------- task 3
def _sublayers(d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    wa, w1, w2 = r(d, d) / math.sqrt(d), r(d, 2 * d) / math.sqrt(d), r(2 * d, d) / math.sqrt(2 * d)
    # "attention": a causal running mean of the tokens, then a map; FFN: GELU MLP
    def attn(h):
        mix = h.cumsum(-2) / torch.arange(1, h.shape[-2] + 1, dtype=h.dtype)[:, None]
        return torch.tanh(mix @ wa) * 2
    ffn = lambda h: F.gelu(h @ w1) @ w2  # noqa: E731
    g1, b1 = _gamma_beta(d, torch.float64, seed + 1)
    g2, b2 = _gamma_beta(d, torch.float64, seed + 2)
    norm1 = lambda h: layer_norm(h, g1, b1)  # noqa: E731
    norm2 = lambda h: layer_norm(h, g2, b2)  # noqa: E731
    return attn, ffn, norm1, norm2


def reference_block(x, attn, ffn, norm1, norm2, placement: str):
    """Attention then FFN, each ``course_lib.norms.residual_block`` with ``placement``."""
    x = residual_block(x, attn, norm1, placement)
    return residual_block(x, ffn, norm2, placement)


def check_block(block_forward) -> None:
    """Task 3: pre-LN ``x + F(Norm(x))`` and post-LN ``Norm(x + F(x))`` blocks from given sub-layers."""
    g = torch.Generator().manual_seed(903)
    cases = []
    for placement in ("pre", "post"):
        for shape in [(2, 5, 8), (1, 7, 16), (3, 4, 12)]:
            cases.append((placement, torch.randn(*shape, generator=g, dtype=torch.float64) * 2 + 0.5))
    for i, (placement, x) in enumerate(cases):
        attn, ffn, n1, n2 = _sublayers(x.shape[-1], 930 + i)
        name = f"block_forward(placement={placement!r}) on x {list(x.shape)}"
        got = call_student(block_forward, x.clone(), attn, ffn, n1, n2, placement, name="block_forward")
        got = expect_tensor(name, got, tuple(x.shape))
        want = reference_block(x, attn, ffn, n1, n2, placement)
        other = "post" if placement == "pre" else "pre"
        h = residual_block(x, attn, n1, placement)
        mistakes = {
            ("norm applied after the residual add (post-LN) when pre-LN was asked: pre-LN is x + F(Norm(x)), the "
             "residual stream itself is never normalised" if placement == "pre" else
             "pre-LN computed when post-LN was asked: post-LN normalises the sum, Norm(x + F(x))"):
                reference_block(x, attn, ffn, n1, n2, other),
            "the same norm used for both sub-layers: norm1 goes with attention, norm2 with the FFN":
                reference_block(x, attn, ffn, n1, n1, placement),
            "the FFN was applied to the block input x; it must take the output of the attention sub-layer":
                residual_block(x, ffn, n2, placement) + h - x if placement == "pre" else
                n2(h + ffn(x)),
            "the residual connection is missing: add the sub-layer's input back (x + …)":
                ffn(n2(attn(n1(x)))) if placement == "pre" else n2(ffn(n1(attn(x)))),
        }
        if placement == "pre":
            mistakes["normalised the sub-layer's output instead of its input: pre-LN is x + F(Norm(x))"] = (
                lambda y: y + n2(ffn(y)))(x + n1(attn(x)))
        expect_close(name, got, want, mistakes=mistakes)
    passed("block", len(cases))


# ----------------------------------------------------------------------------- task 4
def check_prms_norm(prms_norm_forward) -> None:
    """Task 4: every entry divided by the RMS of the first ``k = ⌈p·n⌉`` entries, times γ."""
    g = torch.Generator().manual_seed(904)
    specs = [((4, 16), 0.25, torch.float64), ((3, 10), 0.25, torch.float64), ((2, 3, 20), 0.0625, torch.float64),
             ((5, 7), 0.5, torch.float64), ((2, 9), 1.0, torch.float64), ((4, 64), 0.0625, torch.float32),
             ((3, 32), 0.3, torch.float16)]
    for i, (shape, p, dtype) in enumerate(specs):
        x = (torch.randn(*shape, generator=g, dtype=torch.float64) * 2 + 0.3).to(dtype)
        n, eps = shape[-1], 1e-6
        gamma, _ = _gamma_beta(n, dtype, 940 + i)
        name = f"prms_norm_forward(p={p}) on x {list(shape)}, {str(dtype).replace('torch.', '')}"
        got = call_without(prms_norm_forward, _library_norms(), _LIBRARY_NORMS_MESSAGE, x.clone(), gamma.clone(), p,
                           eps, name="prms_norm_forward")
        got = expect_tensor(name, got, tuple(x.shape))
        xd, gd = x.double(), gamma.double()
        k = math.ceil(p * n)
        want = rms_norm(xd, gd, eps, p=p).to(dtype)

        def by(ms):
            return (xd / (ms + eps).sqrt() * gd).to(dtype)

        kf = max(1, math.floor(p * n))
        first_only = xd.clone()
        first_only[..., :k] = xd[..., :k] / ((xd[..., :k] ** 2).mean(-1, keepdim=True) + eps).sqrt()
        expect_close(name, got, want, **_tol(dtype), mistakes={
            "the RMS was taken over all n entries: pRMSNorm estimates it from the first k = ⌈p·n⌉ only":
                by((xd ** 2).mean(-1, keepdim=True)) if k < n else None,
            "k rounded down: use k = ⌈p·n⌉ (math.ceil)":
                by((xd[..., :kf] ** 2).mean(-1, keepdim=True)) if kf != k else None,
            "the sum of the first k squares was divided by n: the mean is over the k entries used":
                by((xd[..., :k] ** 2).sum(-1, keepdim=True) / n) if k < n else None,
            "only the first k entries were normalised: every entry is divided by the estimated RMS":
                (first_only * gd).to(dtype) if k < n else None,
            "subtracted the mean in RMSNorm: pRMSNorm does not centre x":
                ((xd - xd[..., :k].mean(-1, keepdim=True))
                 / (((xd - xd[..., :k].mean(-1, keepdim=True))[..., :k] ** 2).mean(-1, keepdim=True) + eps).sqrt()
                 * gd).to(dtype),
            "γ missing: multiply by gamma after normalising": (want.double() / gd).to(dtype),
        })
    passed("prms_norm", len(specs))


# ----------------------------------------------------------------------------- task 5 (transfer)
def _ln_backward(x, gamma, grad_y, eps, *, mean_term=True, var_term=True, with_gamma=True, with_eps=True):
    """Gradients of ``y = LayerNorm(x) · γ + β`` (float64), by the formula, with optional mistakes."""
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    inv = 1 / (var + (eps if with_eps else 0.0)).sqrt()
    xhat = (x - mu) * inv
    gx = grad_y * gamma if with_gamma else grad_y
    dx = gx
    if mean_term:
        dx = dx - gx.mean(-1, keepdim=True)
    if var_term:
        dx = dx - xhat * (gx * xhat).mean(-1, keepdim=True)
    return dx * inv


def check_layer_norm_backward(layer_norm_backward) -> None:
    """Task 5: ``(∂L/∂x, ∂L/∂γ, ∂L/∂β)`` of LayerNorm, derived by hand; compared with autograd, autograd refused."""
    g = torch.Generator().manual_seed(905)
    specs = [((2, 6), 1e-5), ((3, 4, 8), 1e-5), ((5, 5), 0.1), ((1, 16), 1e-5), ((2, 2, 3, 10), 0.5)]
    for _ in range(2):                                   # shapes the sheet does not print
        n = int(torch.randint(2, 40, (1,), generator=g))
        specs.append(((int(torch.randint(1, 6, (1,), generator=g)), n), 1e-5))
    for shape, eps in specs:
        n = shape[-1]
        name = f"layer_norm_backward(x {list(shape)}, eps={eps})"
        x = torch.randn(*shape, generator=g, dtype=torch.float64) * 2 + 0.5
        gamma = 1 + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
        grad_y = torch.randn(*shape, generator=g, dtype=torch.float64)
        res = call_without(layer_norm_backward, autograd(), AUTOGRAD_MESSAGE, x.clone(), gamma.clone(),
                           grad_y.clone(), eps, name="layer_norm_backward")
        if not (isinstance(res, (tuple, list)) and len(res) == 3):
            raise AssertionError(f"{name}: expected a triple (grad_x, grad_gamma, grad_beta); got {type(res).__name__}")
        xr, gr, br = (t.clone().requires_grad_(True) for t in (x, gamma, torch.zeros(n, dtype=torch.float64)))
        F.layer_norm(xr, (n,), gr, br, eps).backward(grad_y)                 # the reference: autograd
        got_x = expect_tensor(f"{name}: grad_x", res[0], tuple(shape))
        for label, got, want in (("grad_gamma", res[1], gr.grad), ("grad_beta", res[2], br.grad)):
            if isinstance(got, torch.Tensor) and tuple(got.shape) == tuple(shape):
                raise AssertionError(f"{name}: {label} has the shape of x: γ and β are shared by every vector, so "
                                     f"sum their gradients over all dimensions but the last (shape [{n}])")
            expect_tensor(f"{name}: {label}", got, (n,))
        lead = tuple(range(len(shape) - 1))
        xhat = (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
        expect_close(f"{name}: grad_x", got_x, xr.grad, mistakes={
            "μ treated as a constant: every x_i moves the mean too, which adds −mean(g) (g = ∂L/∂y · γ)":
                _ln_backward(x, gamma, grad_y, eps, mean_term=False),
            "σ treated as a constant: every x_i moves the variance too, which adds −x̂ · mean(g · x̂)":
                _ln_backward(x, gamma, grad_y, eps, var_term=False),
            "μ and σ both treated as constants: ∂L/∂x is not just g / σ":
                _ln_backward(x, gamma, grad_y, eps, mean_term=False, var_term=False),
            "γ forgotten: the upstream gradient reaching x̂ is ∂L/∂y · γ":
                _ln_backward(x, gamma, grad_y, eps, with_gamma=False),
            "ε missing: σ is √(variance + ε), in the backward pass as in the forward":
                _ln_backward(x, gamma, grad_y, eps, with_eps=False),
        })
        expect_close(f"{name}: grad_gamma", res[1], gr.grad, mistakes={
            "∂L/∂γ uses x instead of the normalised x̂: y = x̂ · γ + β": (grad_y * x).sum(lead),
            "∂L/∂γ averaged over the vectors; sum it (every vector adds its share)": (grad_y * xhat).mean(lead)
            if lead else None,
            "∂L/∂γ is Σ ∂L/∂y · x̂, without γ": (grad_y * xhat * gamma).sum(lead),
        })
        expect_close(f"{name}: grad_beta", res[2], br.grad, mistakes={
            "∂L/∂β averaged over the vectors; sum it": grad_y.mean(lead) if lead else None,
            "∂L/∂β is Σ ∂L/∂y, without γ (β is added after the scaling)": (grad_y * gamma).sum(lead),
        })
    passed("layer_norm_backward", len(specs))


# ----------------------------------------------------------------------------- task 6 (transfer)
def check_fold_centring(fold_centring) -> None:
    """Task 6: ``W' = W − mean over the output features``, ``b' = b − mean(b)``: LN(hW + b) = RMSNorm(hW' + b') + β."""
    g = torch.Generator().manual_seed(906)
    specs = [(6, 4, 1e-5), (3, 8, 1e-5), (5, 5, 0.1), (10, 16, 1e-5)]
    for _ in range(2):                                   # sizes the sheet does not print
        specs.append((int(torch.randint(2, 24, (1,), generator=g)), int(torch.randint(2, 24, (1,), generator=g)),
                      1e-5))
    for d_in, n, eps in specs:
        name = f"fold_centring(W [{d_in}, {n}], b [{n}])"
        W = torch.randn(d_in, n, generator=g, dtype=torch.float64) / math.sqrt(d_in) + 0.3
        b = torch.randn(n, generator=g, dtype=torch.float64) + 1.0
        res = call_student(fold_centring, W.clone(), b.clone(), name="fold_centring")
        if not (isinstance(res, (tuple, list)) and len(res) == 2):
            raise AssertionError(f"{name}: expected a pair (W_folded, b_folded); got {type(res).__name__}")
        W2 = expect_tensor(f"{name}: W_folded", res[0], (d_in, n))
        b2 = expect_tensor(f"{name}: b_folded", res[1], (n,))
        # the point of the task: the folded layer followed by RMSNorm (no centring) is the LayerNorm of the old one
        h = torch.randn(7, d_in, generator=g, dtype=torch.float64) * 3
        gamma, beta = 1 + 0.3 * torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g,
                                                                                           dtype=torch.float64)
        want = F.layer_norm(h @ W + b, (n,), gamma, beta, eps)
        got = F.rms_norm(h @ W2.double() + b2.double(), (n,), gamma, eps) + beta
        if torch.allclose(got, want, atol=1e-9, rtol=1e-7):
            continue
        centre = lambda t: t - t.mean(-1, keepdim=True)                          # noqa: E731
        by = lambda Wx, bx: F.rms_norm(h @ Wx + bx, (n,), gamma, eps) + beta    # noqa: E731
        expect_close(f"{name}: RMSNorm(h W_folded + b_folded) · γ + β vs LayerNorm(h W + b) · γ + β", got, want,
                     mistakes={
            "centred along the wrong axis (over the d_in inputs): each output feature must lose the mean over the n "
            "outputs, i.e. every row of W has mean 0 (W.mean(-1, keepdim=True))": by(W - W.mean(0, keepdim=True),
                                                                                     centre(b)),
            "the bias was not centred: LayerNorm subtracts the mean of h W + b, and b contributes mean(b)":
                by(centre(W), b),
            "the weights were not centred, only the bias": by(W, centre(b)),
            "subtracted the mean of all of W (one number): centre each row over the output features":
                by(W - W.mean(), b - b.mean()),
            "also divided by a standard deviation: only the centring can be folded into a linear layer (the "
            "division depends on the input, RMSNorm still does it)": by(centre(W) / W.std(-1, keepdim=True),
                                                                        centre(b) / b.std()),
        }, atol=1e-9, rtol=1e-7)
    passed("fold_centring", len(specs))
