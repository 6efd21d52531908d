"""The Exercise 12 checks pass the reference kernels and name the likely mistake otherwise.

Each wrong answer is the reference kernel's source with one typical mistake edited in; the
kernels are written to a temporary module and imported, so ``@triton.jit`` finds their source
(as it does for a notebook cell). triton comes in through course_lib.triton_kernels, which sets
TRITON_INTERPRET=1 first on a machine without a GPU.
"""

from __future__ import annotations

import importlib.util
import itertools
import tempfile
from pathlib import Path

import pytest

from course_lib.grading import ch12
from course_lib.triton_kernels import INTERPRETED  # noqa: F401  (before triton)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow in the wrong kernels

HEADER = "import triton\nimport triton.language as tl\n\n\n"
_DIR = Path(tempfile.mkdtemp(prefix="ch12_kernels_"))
_COUNT = itertools.count()

AXPY = '''
@triton.jit
def kernel(x_ptr, y_ptr, out_ptr, a, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offsets = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask)
    y = tl.load(y_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, tl.maximum(a * x + y, 0.0), mask=mask)
'''

SOFTMAX = '''
@triton.jit
def kernel(out_ptr, in_ptr, in_row_stride, out_row_stride, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(in_ptr + row * in_row_stride + cols, mask=mask, other=float("-inf")).to(tl.float32)
    x = x - tl.max(x, axis=0)
    num = tl.exp(x)
    y = num / tl.sum(num, axis=0)
    tl.store(out_ptr + row * out_row_stride + cols, y, mask=mask)
'''

FLASH = '''
@triton.jit
def kernel(Q, K, V, O, LSE, sm_scale, N,
           HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr):
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    base = bh * N * HEAD_DIM
    q = tl.load(Q + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], mask=offs_m[:, None] < N, other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if IS_CAUSAL:
        hi = tl.minimum((start_m + 1) * BLOCK_M, N)
    else:
        hi = N
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        k = tl.load(K + base + cols[None, :] * HEAD_DIM + offs_d[:, None], mask=cols[None, :] < N, other=0.0)
        v = tl.load(V + base + cols[:, None] * HEAD_DIM + offs_d[None, :], mask=cols[:, None] < N, other=0.0)
        s = tl.dot(q, k, input_precision="ieee") * sm_scale
        keep = cols[None, :] < N
        if IS_CAUSAL:
            keep = keep & (offs_m[:, None] >= cols[None, :])
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(LSE + bh * N + offs_m, m_i + tl.log(l_i), mask=offs_m < N)
    tl.store(O + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=offs_m[:, None] < N)
'''

RMS = '''
@triton.jit
def kernel(out_ptr, in_ptr, w_ptr, in_row_stride, out_row_stride, n_cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(in_ptr + row * in_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    y = x * tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps) * w
    tl.store(out_ptr + row * out_row_stride + cols, y, mask=mask)
'''

DKDV = '''
@triton.jit
def kernel(Q, K, V, DO, DK, DV, LSE, Delta, sm_scale, N,
           HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr):
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    base = bh * N * HEAD_DIM
    kv_mask = offs_n[:, None] < N
    k = tl.load(K + base + offs_n[:, None] * HEAD_DIM + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + base + offs_n[:, None] * HEAD_DIM + offs_d[None, :], mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    if IS_CAUSAL:
        lo = (start_n // BLOCK_M) * BLOCK_M
    else:
        lo = 0
    for start_m in range(lo, N, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q_mask = offs_m[:, None] < N
        q = tl.load(Q + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], mask=q_mask, other=0.0)
        do = tl.load(DO + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], mask=q_mask, other=0.0)
        lse = tl.load(LSE + bh * N + offs_m, mask=offs_m < N, other=0.0)
        delta = tl.load(Delta + bh * N + offs_m, mask=offs_m < N, other=0.0)
        keep = (offs_m[:, None] < N) & (offs_n[None, :] < N)
        if IS_CAUSAL:
            keep = keep & (offs_m[:, None] >= offs_n[None, :])
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * sm_scale
        p = tl.where(keep, tl.exp(s - lse[:, None]), 0.0)
        dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision="ieee")
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision="ieee") * sm_scale
    tl.store(DK + base + offs_n[:, None] * HEAD_DIM + offs_d[None, :], dk, mask=kv_mask)
    tl.store(DV + base + offs_n[:, None] * HEAD_DIM + offs_d[None, :], dv, mask=kv_mask)
'''

STUB_BODY = '    # YOUR CODE HERE\n    raise NotImplementedError("fill in this answer")\n'


def jit(source: str, *edits: tuple[str, str]):
    """The kernel ``source`` with each ``(old, new)`` edit applied, jitted from a real file."""
    for old, new in edits:
        assert old in source, old
        source = source.replace(old, new)
    path = _DIR / f"k{next(_COUNT)}.py"
    path.write_text(HEADER + source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.kernel


def stubbed(source: str, first_line: str):
    """The reference kernel with everything from ``first_line`` on replaced by the exercise stub."""
    head = source[: source.index(first_line)]
    return jit(head + STUB_BODY)


def plain_function(*args, **kwargs):
    return None


# ----------------------------------------------------------------------------- task 1
def test_axpy_relu_passes(capsys):
    ch12.check_axpy_relu(jit(AXPY))
    assert capsys.readouterr().out == "✓ axpy_relu: all 5 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (lambda: stubbed(AXPY, "    pid = "), "axpy_relu_kernel is not implemented yet"),
    (lambda: plain_function, "expected a @triton.jit kernel"),
    (lambda: jit(AXPY, ("tl.store(out_ptr + offsets, tl.maximum(a * x + y, 0.0), mask=mask)",
                        "tl.store(out_ptr + offsets, tl.maximum(a * x + y, 0.0))")),
     r"unmasked tail \(n not a multiple of BLOCK\)"),
    (lambda: jit(AXPY, ("tl.maximum(a * x + y, 0.0)", "a * x + y")), "ReLU missing"),
    (lambda: jit(AXPY, ("tl.maximum(a * x + y, 0.0)", "tl.maximum(x + a * y, 0.0)")), "a multiplies y instead of x"),
    (lambda: jit(AXPY, ("offsets = pid * BLOCK + tl.arange(0, BLOCK)", "offsets = tl.arange(0, BLOCK)")),
     "only the first block was written"),
    (lambda: jit(AXPY, ("tl.maximum(a * x + y, 0.0)", "tl.maximum(a * x + y, 0.0) + 1")), "wrong values"),
])
def test_axpy_relu_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch12.check_axpy_relu(wrong())


# ----------------------------------------------------------------------------- task 2
def test_softmax_kernel_passes(capsys):
    ch12.check_softmax_kernel(jit(SOFTMAX))
    assert capsys.readouterr().out == "✓ softmax_kernel: all 6 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (lambda: stubbed(SOFTMAX, "    row = "), "softmax_kernel is not implemented yet"),
    (lambda: jit(SOFTMAX, ("    x = x - tl.max(x, axis=0)\n", "")),
     r"softmax not max-subtracted \(overflow on large logits\)"),
    (lambda: jit(SOFTMAX, ('other=float("-inf")', "other=0.0")), "other=0 instead of -inf on masked softmax loads"),
    (lambda: jit(SOFTMAX, ("y, mask=mask)", "y)")), r"unmasked tail \(n_cols not a power of two\)"),
    (lambda: jit(SOFTMAX, ("in_ptr + row * in_row_stride", "in_ptr + row * n_cols")),
     "row offset uses n_cols instead of in_row_stride"),
    (lambda: jit(SOFTMAX, ("y = num / tl.sum(num, axis=0)", "y = num / (tl.sum(num, axis=0) + 1e-3)")),
     "wrong values"),
])
def test_softmax_kernel_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch12.check_softmax_kernel(wrong())


# ----------------------------------------------------------------------------- task 3
UPDATE = "        m_new = tl.maximum(m_i, tl.max(s, 1))\n"


@pytest.fixture(scope="module")
def flash_stub():
    # the exercise's stub: the scaffold with the update body replaced by `raise NotImplementedError`
    head, tail = FLASH.split(UPDATE)
    tail = tail[tail.index("    acc = acc / l_i"):]
    return jit(head + STUB_BODY.replace("    ", "        ") + tail)


def test_flash_inner_passes(capsys):
    ch12.check_flash_inner(jit(FLASH))
    assert capsys.readouterr().out == "✓ flash_inner: all 6 cases passed\n"


def test_flash_inner_stub_is_not_implemented(flash_stub):
    with pytest.raises(AssertionError, match="flash_fwd_kernel is not implemented yet"):
        ch12.check_flash_inner(flash_stub)


@pytest.mark.parametrize("edit, message", [
    (("acc = acc * alpha[:, None] + tl.dot", "acc = acc + tl.dot"), r"missing rescale of acc by exp\(m_old − m_new\)"),
    (("l_i = l_i * alpha + tl.sum(p, 1)", "l_i = l_i + tl.sum(p, 1)"), r"missing rescale of ℓ by exp\(m_old − m_new\)"),
    (("        m_i = m_new\n", "        m_i = m_new\n        acc = acc / l_i[:, None]\n"), "normalizing inside the loop"),
    (("        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=\"ieee\")\n",
      "        acc = (acc * (l_i - tl.sum(p, 1))[:, None] + tl.dot(p.to(v.dtype), v, input_precision=\"ieee\"))"
      " / l_i[:, None]\n"),
     "normalizing inside the loop"),
    (("        m_i = m_new\n", ""), "m_i never updated"),
    (("""        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new
""", """        p = tl.exp(s)
        l_i = l_i + tl.sum(p, 1)
        acc = acc + tl.dot(p.to(v.dtype), v)
        m_i = tl.zeros([BLOCK_M], dtype=tl.float32)
"""), r"softmax not max-subtracted \(overflow on large logits\)"),
    (("tl.exp(s - m_new[:, None])", "tl.exp(s - m_new[:, None]) * 1.01"), "wrong values"),
])
def test_flash_inner_names_the_mistake(edit, message):
    wrong = jit(FLASH, edit)
    with pytest.raises(AssertionError, match=message):
        ch12.check_flash_inner(wrong)


def test_flash_inner_catches_an_unmasked_store():
    wrong = jit(FLASH, ("acc, mask=offs_m[:, None] < N)", "acc)"))
    with pytest.raises(AssertionError, match=r"unmasked tail \(N not a multiple of BLOCK_M\)"):
        ch12.check_flash_inner(wrong)


# ----------------------------------------------------------------------------- task 4
def test_rms_norm_kernel_passes(capsys):
    ch12.check_rms_norm_kernel(jit(RMS))
    assert capsys.readouterr().out == "✓ rms_norm_kernel: all 5 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (lambda: stubbed(RMS, "    row = "), "rms_norm_kernel is not implemented yet"),
    (lambda: jit(RMS, ("/ n_cols", "/ BLOCK")), "mean over BLOCK instead of n_cols"),
    (lambda: jit(RMS, ("y = x * tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps) * w",
                       "y = x / (tl.sqrt(tl.sum(x * x, axis=0) / n_cols) + eps) * w")), "eps added outside the square root"),
    (lambda: jit(RMS, (" + eps) * w", " + eps)")), "weight not applied"),
    (lambda: jit(RMS, ("/ n_cols + eps)", "/ n_cols)")), "eps missing"),
    (lambda: jit(RMS, ("tl.rsqrt(", "1.0 / (")), r"divided by mean\(x²\) instead of its square root"),
    (lambda: jit(RMS, ("y, mask=mask)", "y)")), r"unmasked tail \(n_cols not a power of two\)"),
    (lambda: jit(RMS, ("in_ptr + row * in_row_stride", "in_ptr + row * n_cols")),
     "row offset uses n_cols instead of in_row_stride"),
    (lambda: jit(RMS, ("    y = x * tl.rsqrt(",
                       "    x = tl.where(mask, x - tl.sum(x, axis=0) / n_cols, 0.0)\n    y = x * tl.rsqrt(")),
     "that is LayerNorm"),
])
def test_rms_norm_kernel_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch12.check_rms_norm_kernel(wrong())


# ----------------------------------------------------------------------------- task 5
BWD_BODY = "        s = tl.dot(q, tl.trans(k)"


@pytest.fixture(scope="module")
def dkdv_stub():
    # the exercise's stub: the scaffold with the loop body replaced by `raise NotImplementedError`
    head, tail = DKDV.split(BWD_BODY)
    tail = tail[tail.index("    tl.store(DK"):]
    return jit(head + STUB_BODY.replace("    ", "        ") + tail)


def test_flash_bwd_dkdv_passes(capsys):
    ch12.check_flash_bwd_dkdv(jit(DKDV))
    assert capsys.readouterr().out == "✓ flash_bwd_dkdv: all 6 cases passed\n"


def test_flash_bwd_dkdv_stub_is_not_implemented(dkdv_stub):
    with pytest.raises(AssertionError, match="flash_bwd_dkdv_kernel is not implemented yet"):
        ch12.check_flash_bwd_dkdv(dkdv_stub)


@pytest.mark.parametrize("edit, message", [
    (("tl.exp(s - lse[:, None])", "tl.exp(s)"), r"P not normalised: recompute P = exp\(S − LSE\)"),
    ((") * sm_scale\n        p", ")\n        p"), "scores not scaled"),
    (("p = tl.where(keep, tl.exp(s - lse[:, None]), 0.0)", "p = tl.exp(s - lse[:, None])"), "P not masked"),
    (("tl.dot(tl.trans(p).to(do.dtype), do", "tl.dot(p.to(do.dtype), do"), r"missing transpose: dV = Pᵀ dO"),
    (("tl.dot(tl.trans(ds).to(q.dtype), q", "tl.dot(ds.to(q.dtype), q"), r"missing transpose: dK = dSᵀ Q"),
    (("ds = p * (dp - delta[:, None])", "ds = p * dp"), "D missing"),
    (("delta[:, None]", "delta[None, :]"), r"D broadcast over the wrong axis \(the keepdim mistake\)"),
    (("ds = p * (dp - delta[:, None])", "ds = p * (delta[:, None] - dp)"), "sign flipped"),
    (('input_precision="ieee") * sm_scale\n    tl.store', 'input_precision="ieee")\n    tl.store'),
     "scale forgotten in dK"),
    (("tl.exp(s - lse[:, None])", "tl.exp(s + lse[:, None])"), "wrong values"),
])
def test_flash_bwd_dkdv_names_the_mistake(edit, message):
    wrong = jit(DKDV, edit)
    with pytest.raises(AssertionError, match=message):
        ch12.check_flash_bwd_dkdv(wrong)


def test_flash_bwd_dkdv_catches_an_unmasked_store():
    wrong = jit(DKDV, ("dv, mask=kv_mask)", "dv)"))
    with pytest.raises(AssertionError, match=r"unmasked tail \(N not a multiple of BLOCK_N\)"):
        ch12.check_flash_bwd_dkdv(wrong)


def test_fp32_failure_on_a_tf32_gpu_says_to_pass_ieee(monkeypatch):
    # here (interpreter) fp32 is exact; simulate the GPU where tl.dot's fp32 default is TF32
    monkeypatch.setattr(ch12, "_tf32_by_default", lambda: True)
    wrong = jit(DKDV, ("tl.exp(s - lse[:, None])", "tl.exp(s - lse[:, None]) * 1.001"))
    with pytest.raises(AssertionError, match=r"wrong values .* pass input_precision=\"ieee\" to every tl.dot"):
        ch12.check_flash_bwd_dkdv(wrong)
    monkeypatch.setattr(ch12, "_tf32_by_default", lambda: False)
    with pytest.raises(AssertionError, match=r"wrong values \(max abs error [^—]*\)$"):
        ch12.check_flash_bwd_dkdv(wrong)


# ----------------------------------------------------------------------------- task 6 (transfer)
GELU = '''
@triton.jit
def kernel(x_ptr, b_ptr, out_ptr, n_elements, n_cols, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs % n_cols, mask=mask, other=0.0).to(tl.float32)
    z = x + b
    u = 0.7978845608028654 * (z + 0.044715 * z * z * z)
    t = 2.0 * tl.sigmoid(2.0 * u) - 1.0
    tl.store(out_ptr + offs, 0.5 * z * (1.0 + t), mask=mask)
'''


def test_bias_gelu_passes(capsys):
    ch12.check_bias_gelu(jit(GELU))
    assert capsys.readouterr().out == "✓ bias_gelu: all 6 cases passed\n"


def test_bias_gelu_with_exp_form_passes(capsys):
    ch12.check_bias_gelu(jit(GELU, ("2.0 * tl.sigmoid(2.0 * u) - 1.0", "1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)")))
    assert capsys.readouterr().out == "✓ bias_gelu: all 6 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (lambda: stubbed(GELU, "    offs = "), "bias_gelu_kernel is not implemented yet"),
    (lambda: plain_function, "expected a @triton.jit kernel"),
    (lambda: jit(GELU, ("0.5 * z * (1.0 + t), mask=mask)", "0.5 * z * (1.0 + t))")), "unmasked tail"),
    (lambda: jit(GELU, ("t = 2.0 * tl.sigmoid(2.0 * u) - 1.0",
                        "t = (tl.exp(2.0 * u) - 1.0) / (tl.exp(2.0 * u) + 1.0)")), "NaN where x \\+ b is large"),
    (lambda: jit(GELU, ("b_ptr + offs % n_cols", "b_ptr + offs")), "row 0 is right, the later rows are not"),
    (lambda: jit(GELU, ("b_ptr + offs % n_cols", "b_ptr + offs // n_cols")), "bias indexed by the row"),
    (lambda: jit(GELU, ("    z = x + b\n", "    z = x\n")), "bias not added"),
    (lambda: jit(GELU, ("u = 0.7978845608028654 * (z + 0.044715 * z * z * z)\n", "u = 0.0 * z\n"),
                 ("0.5 * z * (1.0 + t)", "0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))")),
     "that is the exact GELU"),
    (lambda: jit(GELU, (" + 0.044715 * z * z * z", "")), "the cubic term 0.044715·z³ is missing"),
    (lambda: jit(GELU, ("0.7978845608028654 * ", "")), "the factor √\\(2/π\\) is missing"),
    (lambda: jit(GELU, ("tl.sigmoid(2.0 * u)", "tl.sigmoid(u)")), "tanh\\(u\\) is 2·sigmoid\\(2u\\) − 1"),
    (lambda: jit(GELU, ("0.5 * z * (1.0 + t)", "z * (1.0 + t)")), "the factor ½ is missing"),
    (lambda: jit(GELU, ("0.5 * z * (1.0 + t)", "z * tl.sigmoid(1.702 * z)")), "the sigmoid approximation"),
    (lambda: jit(GELU, ("0.5 * z * (1.0 + t)", "0.5 * z * (1.0 + t) * 1.01")), "wrong values"),
])
def test_bias_gelu_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch12.check_bias_gelu(wrong())


# ----------------------------------------------------------------------------- task 7 (transfer)
CE = '''
@triton.jit
def kernel(loss_ptr, logits_ptr, targets_ptr, row_stride, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    x = tl.load(logits_ptr + row * row_stride + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
    target = tl.load(targets_ptr + row)
    m = tl.max(x, axis=0)
    lse = m + tl.log(tl.sum(tl.exp(x - m), axis=0))
    x_t = tl.sum(tl.where(cols == target, x, 0.0), axis=0)
    tl.store(loss_ptr + row, tl.where(target == -100, 0.0, lse - x_t))
'''

CE_LOADED = '''
@triton.jit
def kernel(loss_ptr, logits_ptr, targets_ptr, row_stride, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    base = logits_ptr + row * row_stride
    x = tl.load(base + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
    target = tl.load(targets_ptr + row)
    x_t = tl.load(base + target).to(tl.float32)
    m = tl.max(x, axis=0)
    loss = m + tl.log(tl.sum(tl.exp(x - m), axis=0)) - x_t
    tl.store(loss_ptr + row, tl.where(target == -100, 0.0, loss))
'''


def test_cross_entropy_kernel_passes(capsys):
    ch12.check_cross_entropy_kernel(jit(CE))
    assert capsys.readouterr().out == "✓ cross_entropy_kernel: all 6 cases passed\n"


def test_cross_entropy_kernel_with_a_second_load_passes(capsys):
    ch12.check_cross_entropy_kernel(jit(CE_LOADED))
    assert capsys.readouterr().out == "✓ cross_entropy_kernel: all 6 cases passed\n"


@pytest.mark.parametrize("wrong, message", [
    (lambda: stubbed(CE, "    row = "), "cross_entropy_kernel is not implemented yet"),
    (lambda: jit(CE, ("tl.where(target == -100, 0.0, lse - x_t)", "lse - x_t")), "ignore_index = −100"),
    (lambda: jit(CE, ('other=float("-inf")', "other=0.0")), "other=0 instead of -inf on the padding lanes"),
    (lambda: jit(CE, ("lse = m + tl.log(", "lse = tl.log(")), "the max dropped"),
    (lambda: jit(CE, ("lse - x_t)", "x_t - lse)")), "sign flipped"),
    (lambda: jit(CE, ("logits_ptr + row * row_stride", "logits_ptr + row * n_cols")),
     "row offset uses n_cols instead of row_stride"),
    (lambda: jit(CE_LOADED, ("x_t = tl.load(base + target)", "x_t = tl.load(logits_ptr + target)")),
     "the target's logit read from row 0"),
    (lambda: jit(CE, ("lse - x_t)", "lse)")), "that is the log-sum-exp alone"),
    (lambda: jit(CE, ("    m = tl.max(x, axis=0)\n", "    m = tl.max(x, axis=0) * 0.0\n")), "inf on large logits"),
    (lambda: jit(CE, ("    lse = m + tl.log(tl.sum(tl.exp(x - m), axis=0))\n",
                      "    p = tl.exp(x - m) / tl.sum(tl.exp(x - m), axis=0)\n"),
                 ("tl.where(cols == target, x, 0.0)", "tl.where(cols == target, p, 0.0)"),
                 ("lse - x_t)", "-tl.log(x_t))")), "the target's probability underflows to 0"),
    (lambda: jit(CE, ("tl.store(loss_ptr + row, ", "tl.store(loss_ptr + row + 1, ")),
     "stored past the end of loss"),
    (lambda: jit(CE, ("lse - x_t)", "lse - x_t + 0.01)")), "wrong values"),
])
def test_cross_entropy_kernel_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        ch12.check_cross_entropy_kernel(wrong())
