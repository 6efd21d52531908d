"""Checks for Exercise 12 (writing kernels in Triton).

Tasks, in the order of the exercise notebook — the student writes ``@triton.jit`` kernels with
the signatures below; each check launches them itself:

1. ``axpy_relu_kernel(x_ptr, y_ptr, out_ptr, a, n, BLOCK)`` — ``out = relu(a·x + y)``, tail masked;
2. ``softmax_kernel(out_ptr, in_ptr, in_row_stride, out_row_stride, n_cols, BLOCK)`` — row softmax,
   one program per row;
3. ``flash_fwd_kernel(Q, K, V, O, LSE, sm_scale, N, HEAD_DIM, BLOCK_M, BLOCK_N, IS_CAUSAL)`` — the
   online-softmax update of ``(m, ℓ, acc)`` for one key/value block, inside a given scaffold;
4. ``rms_norm_kernel(out_ptr, in_ptr, w_ptr, in_row_stride, out_row_stride, n_cols, eps, BLOCK)``;
5. ``flash_bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, Delta, sm_scale, N, HEAD_DIM, BLOCK_M, BLOCK_N,
   IS_CAUSAL)`` — the FlashAttention-2 backward's dK/dV accumulation of one key block over the
   query blocks, inside a given scaffold; compared with the gradients of
   ``F.scaled_dot_product_attention``;
6. (transfer) ``bias_gelu_kernel(x_ptr, b_ptr, out_ptr, n_elements, n_cols, BLOCK)`` — the FFN's fused
   epilogue ``gelu_tanh(x + b)`` over a flat grid, the bias broadcast along the rows (``offs % n_cols``),
   tanh written in a form that saturates; against ``F.gelu(…, approximate="tanh")``;
7. (transfer) ``cross_entropy_kernel(loss_ptr, logits_ptr, targets_ptr, row_stride, n_cols, BLOCK)`` — a
   fused cross-entropy, one program per row: ``logsumexp(x) − x[target]``, 0 where the target is −100;
   against ``F.cross_entropy(reduction="none")``, with logits in the hundreds and a target far below the max.

Shapes of tasks 6 and 7 are partly drawn in the check (sizes that are not powers of two).

fp32 products: the scaffolds and reference answers pass ``input_precision="ieee"`` to ``tl.dot``,
so fp32 runs exactly on every GPU (Triton's default on sm ≥ 80 is TF32, whose 10-bit mantissa
would miss these fp32 tolerances by an order of magnitude); the tolerances below are fp32's.

Every output buffer is a view into a larger buffer whose remainder holds a sentinel: a kernel
that stores past the end (an unmasked tail) is caught deterministically, in the interpreter as
on a GPU. Wrong answers are recognised by recomputing the known mistakes in PyTorch (no mask on
the padding lanes, ``other=0`` instead of ``-inf``, no rescale of ``acc``, normalising inside the
loop, ``mean`` over ``BLOCK`` instead of ``n_cols`` …).

triton is not imported here at module import time (``course_lib.triton_kernels`` must set
``TRITON_INTERPRET`` first); the kernels arrive already decorated from the notebook.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from course_lib.grading import expect_close, passed

__all__ = ["check_axpy_relu", "check_softmax_kernel", "check_flash_inner", "check_rms_norm_kernel",
           "check_flash_bwd_dkdv", "check_bias_gelu", "check_cross_entropy_kernel", "IGNORE_INDEX"]

SENTINEL = 12345.0


def _device() -> torch.device:
    from course_lib.triton_kernels import DEVICE  # sets TRITON_INTERPRET on a CPU first

    return DEVICE


def _tf32_by_default() -> bool:
    """True where ``tl.dot`` on fp32 defaults to TF32: compiled for compute capability ≥ 8.0."""
    from course_lib.triton_kernels import INTERPRETED

    return not INTERPRETED and torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


TF32_HINT = (" — on this GPU tl.dot multiplies fp32 in TF32 (10-bit mantissa) unless told otherwise: "
             "pass input_precision=\"ieee\" to every tl.dot")


def _expect_close_fp32_dots(name, got, want, dtype, **kwargs) -> None:
    """:func:`expect_close`, adding the TF32 hint to a plain 'wrong values' failure of an fp32
    case on a GPU where fp32 ``tl.dot`` defaults to TF32 (the scaffolds pass ``"ieee"``)."""
    try:
        expect_close(name, got, want, **kwargs)
    except AssertionError as exc:
        if dtype == torch.float32 and "wrong values" in str(exc) and _tf32_by_default():
            raise AssertionError(str(exc) + TF32_HINT) from None
        raise


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _launch(kernel, grid, *args, name: str, **meta) -> None:
    """Launch the student's kernel; turn its failures into an AssertionError that says why."""
    if not hasattr(kernel, "__getitem__") or not hasattr(kernel, "fn"):
        raise AssertionError(f"{name}: expected a @triton.jit kernel; got {type(kernel).__name__} "
                             "(did you forget the @triton.jit decorator?)")
    try:
        with warnings.catch_warnings():     # the interpreter's NumPy warns where a GPU silently gives inf
            warnings.simplefilter("ignore", RuntimeWarning)
            kernel[grid](*args, **meta)
    except Exception as exc:
        if any(isinstance(e, NotImplementedError) for e in _chain(exc)) or "fill in this answer" in str(exc):
            raise AssertionError(
                f"{name} is not implemented yet: replace `raise NotImplementedError` with your answer"
            ) from None
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise AssertionError(f"{name} raised {type(exc).__name__}: {first}") from exc


def _guarded(shape: tuple[int, ...], dtype: torch.dtype, pad: int, fill: float,
             row_pad: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(view, buffer)``: ``view`` of ``shape`` (rows followed by ``row_pad`` extra columns,
    default ``pad``, and a trailing guard of ``pad`` elements) filled with ``fill``; the rest of
    ``buffer`` is SENTINEL."""
    rows, cols = (1, shape[0]) if len(shape) == 1 else shape
    row_pad = pad if row_pad is None else row_pad
    buf = torch.full((rows * (cols + row_pad) + pad,), SENTINEL, dtype=dtype, device=_device())
    view = buf[: rows * (cols + row_pad)].view(rows, cols + row_pad)[:, :cols]
    view.fill_(fill)
    return (view[0] if len(shape) == 1 else view), buf


def _expect_guard(name: str, view: torch.Tensor, buf: torch.Tensor, hint: str) -> None:
    keep = torch.ones(buf.numel(), dtype=torch.bool, device=buf.device)
    idx = torch.arange(buf.numel(), device=buf.device).as_strided(view.shape, view.stride(), view.storage_offset())
    keep[idx.reshape(-1)] = False
    touched = (buf[keep] != SENTINEL).sum().item()
    if touched:
        raise AssertionError(f"{name}: {hint} (the kernel wrote {touched} elements past the end of the output)")


def _filled(seed: int, shape, dtype, scale: float = 1.0, pad: int = 0) -> torch.Tensor:
    """A seeded random input; with ``pad`` a row-strided view of a wider buffer (garbage after it)."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = (1, shape[0]) if len(shape) == 1 else shape
    full = (torch.randn(rows, cols + pad, generator=g) * scale)
    full[:, cols:] = 1e4  # garbage a wrong row stride or an unmasked load would pick up
    full = torch.cat([full.reshape(-1), torch.full((max(pad, 1),), 1e4)]).to(dtype).to(_device())
    view = full[: rows * (cols + pad)].view(rows, cols + pad)[:, :cols]
    return view[0] if len(shape) == 1 else view


# ----------------------------------------------------------------------------- task 1
def check_axpy_relu(axpy_relu_kernel) -> None:
    """Task 1: ``out = max(a·x + y, 0)`` elementwise, grid ``cdiv(n, BLOCK)``, tail masked."""
    name = "axpy_relu_kernel"
    cases = [(1000, 128, 2.0), (1024, 256, -0.5), (37, 16, 3.0), (5, 64, 1.5), (300, 32, 0.25)]
    tail_hint = ("unmasked tail (n not a multiple of BLOCK): mask the loads and the store with "
                 "offsets < n")
    for i, (n, block, a) in enumerate(cases):
        label = f"{name} (n={n}, BLOCK={block}, a={a})"
        x = _filled(100 + i, (n,), torch.float32, pad=block)
        y = _filled(200 + i, (n,), torch.float32, pad=block)
        out, buf = _guarded((n,), torch.float32, block, float("nan"))
        _launch(axpy_relu_kernel, (_cdiv(n, block),), x, y, out, a, n, name=name, BLOCK=block)
        _expect_guard(label, out, buf, tail_hint)
        want = torch.relu(a * x + y)
        got = out.detach().clone()
        if torch.isnan(got).any():
            first_block = torch.isnan(got[:block]).sum() == 0
            if first_block and n > block and torch.allclose(got[:block], want[:block]):
                raise AssertionError(f"{label}: only the first block was written: the offsets ignore the "
                                     "program id; use pid * BLOCK + tl.arange(0, BLOCK)")
            raise AssertionError(f"{label}: {int(torch.isnan(got).sum())} elements of out never written "
                                 "(grid is cdiv(n, BLOCK): each program must store its whole block)")
        expect_close(label, got, want, mistakes={
            "ReLU missing: clamp at zero with tl.maximum(a * x + y, 0.0)": a * x + y,
            "a multiplies y instead of x: out = relu(a·x + y)": torch.relu(x + a * y),
            "ReLU applied before adding y: out = relu(a·x + y)": torch.relu(a * x) + y,
        })
    passed("axpy_relu", len(cases))


# ----------------------------------------------------------------------------- task 2
def _softmax_other_zero(x: torch.Tensor, block: int) -> torch.Tensor:
    padded = F.pad(x.double(), (0, block - x.shape[-1]), value=0.0)
    return torch.softmax(padded, -1)[..., : x.shape[-1]]


def _rows_with_stride(x: torch.Tensor, stride: int) -> torch.Tensor:
    """The rows a kernel reads when it steps ``stride`` elements between rows of ``x``'s buffer."""
    rows, cols = x.shape
    flat = x.as_strided((x.untyped_storage().nbytes() // x.element_size() - x.storage_offset(),), (1,))
    return torch.stack([flat[r * stride: r * stride + cols] for r in range(rows)])


def check_softmax_kernel(softmax_kernel) -> None:
    """Task 2: softmax of each row (one program per row, ``BLOCK = next_power_of_2(n_cols)``)."""
    name = "softmax_kernel"
    # (rows, n_cols, scale, dtype): scale 100 gives logits in the hundreds — exp overflows fp32
    cases = [(4, 7, 1.0, torch.float32), (3, 64, 2.0, torch.float32), (5, 100, 3.0, torch.float32),
             (2, 33, 100.0, torch.float32), (3, 50, 2.0, torch.float16), (1, 1, 1.0, torch.float32)]
    for i, (rows, n, scale, dtype) in enumerate(cases):
        label = f"{name} (rows={rows}, n_cols={n}, {str(dtype).replace('torch.', '')})"
        block = _next_pow2(n)
        pad = 5
        x = _filled(300 + i, (rows, n), dtype, scale=scale, pad=pad)
        out, buf = _guarded((rows, n), dtype, block, float("nan"))
        _launch(softmax_kernel, (rows,), out, x, x.stride(0), out.stride(0), n, name=name, BLOCK=block)
        _expect_guard(label, out, buf, "unmasked tail (n_cols not a power of two): mask the store with "
                                       "cols < n_cols")
        want = torch.softmax(x.double(), -1).to(dtype)
        got = out.detach().clone()
        if not torch.isfinite(got).all():
            if scale >= 100:
                raise AssertionError(f"{label}: softmax not max-subtracted (overflow on large logits): "
                                     "subtract tl.max(x, axis=0) before tl.exp")
            raise AssertionError(f"{label}: NaN or inf in the output (is every column stored? is the "
                                 "row maximum subtracted?)")
        expect_close(label, got, want, mistakes={
            "other=0 instead of -inf on masked softmax loads: the padding lanes add exp(0 − max) to the "
            "sum; load with other=float('-inf')": _softmax_other_zero(x, block).to(dtype) if block > n else None,
            "row offset uses n_cols instead of in_row_stride (rows of the input are in_row_stride "
            "elements apart)": torch.softmax(_rows_with_stride(x, n).double(), -1).to(dtype) if rows > 1 else None,
            "softmax over the wrong axis: normalise each row (axis=0 of the row block)":
                torch.softmax(x.double(), 0).to(dtype),
        })
    passed("softmax_kernel", len(cases))


# ----------------------------------------------------------------------------- task 3
def _flash_simulated(q, k, v, scale, causal, block_m, block_n, variant):
    """The scaffold's block loop in float64 with a (possibly wrong) update; returns (O, LSE)."""
    q, k, v = q.double(), k.double(), v.double()
    BH, N, d = q.shape
    O = torch.empty(BH, N, d, dtype=torch.float64)
    L = torch.empty(BH, N, dtype=torch.float64)
    cols_all = torch.arange(N)
    for start_m in range(0, N, block_m):
        rows = torch.arange(start_m, min(start_m + block_m, N))
        qi = q[:, rows]
        m = torch.full((BH, len(rows)), -math.inf, dtype=torch.float64)
        l = torch.zeros(BH, len(rows), dtype=torch.float64)
        acc = torch.zeros(BH, len(rows), d, dtype=torch.float64)
        hi = min(start_m + block_m, N) if causal else N
        for start_n in range(0, hi, block_n):
            cols = cols_all[start_n: start_n + block_n]
            s = (qi @ k[:, cols].transpose(-1, -2)) * scale
            if causal:
                s = s.masked_fill(rows[:, None] < cols[None, :], -math.inf)
            vj = v[:, cols]
            m_new = torch.maximum(m, s.amax(-1))
            p = torch.exp(s - m_new[..., None])
            alpha = torch.exp(m - m_new)
            if variant == "no_rescale_acc":
                l, acc = alpha * l + p.sum(-1), acc + p @ vj
            elif variant == "no_rescale_l":
                l, acc = l + p.sum(-1), alpha[..., None] * acc + p @ vj
            elif variant == "normalize_inside":
                l = alpha * l + p.sum(-1)
                acc = (alpha[..., None] * acc + p @ vj) / l[..., None]
            elif variant == "normalize_inside_fa1":
                l_new = alpha * l + p.sum(-1)
                acc = ((alpha * l)[..., None] * acc + p @ vj) / l_new[..., None]
                l = l_new
            elif variant == "m_not_updated":
                l, acc = alpha * l + p.sum(-1), alpha[..., None] * acc + p @ vj
                continue  # m is never set to m_new
            else:
                l, acc = alpha * l + p.sum(-1), alpha[..., None] * acc + p @ vj
            m = m_new
        O[:, rows] = acc / l[..., None]
        L[:, rows] = m + torch.log(l)
    return O, L


def check_flash_inner(flash_fwd_kernel) -> None:
    """Task 3: the scaffold's FlashAttention-2 forward with the student's (m, ℓ, acc) update."""
    name = "flash_fwd_kernel"
    # (BH, N, d, BLOCK_M, BLOCK_N, causal, dtype, scale of q)
    cases = [(2, 40, 16, 16, 16, False, torch.float32, 1.0), (2, 40, 16, 16, 16, True, torch.float32, 1.0),
             (1, 64, 32, 32, 16, True, torch.float32, 1.0), (1, 33, 16, 16, 16, False, torch.float32, 40.0),
             (1, 48, 16, 32, 16, True, torch.float16, 1.0), (1, 1, 16, 16, 16, False, torch.float32, 1.0)]
    dev = _device()
    for i, (BH, N, d, bm, bn, causal, dtype, qs) in enumerate(cases):
        label = f"{name} (N={N}, d={d}, BLOCK_M={bm}, BLOCK_N={bn}, {'causal' if causal else 'full'}, " \
                f"{str(dtype).replace('torch.', '')})"
        g = torch.Generator().manual_seed(400 + i)
        q = (torch.randn(BH, N, d, generator=g) * qs).to(dtype)
        k, v = (torch.randn(BH, N, d, generator=g).to(dtype) for _ in range(2))
        scale = 1.0 / math.sqrt(d)
        o, obuf = _guarded((BH * N, d), dtype, bm * d, float("nan"), row_pad=0)
        lse, lbuf = _guarded((BH * N,), torch.float32, bm, float("nan"))
        _launch(flash_fwd_kernel, (_cdiv(N, bm), BH), q.to(dev), k.to(dev), v.to(dev), o, lse, scale, N,
                name=name, HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, IS_CAUSAL=causal)
        tail = "unmasked tail (N not a multiple of BLOCK_M): the scaffold's stores must keep offs_m < N"
        _expect_guard(f"O of {label}", o, obuf, tail)
        _expect_guard(f"LSE of {label}", lse, lbuf, tail)
        got_o = o.detach().cpu().reshape(BH, N, d)
        got_l = lse.detach().cpu().reshape(BH, N)
        want_o = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal)
        _, want_l = _flash_simulated(q, k, v, scale, causal, bm, bn, "right")
        if not torch.isfinite(got_o).all() or not torch.isfinite(got_l).all():
            if qs > 1:
                raise AssertionError(f"{label}: softmax not max-subtracted (overflow on large logits): "
                                     "use p = exp(s − m_new) with m_new = max(m_i, rowmax(s))")
            if not torch.isfinite(got_l).all() and torch.isfinite(got_o).all():
                raise AssertionError(f"{label}: LSE is not finite: m_i never updated — end the body with m_i = m_new")
            raise AssertionError(f"{label}: NaN or inf in O or LSE (m_i, l_i and acc must all be carried "
                                 "to the next iteration; is m_i = m_new set?)")
        atol, rtol = (1e-4, 1e-4) if dtype == torch.float32 else (3e-3, 3e-3)
        if torch.allclose(got_o.double(), want_o, atol=atol, rtol=rtol) and torch.allclose(
                got_l.double(), want_l, atol=1e-3, rtol=1e-4):
            continue                    # right: the known mistakes are simulated only to name a wrong answer
        sim = {key: _flash_simulated(q, k, v, scale, causal, bm, bn, key) for key in
               ("no_rescale_acc", "no_rescale_l", "normalize_inside", "normalize_inside_fa1", "m_not_updated")}
        mistakes_o = {
            "missing rescale of acc by exp(m_old − m_new): acc = acc · α + P·V": sim["no_rescale_acc"][0],
            "missing rescale of ℓ by exp(m_old − m_new): l_i = l_i · α + rowsum(P)": sim["no_rescale_l"][0],
            "normalizing inside the loop: keep acc unnormalised; the scaffold divides by ℓ once after the "
            "loop": sim["normalize_inside"][0],
            "normalizing inside the loop (the FlashAttention-1 update): in FA2 acc stays unnormalised "
            "and is divided by ℓ once after the loop": sim["normalize_inside_fa1"][0],
            "m_i never updated: end the body with m_i = m_new": sim["m_not_updated"][0],
        }
        _expect_close_fp32_dots(f"O of {label}", got_o.double(), want_o, dtype, mistakes=mistakes_o,
                                atol=atol, rtol=rtol)
        expect_close(f"LSE of {label}", got_l.double(), want_l, atol=1e-3, rtol=1e-4, mistakes={
            "missing rescale of ℓ by exp(m_old − m_new): l_i = l_i · α + rowsum(P)": sim["no_rescale_l"][1],
            "m_i never updated: end the body with m_i = m_new": sim["m_not_updated"][1],
        })
    passed("flash_inner", len(cases))


# ----------------------------------------------------------------------------- task 4
def check_rms_norm_kernel(rms_norm_kernel) -> None:
    """Task 4: ``y = x / sqrt(mean(x²) + eps) · w`` per row, compared with ``F.rms_norm``."""
    name = "rms_norm_kernel"
    cases = [(4, 8, 1e-6, 1.0, torch.float32), (3, 37, 1e-5, 1.0, torch.float32),
             (5, 100, 0.1, 0.2, torch.float32), (2, 64, 1e-6, 1.0, torch.float16), (1, 1, 1e-6, 1.0, torch.float32)]
    for i, (rows, n, eps, scale, dtype) in enumerate(cases):
        label = f"{name} (rows={rows}, n_cols={n}, eps={eps:g}, {str(dtype).replace('torch.', '')})"
        block = _next_pow2(n)
        x = _filled(500 + i, (rows, n), dtype, scale=scale, pad=3)
        w = _filled(600 + i, (n,), dtype, pad=block) * 0.5 + 1.0
        w = w.contiguous()
        out, buf = _guarded((rows, n), dtype, block, float("nan"))
        _launch(rms_norm_kernel, (rows,), out, x, w, x.stride(0), out.stride(0), n, eps, name=name, BLOCK=block)
        _expect_guard(label, out, buf, "unmasked tail (n_cols not a power of two): mask the store with "
                                       "cols < n_cols")
        xd, wd = x.double(), w.double()
        want = F.rms_norm(xd, (n,), wd, eps=eps).to(dtype)
        ms = xd.pow(2).mean(-1, keepdim=True)
        expect_close(label, out.detach().clone(), want, mistakes={
            "mean over BLOCK instead of n_cols: divide the sum of squares by n_cols (the masked lanes "
            "are padding)": (xd / torch.sqrt(xd.pow(2).sum(-1, keepdim=True) / block + eps) * wd).to(dtype)
            if block > n else None,
            "eps added outside the square root: y = x / sqrt(mean(x²) + eps) · w":
                (xd / (ms.sqrt() + eps) * wd).to(dtype),
            "weight not applied: multiply by w": (xd / torch.sqrt(ms + eps)).to(dtype),
            "eps missing: y = x / sqrt(mean(x²) + eps) · w (eps keeps a row of zeros finite)":
                (xd / ms.sqrt() * wd).to(dtype),
            "divided by mean(x²) instead of its square root": (xd / (ms + eps) * wd).to(dtype),
            "that is LayerNorm: RMSNorm does not subtract the mean":
                F.layer_norm(xd, (n,), wd, None, eps).to(dtype) if n > 1 else None,
            "row offset uses n_cols instead of in_row_stride (rows of the input are in_row_stride "
            "elements apart)": F.rms_norm(_rows_with_stride(x, n).double(), (n,), wd, eps=eps).to(dtype)
            if rows > 1 else None,
        })
    passed("rms_norm_kernel", len(cases))


# ----------------------------------------------------------------------------- task 5
def _dkdv_simulated(q, k, v, do, lse, delta, scale, causal, block_m, block_n, variant):
    """The scaffold's loops in float64 on zero-padded blocks, with a (possibly wrong) body.

    Returns ``(dK, dV)`` ``[BH, N, d]``, or ``None`` where the mistake does not type-check
    (a missing transpose with ``BLOCK_M ≠ BLOCK_N`` fails to compile instead).
    """
    if variant in ("no_transpose_dv", "no_transpose_dk", "delta_wrong_axis") and block_m != block_n:
        return None
    BH, N, d = q.shape
    step = block_m * block_n // math.gcd(block_m, block_n)
    Np = _cdiv(N, step) * step
    pad = lambda t: F.pad(t.double(), (0, 0, 0, Np - N)) if t.dim() == 3 else F.pad(t.double(), (0, Np - N))  # noqa: E731
    q, k, v, do, lse, delta = (pad(t) for t in (q, k, v, do, lse, delta))
    idx = torch.arange(Np)
    dK = torch.zeros(BH, Np, d, dtype=torch.float64)
    dV = torch.zeros(BH, Np, d, dtype=torch.float64)
    for start_n in range(0, N, block_n):
        cols = idx[start_n: start_n + block_n]
        kj, vj = k[:, cols], v[:, cols]
        dk = torch.zeros(BH, block_n, d, dtype=torch.float64)
        dv = torch.zeros(BH, block_n, d, dtype=torch.float64)
        lo = (start_n // block_m) * block_m if causal else 0
        for start_m in range(lo, N, block_m):
            rows = idx[start_m: start_m + block_m]
            qi, doi, lse_i, d_i = q[:, rows], do[:, rows], lse[:, rows], delta[:, rows]
            keep = (rows[:, None] < N) & (cols[None, :] < N)
            if causal and variant != "no_mask":
                keep = keep & (rows[:, None] >= cols[None, :])
            s = qi @ kj.transpose(-1, -2) * (1.0 if variant == "no_scale_s" else scale)
            p = torch.exp(s) if variant == "no_lse" else torch.exp(s - lse_i[..., None])
            p = p.masked_fill(~keep, 0.0)
            dv = dv + (p @ doi if variant == "no_transpose_dv" else p.transpose(-1, -2) @ doi)
            dp = doi @ vj.transpose(-1, -2)
            if variant == "no_delta":
                ds = p * dp
            elif variant == "delta_wrong_axis":
                ds = p * (dp - d_i[..., None, :])
            elif variant == "sign":
                ds = p * (d_i[..., None] - dp)
            else:
                ds = p * (dp - d_i[..., None])
            term = ds @ qi if variant == "no_transpose_dk" else ds.transpose(-1, -2) @ qi
            dk = dk + term * (1.0 if variant == "no_scale_dk" else scale)
        dK[:, cols], dV[:, cols] = dk, dv
    return dK[:, :N], dV[:, :N]


_DKDV_MISTAKES = {
    "no_lse": "P not normalised: recompute P = exp(S − LSE) (subtract the forward's log-sum-exp "
              "lse[:, None] from the scaled scores)",
    "no_scale_s": "scores not scaled: S = Q Kᵀ · sm_scale before exp (the forward scaled them)",
    "no_mask": "P not masked: apply tl.where(keep, P, 0) — above the diagonal (causal) P must be 0",
    "no_transpose_dv": "missing transpose: dV = Pᵀ dO (the key block is the row index of dV), not P dO",
    "no_transpose_dk": "missing transpose: dK = dSᵀ Q · scale, not dS Q",
    "no_delta": "D missing: dS = P ∘ (dP − D) with D = rowsum(dO ∘ O), the softmax backward",
    "delta_wrong_axis": "D broadcast over the wrong axis (the keepdim mistake): D has one value per query "
                        "row, so subtract delta[:, None] from dP [BLOCK_M, BLOCK_N]",
    "sign": "sign flipped: dS = P ∘ (dP − D), not P ∘ (D − dP)",
    "no_scale_dk": "scale forgotten in dK: S = Q Kᵀ · scale, so dK = dSᵀ Q · scale",
}


def check_flash_bwd_dkdv(flash_bwd_dkdv_kernel) -> None:
    """Task 5: dK and dV of the scaffold's backward kernel against SDPA's gradients (float64)."""
    name = "flash_bwd_dkdv_kernel"
    # (BH, N, d, BLOCK_M, BLOCK_N, causal, dtype): N ragged; equal blocks first, so that a missing
    # transpose gives wrong numbers (named) before a case where it would not compile
    cases = [(2, 40, 16, 16, 16, False, torch.float32), (2, 40, 16, 16, 16, True, torch.float32),
             (1, 50, 32, 16, 32, False, torch.float32), (1, 64, 16, 32, 16, True, torch.float32),
             (1, 48, 16, 16, 16, True, torch.float16), (1, 1, 16, 16, 16, False, torch.float32)]
    dev = _device()
    for i, (BH, N, d, bm, bn, causal, dtype) in enumerate(cases):
        label = f"{name} (N={N}, d={d}, BLOCK_M={bm}, BLOCK_N={bn}, {'causal' if causal else 'full'}, " \
                f"{str(dtype).replace('torch.', '')})"
        g = torch.Generator().manual_seed(700 + i)
        q, k, v, do = (torch.randn(BH, N, d, generator=g).to(dtype) for _ in range(4))
        scale = 1.0 / math.sqrt(d)
        leaves = [t.double().requires_grad_() for t in (q, k, v)]
        o = F.scaled_dot_product_attention(*leaves, is_causal=causal)
        _, want_dk, want_dv = torch.autograd.grad(o, leaves, do.double())
        s = (q.double() @ k.double().transpose(-1, -2)) * scale
        if causal:
            s = s.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), -math.inf)
        lse = torch.logsumexp(s, -1)                                 # the forward's LSE  [BH, N]
        delta = (do.double() * o.detach()).sum(-1)                   # D = rowsum(dO ∘ O) [BH, N]
        dk, kbuf = _guarded((BH * N, d), torch.float32, bn * d, float("nan"), row_pad=0)
        dv, vbuf = _guarded((BH * N, d), torch.float32, bn * d, float("nan"), row_pad=0)
        _launch(flash_bwd_dkdv_kernel, (_cdiv(N, bn), BH), q.to(dev), k.to(dev), v.to(dev), do.to(dev),
                dk, dv, lse.float().to(dev), delta.float().to(dev), scale, N,
                name=name, HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, IS_CAUSAL=causal)
        tail = "unmasked tail (N not a multiple of BLOCK_N): the scaffold's stores must keep offs_n < N"
        _expect_guard(f"dK of {label}", dk, kbuf, tail)
        _expect_guard(f"dV of {label}", dv, vbuf, tail)
        got_dk = dk.detach().cpu().reshape(BH, N, d).double()
        got_dv = dv.detach().cpu().reshape(BH, N, d).double()
        atol, rtol = (1e-4, 1e-4) if dtype == torch.float32 else (1e-2, 1e-2)
        if not (torch.isfinite(got_dv).all() and torch.isfinite(got_dk).all()):
            raise AssertionError(f"{label}: NaN or inf in dK or dV: is P = exp(S − LSE) (the LSE subtracted "
                                 "inside the exp) and masked with tl.where(keep, P, 0.0)?")
        if torch.allclose(got_dv, want_dv, atol=atol, rtol=rtol) and torch.allclose(got_dk, want_dk, atol=atol,
                                                                                     rtol=rtol):
            continue                    # right: the known mistakes are simulated only to name a wrong answer
        sim = {key: _dkdv_simulated(q, k, v, do, lse, delta, scale, causal, bm, bn, key) for key in _DKDV_MISTAKES}
        _expect_close_fp32_dots(f"dV of {label}", got_dv, want_dv, dtype, atol=atol, rtol=rtol,
                                mistakes={msg: None if sim[key] is None else sim[key][1]
                                          for key, msg in _DKDV_MISTAKES.items()})
        _expect_close_fp32_dots(f"dK of {label}", got_dk, want_dk, dtype, atol=atol, rtol=rtol,
                                mistakes={msg: None if sim[key] is None else sim[key][0]
                                          for key, msg in _DKDV_MISTAKES.items()})
    passed("flash_bwd_dkdv", len(cases))


# ----------------------------------------------------------------------------- task 6 (transfer)
_GELU_C = math.sqrt(2.0 / math.pi)


def _gelu_tanh(z: torch.Tensor, *, c: float = _GELU_C, cubic: float = 0.044715, tanh=torch.tanh,
               half: float = 0.5) -> torch.Tensor:
    """``½ z (1 + tanh(√(2/π) (z + 0.044715 z³)))``, with the pieces a wrong answer changes."""
    return half * z * (1 + tanh(c * (z + cubic * z ** 3)))


def _random_cases(g: torch.Generator, n: int, rows: tuple[int, int], cols: tuple[int, int]):
    """``n`` (rows, n_cols) pairs drawn with ``g``; n_cols is never a power of two."""
    out = []
    for _ in range(n):
        r = int(torch.randint(*rows, (1,), generator=g))
        c = int(torch.randint(*cols, (1,), generator=g))
        out.append((r, c + 1 if c & (c - 1) == 0 else c))
    return out


def check_bias_gelu(bias_gelu_kernel) -> None:
    """Task 6: ``out[i, j] = gelu_tanh(x[i, j] + b[j])`` over a flat grid, against
    ``F.gelu(x + b, approximate="tanh")``; unseen shapes whose size is not a multiple of ``BLOCK``."""
    name = "bias_gelu_kernel"
    g = torch.Generator().manual_seed(1206)
    # (rows, n_cols, BLOCK, scale of x, dtype): one row first (a bias without % n_cols passes it); |x| ≈ 20
    cases = [(1, 10, 16, 1.0, torch.float32), (3, 50, 64, 8.0, torch.float32)]
    for (rows, n_cols), block in zip(_random_cases(g, 3, (2, 8), (3, 200)), (32, 64, 128)):
        cases.append((rows, n_cols, block, 3.0, torch.float32))
    cases.append((4, 33, 64, 3.0, torch.float16))
    tail_hint = ("unmasked tail (rows · n_cols not a multiple of BLOCK): mask the loads and the store with "
                 "offs < n_elements")
    for i, (rows, n_cols, block, scale, dtype) in enumerate(cases):
        label = f"{name} (x of shape {(rows, n_cols)}, BLOCK={block}, {str(dtype).replace('torch.', '')})"
        n = rows * n_cols
        x = _filled(1200 + i, (rows, n_cols), dtype, scale=scale)              # contiguous, garbage after it
        b = _filled(1300 + i, (n_cols,), dtype, pad=2 * block)                   # garbage after the bias, too
        out, buf = _guarded((n,), dtype, block, float("nan"))
        _launch(bias_gelu_kernel, (_cdiv(n, block),), x, b, out, n, n_cols, name=name, BLOCK=block)
        _expect_guard(label, out, buf, tail_hint)
        z = x.double().cpu() + b.double().cpu()
        want = F.gelu(z, approximate="tanh").to(dtype)
        got = out.detach().cpu().clone().view(rows, n_cols)
        if torch.isnan(got).any():
            big = z.abs() > 5
            if torch.isnan(got[big]).any() and not torch.isnan(got[~big]).any():
                raise AssertionError(
                    f"{label}: NaN where x + b is large: tanh(u) written as (e^(2u) − 1) / (e^(2u) + 1) is "
                    "inf / inf once e^(2u) overflows; use a form that saturates: tanh(u) = 2·sigmoid(2u) − 1 or "
                    "1 − 2 / (e^(2u) + 1)")
            raise AssertionError(f"{label}: {int(torch.isnan(got).sum())} elements of out never written or NaN "
                                 "(grid is cdiv(n_elements, BLOCK): each program must store its whole block)")
        if rows > 1 and torch.allclose(got[0].double(), want[0].double(), atol=2e-3, rtol=2e-3) \
                and not torch.allclose(got[1:].double(), want[1:].double(), atol=2e-3, rtol=2e-3):
            raise AssertionError(f"{label}: row 0 is right, the later rows are not: element offs lies in column "
                                 "offs % n_cols, so load the bias at b_ptr + offs % n_cols (right only for one row)")
        bd, xd = b.double().cpu(), x.double().cpu()
        row_of = (torch.arange(n) // n_cols).view(rows, n_cols)
        expect_close(label, got, want, mistakes={
            "that is the exact GELU z·Φ(z) (with erf); the task asks for the tanh approximation":
                F.gelu(z).to(dtype),
            "the cubic term 0.044715·z³ is missing inside the tanh": _gelu_tanh(z, cubic=0.0).to(dtype),
            "the factor √(2/π) is missing inside the tanh": _gelu_tanh(z, c=1.0).to(dtype),
            "tanh(u) is 2·sigmoid(2u) − 1, not 2·sigmoid(u) − 1":
                _gelu_tanh(z, tanh=lambda u: 2 * torch.sigmoid(u) - 1).to(dtype),
            "the factor ½ is missing: gelu(z) = ½ z (1 + tanh(…))": _gelu_tanh(z, half=1.0).to(dtype),
            "that is the sigmoid approximation z·σ(1.702 z); the task asks for the tanh form":
                (z * torch.sigmoid(1.702 * z)).to(dtype),
            "bias not added: out = gelu(x + b)": F.gelu(xd, approximate="tanh").to(dtype),
            "bias indexed by the row (offs // n_cols): element offs lies in column offs % n_cols":
                F.gelu(xd + bd[row_of], approximate="tanh").to(dtype) if rows <= n_cols else None,
        })
    passed("bias_gelu", len(cases))


# ----------------------------------------------------------------------------- task 7 (transfer)
IGNORE_INDEX = -100


def _logits_with_room(seed: int, rows: int, n_cols: int, dtype, scale: float, pad: int = 5, before: int = 128):
    """Row-strided logits ``[rows, n_cols]`` inside a buffer with ``before`` garbage elements ahead of them
    and ``pad`` after each row: a kernel that reads ``x[−100]`` for an ignored row reads garbage, not outside
    the allocation."""
    g = torch.Generator().manual_seed(seed)
    full = torch.full((before + rows * (n_cols + pad) + pad,), 1e4)
    view = full[before: before + rows * (n_cols + pad)].view(rows, n_cols + pad)[:, :n_cols]
    view.copy_(torch.randn(rows, n_cols, generator=g) * scale)
    full = full.to(dtype).to(_device())
    return full[before: before + rows * (n_cols + pad)].view(rows, n_cols + pad)[:, :n_cols]


def _ce_rows(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per row in float64, 0 on ignored rows (``F.cross_entropy``'s ``reduction="none"``)."""
    return F.cross_entropy(x.double(), t, reduction="none", ignore_index=IGNORE_INDEX)


def check_cross_entropy_kernel(cross_entropy_kernel) -> None:
    """Task 7: per-row ``logsumexp(x) − x[target]`` (0 where target = −100) against ``F.cross_entropy``."""
    name = "cross_entropy_kernel"
    g = torch.Generator().manual_seed(1207)
    # (rows, n_cols, scale, dtype): the first has the demo's size; scale 100: logits in the hundreds
    cases = [(3, 10, 1.0, torch.float32), (5, 100, 3.0, torch.float32), (4, 37, 100.0, torch.float32),
             (4, 50, 2.0, torch.float16)]
    cases += [(rows, n_cols, 4.0, torch.float32) for rows, n_cols in _random_cases(g, 2, (3, 9), (3, 300))]
    for i, (rows, n_cols, scale, dtype) in enumerate(cases):
        label = f"{name} (rows={rows}, n_cols={n_cols}, {str(dtype).replace('torch.', '')})"
        block = _next_pow2(n_cols)
        x = _logits_with_room(1400 + i, rows, n_cols, dtype, scale)
        t = torch.randint(0, n_cols, (rows,), generator=g)
        t[0] = n_cols - 1                                         # the last column: in the masked block's tail
        if rows >= 3:
            t[1] = IGNORE_INDEX                                   # a padding position
            t[2] = int(x[2].float().cpu().argmin())               # far below the max when the logits are large
        if rows >= 4:
            t[3] = int(x[3].float().cpu().argmax())               # the max itself: its probability is not tiny
        loss, buf = _guarded((rows,), torch.float32, 4, float("nan"))
        _launch(cross_entropy_kernel, (rows,), loss, x, t.to(_device()), x.stride(0), n_cols, name=name,
                BLOCK=block)
        _expect_guard(label, loss, buf, "stored past the end of loss: store one number per row, at loss_ptr + row")
        xc = x.cpu()
        want = _ce_rows(xc, t).float()
        got = loss.detach().cpu().clone()
        ignored = t == IGNORE_INDEX
        if ignored.any() and not (got[ignored] == 0).all():
            raise AssertionError(f"{label}: rows whose target is ignore_index = −100 (padding) must get loss 0 — "
                                 "and must not read logits[−100]: test the target with tl.where before using it")
        if not torch.isfinite(got).all():
            xf, tt = xc.float(), t.clamp(min=0)[:, None]
            x_t = xf.gather(1, tt)[:, 0]
            no_max = (torch.log(torch.exp(xf).sum(-1)) - x_t).masked_fill(ignored, 0)
            log_p = (-torch.log(torch.softmax(xf, -1).gather(1, tt)[:, 0])).masked_fill(ignored, 0)
            bad = ~torch.isfinite(got)
            if torch.equal(bad, ~torch.isfinite(no_max)):
                raise AssertionError(f"{label}: inf on large logits: exp(x) overflows without the max subtracted; "
                                     "loss = m + log Σ exp(x − m) − x_target with m = max(x)")
            if torch.equal(bad, ~torch.isfinite(log_p)):
                raise AssertionError(f"{label}: inf where the target's probability underflows to 0: "
                                     "−log(softmax(x)[target]) is −log 0; take the log before exponentiating: "
                                     "loss = m + log Σ exp(x − m) − x_target")
            raise AssertionError(f"{label}: NaN or inf in the loss where F.cross_entropy is finite (padding lanes "
                                 "loaded with other=-inf? max subtracted?)")
        xd = xc.double()
        m = xd.max(-1).values
        padded = F.pad(xd, (0, block - n_cols), value=0.0) if block > n_cols else None
        expect_close(label, got, want, atol=1e-4, rtol=1e-4, mistakes={
            "other=0 instead of -inf on the padding lanes: they add exp(0 − m) to the sum; load with "
            "other=float('-inf')": _ce_rows(padded, t).float() if padded is not None else None,
            "the max dropped: with m subtracted inside the exp, loss = m + log Σ exp(x − m) − x_target":
                (want - m.masked_fill(ignored, 0)).float(),
            "sign flipped: the loss is logsumexp(x) − x_target (never negative)": -want,
            "row offset uses n_cols instead of row_stride (rows of the logits are row_stride elements apart)":
                _ce_rows(_rows_with_stride(x, n_cols).cpu(), t).float() if rows > 1 else None,
            "the target's logit read from row 0: it is at logits_ptr + row · row_stride + target":
                (torch.logsumexp(xd, -1) - xd[0].gather(0, t.clamp(min=0))).masked_fill(ignored, 0).float(),
            "that is the log-sum-exp alone: subtract the target's logit": torch.logsumexp(xd, -1).masked_fill(
                ignored, 0).float(),
        })
    passed("cross_entropy_kernel", len(cases))
