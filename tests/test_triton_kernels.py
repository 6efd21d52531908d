"""course_lib.triton_kernels against PyTorch: each kernel over shapes with ragged tails, fp32/fp16,
causal and not — in Triton's interpreter on a CPU, compiled on a GPU.

triton is imported only through course_lib.triton_kernels, which sets TRITON_INTERPRET=1 first
when there is no GPU (pytest-xdist workers are fresh processes, so this holds in each of them).
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib import triton_kernels as tk
from course_lib.grading import tolerance
from course_lib.triton_kernels import DEVICE, INTERPRETED, add, flash_attention_forward, rms_norm, softmax

DTYPES = [torch.float32, torch.float16]


def randn(*shape, dtype=torch.float32, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEVICE)


def close(got, want, dtype, factor=1.0):
    atol, rtol = tolerance(dtype)
    torch.testing.assert_close(got.float().cpu(), want.float().cpu(), atol=atol * factor, rtol=rtol * factor)


# ----------------------------------------------------------------------------- the mode
def test_mode_matches_the_machine():
    assert INTERPRETED == (DEVICE.type == "cpu")
    if not torch.cuda.is_available():
        assert INTERPRETED


def test_interpreter_is_set_before_triton_and_nothing_else_imports_triton():
    code = (
        "import importlib, os, pkgutil, sys, torch\n"
        "import course_lib\n"
        "assert torch.cuda.is_available() or os.environ['TRITON_INTERPRET'] == '1', 'import course_lib chooses the mode'\n"
        "skip = ('course_lib.triton_kernels', 'course_lib.grade')\n"
        "def walk(pkg):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if m.name.startswith(skip):\n"
        "            continue\n"
        "        mod = importlib.import_module(m.name)\n"
        "        if m.ispkg:\n"
        "            walk(mod)\n"
        "walk(course_lib)\n"
        "assert 'triton' not in sys.modules, 'a course_lib module imports triton at import time'\n"
        "import course_lib.triton_kernels as tk\n"
        "assert 'triton' in sys.modules\n"
        "gpu = torch.cuda.is_available()\n"
        "assert gpu or (os.environ['TRITON_INTERPRET'] == '1' and tk.INTERPRETED)\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is about machines without a GPU")
def test_importing_triton_before_course_lib_warns():
    code = "import warnings, triton\nwarnings.simplefilter('error')\nimport course_lib\n"
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode != 0 and "triton was imported before course_lib" in out.stderr, out.stderr[-2000:]


# ----------------------------------------------------------------------------- vector add
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, block", [(1, 16), (1000, 128), (1024, 256), (4097, 1024), (37, 64)])
def test_add_matches_torch(n, block, dtype):
    x, y = randn(n, dtype=dtype, seed=1), randn(n, dtype=dtype, seed=2)
    out = add(x, y, block=block)
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.equal(out, x + y)


def test_add_keeps_shape_and_handles_non_contiguous_input():
    x = randn(6, 10, seed=3).T          # non-contiguous view
    y = randn(10, 6, seed=4)
    assert torch.equal(add(x, y), x + y)
    assert add(randn(0), randn(0)).shape == (0,)


# ----------------------------------------------------------------------------- softmax
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 1), (4, 7), (3, 64), (6, 100), (2, 3, 33)])
def test_softmax_matches_torch(shape, dtype):
    x = randn(*shape, dtype=dtype, scale=3.0, seed=5)
    close(softmax(x), torch.softmax(x.float(), dim=-1), dtype)


def test_softmax_large_logits_do_not_overflow():
    x = randn(4, 50, scale=1.0, seed=6) * 1000.0       # exp(1000) overflows without max-subtraction
    got = softmax(x)
    assert torch.isfinite(got).all()
    close(got, torch.softmax(x, dim=-1), torch.float32)
    h = (randn(3, 20, seed=7) * 30).half()             # exp(30) > fp16 max
    close(softmax(h), torch.softmax(h.float(), -1), torch.float16)


def test_softmax_of_a_strided_view():
    base = randn(8, 40, seed=8)
    x = base[:, 5:30]                                   # rows 40 apart, 25 columns
    close(softmax(x), torch.softmax(x, -1), torch.float32)
    close(softmax(base.T), torch.softmax(base.T, -1), torch.float32)


@settings(max_examples=10)
@given(rows=st.integers(1, 6), cols=st.integers(1, 130), scale=st.sampled_from([0.1, 1.0, 50.0]))
def test_softmax_property_rows_sum_to_one(rows, cols, scale):
    x = randn(rows, cols, scale=scale, seed=rows * 1000 + cols)
    got = softmax(x)
    close(got, torch.softmax(x, -1), torch.float32)
    close(got.sum(-1), torch.ones(rows), torch.float32)


# ----------------------------------------------------------------------------- RMSNorm
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 8), (5, 37), (2, 3, 100), (1, 1)])
def test_rms_norm_matches_torch(shape, dtype):
    x = randn(*shape, dtype=dtype, seed=9)
    w = randn(shape[-1], dtype=dtype, seed=10)
    want = F.rms_norm(x.float(), (shape[-1],), w.float(), eps=1e-6)
    close(rms_norm(x, w, eps=1e-6), want, dtype, factor=2.0)


def test_rms_norm_eps_and_strided_rows():
    x = randn(6, 48, seed=11)[:, :20] * 1e-3            # small values: eps matters
    w = randn(20, seed=12)
    for eps in (0.0, 1e-5, 1e-2):
        close(rms_norm(x, w, eps=eps), F.rms_norm(x, (20,), w, eps=eps), torch.float32)


@settings(max_examples=10)
@given(rows=st.integers(1, 5), cols=st.integers(1, 150))
def test_rms_norm_property_unit_rms(rows, cols):
    x = randn(rows, cols, scale=4.0, seed=rows * 997 + cols)
    y = rms_norm(x, torch.ones(cols, device=DEVICE), eps=0.0)
    close(y.pow(2).mean(-1), torch.ones(rows), torch.float32, factor=10)


# ----------------------------------------------------------------------------- FlashAttention
def reference_attention(q, k, v, causal, scale=None):
    q32, k32, v32 = q.float(), k.float(), v.float()
    o = F.scaled_dot_product_attention(q32, k32, v32, is_causal=causal, scale=scale)
    s = (q32 @ k32.transpose(-1, -2)) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if causal:
        n = q.shape[2]
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    return o, torch.logsumexp(s, dim=-1)


FLASH_CASES = [
    # (B, H, N, d, block_m, block_n)
    (1, 2, 37, 16, 16, 16),     # N not a multiple of the block
    (2, 1, 64, 32, 32, 16),     # exact multiple, block_m = 2·block_n
    (1, 2, 50, 64, 32, 32),
    (1, 1, 1, 16, 16, 16),      # a single query and key
    (1, 1, 70, 16, 64, 16),     # several diagonal key blocks per query block
]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", FLASH_CASES, ids=lambda c: "B{}H{}N{}d{}-{}x{}".format(*c))
def test_flash_matches_sdpa(case, dtype, causal):
    B, H, N, d, bm, bn = case
    q, k, v = (randn(B, H, N, d, dtype=dtype, seed=s) for s in (20, 21, 22))
    o, lse = flash_attention_forward(q, k, v, causal=causal, block_m=bm, block_n=bn)
    want_o, want_lse = reference_attention(q, k, v, causal)
    assert o.shape == q.shape and o.dtype == dtype
    assert lse.shape == (B, H, N) and lse.dtype == torch.float32
    close(o, want_o, dtype, factor=2.0)
    close(lse, want_lse, torch.float32, factor=10.0)


def test_flash_default_blocks_scale_and_strided_inputs():
    B, N, H, d = 2, 45, 2, 32
    qkv = randn(B, N, 3, H, d, seed=23)                   # packed [B, N, 3, H, d]: strided views
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    o, lse = flash_attention_forward(q, k, v, causal=True, scale=0.3)
    want_o, want_lse = reference_attention(q, k, v, True, scale=0.3)
    close(o, want_o, torch.float32)
    close(lse, want_lse, torch.float32, factor=10.0)


def test_flash_large_logits_stay_finite():
    q, k, v = (randn(1, 1, 40, 16, seed=s) for s in (24, 25, 26))
    o, lse = flash_attention_forward(q * 30, k * 30, v, block_m=16, block_n=16)
    want_o, want_lse = reference_attention(q * 30, k * 30, v, False)
    assert torch.isfinite(o).all()
    close(o, want_o, torch.float32, factor=10.0)
    close(lse, want_lse, torch.float32, factor=10.0)


# ----------------------------------------------------------------------------- wrapper errors
def test_wrappers_reject_bad_input_with_a_clear_message():
    x = randn(4, 8)
    with pytest.raises(ValueError, match=r"y: expected the shape of x, \(4, 8\); got \(4, 9\)"):
        add(x, randn(4, 9))
    with pytest.raises(ValueError, match=r"y: expected the dtype of x"):
        add(x, x.half())
    with pytest.raises(ValueError, match=r"x: expected dtype in .*; got torch.bfloat16"):
        softmax(x.bfloat16())
    with pytest.raises(ValueError, match=r"x: expected a floating dtype; got torch.int64"):
        add(torch.ones(3, dtype=torch.long, device=DEVICE), torch.ones(3, dtype=torch.long, device=DEVICE))
    with pytest.raises(ValueError, match=r"x: expected a tensor on .*; got device meta"):
        softmax(torch.empty(3, 4, device="meta"))
    with pytest.raises(ValueError, match=r"block: expected a power of two"):
        add(x, x, block=100)
    with pytest.raises(ValueError, match=r"weight: expected shape \(8,\)"):
        rms_norm(x, randn(7))
    with pytest.raises(ValueError, match=r"weight: expected the dtype of x"):
        rms_norm(x, randn(8).half())
    with pytest.raises(ValueError, match=r"x: expected a torch.Tensor; got list"):
        softmax([1.0, 2.0])


def test_flash_rejects_bad_input_with_a_clear_message():
    q = randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match=r"q: expected 4 dimensions; got shape \(2, 8, 16\)"):
        flash_attention_forward(q[0], q[0], q[0])
    with pytest.raises(ValueError, match=r"k: expected the shape of q"):
        flash_attention_forward(q, randn(1, 2, 9, 16), q)
    with pytest.raises(ValueError, match=r"v: expected the dtype of q"):
        flash_attention_forward(q, q, q.half())
    with pytest.raises(ValueError, match=r"q: expected head_dim .* in \(16, 32, 64, 128\); got shape \(1, 2, 8, 48\)"):
        x = randn(1, 2, 8, 48)
        flash_attention_forward(x, x, x)
    with pytest.raises(ValueError, match=r"block_m: expected a power of two ≥ 16"):
        flash_attention_forward(q, q, q, block_m=24, block_n=16)
    with pytest.raises(ValueError, match=r"block_m: expected a multiple of block_n"):
        flash_attention_forward(q, q, q, block_m=16, block_n=32)
    with pytest.raises(ValueError, match=r"q: expected dtype in"):
        flash_attention_forward(q.bfloat16(), q.bfloat16(), q.bfloat16())


def test_package_exports():
    assert set(tk.__all__) >= {"INTERPRETED", "DEVICE", "add", "softmax", "rms_norm", "matmul", "flash_attention",
                               "flash_attention_forward"}


def test_bench_without_a_gpu_writes_nothing(capsys):
    from course_lib.triton_kernels import bench

    if torch.cuda.is_available():  # on a GPU the benchmark is run by hand, not by the test suite
        assert bench.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
        return
    before = sorted(bench.RESULTS.glob("*")) if bench.RESULTS.exists() else []
    assert bench.main([]) == 0
    assert "No CUDA GPU" in capsys.readouterr().out
    after = sorted(bench.RESULTS.glob("*")) if bench.RESULTS.exists() else []
    assert before == after


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_flash_equals_chapter5_pytorch_flash(causal):
    from course_lib import flash as flash_pt

    q, k, v = (randn(2, 1, 45, 32, seed=s) for s in (27, 28, 29))
    o, lse = flash_attention_forward(q, k, v, causal=causal, block_m=32, block_n=16)
    o_pt, lse_pt = flash_pt.flash_attention_forward(q.cpu(), k.cpu(), v.cpu(), causal=causal, Br=32, Bc=16)
    close(o, o_pt, torch.float32)
    close(lse, lse_pt, torch.float32, factor=10.0)


# ----------------------------------------------------------------------------- tiled matmul
from course_lib.triton_kernels.matmul import grouped_tile, matmul, tile_order  # noqa: E402

import triton  # noqa: E402  (after course_lib.triton_kernels: TRITON_INTERPRET is set)
import triton.language as tl  # noqa: E402


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("M, N, K, blocks, group_m", [
    (37, 50, 70, (32, 32, 32), 8),      # ragged on every edge
    (64, 64, 64, (32, 32, 16), 2),      # exact multiples, several K steps
    (16, 100, 17, (16, 32, 16), 1),     # row-major order, K just over one block
    (1, 1, 1, (16, 16, 16), 4),
])
def test_matmul_matches_torch(M, N, K, blocks, group_m, dtype):
    a, b = randn(M, K, dtype=dtype, seed=40), randn(K, N, dtype=dtype, seed=41)
    bm, bn, bk = blocks
    c = matmul(a, b, block_m=bm, block_n=bn, block_k=bk, group_m=group_m)
    assert c.shape == (M, N) and c.dtype == dtype
    want = a.double() @ b.double()
    # fp16: the output is rounded to fp16 (fp32 accumulation inside); scale the tolerance by √K
    close(c, want, dtype, factor=2.0 * math.sqrt(K) if dtype == torch.float16 else 10.0)


def test_matmul_strided_inputs_and_empty_edges():
    a = randn(40, 30, seed=42)[:, ::2]                   # column stride 2
    b = randn(50, 15, seed=43).T                          # a transposed view
    close(matmul(a, b), a @ b, torch.float32, factor=10)
    assert matmul(randn(0, 5), randn(5, 3)).shape == (0, 3)
    assert torch.equal(matmul(randn(4, 0), randn(0, 3)), torch.zeros(4, 3, device=DEVICE))


@triton.jit
def _tile_of_program_kernel(pid_m_ptr, pid_n_ptr, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    pid_m, pid_n = grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M)
    tl.store(pid_m_ptr + pid, pid_m)
    tl.store(pid_n_ptr + pid, pid_n)


@pytest.mark.parametrize("num_pid_m, num_pid_n, group_m", [(4, 3, 2), (5, 4, 2), (7, 3, 8), (3, 5, 1)])
def test_grouped_tile_is_a_permutation_equal_to_the_python_map(num_pid_m, num_pid_n, group_m):
    n = num_pid_m * num_pid_n
    pm, pn = (torch.full((n,), -1, dtype=torch.int32, device=DEVICE) for _ in range(2))
    _tile_of_program_kernel[(n,)](pm, pn, num_pid_m, num_pid_n, GROUP_M=group_m)
    got = list(zip(pm.tolist(), pn.tolist()))
    assert got == tile_order(num_pid_m, num_pid_n, group_m)
    assert sorted(got) == [(i, j) for i in range(num_pid_m) for j in range(num_pid_n)]   # every tile once
    if group_m == 1:
        assert got == [divmod(p, num_pid_n) for p in range(n)]                         # row-major


def test_matmul_rejects_bad_input_with_a_clear_message():
    a = randn(4, 8)
    with pytest.raises(ValueError, match=r"b: expected shape \(8, N\) \(K = a.shape\[1\]\); got \(7, 3\)"):
        matmul(a, randn(7, 3))
    with pytest.raises(ValueError, match=r"b: expected the dtype of a"):
        matmul(a, randn(8, 3).half())
    with pytest.raises(ValueError, match=r"a: expected 2 dimensions"):
        matmul(randn(2, 4, 8), randn(8, 3))
    with pytest.raises(ValueError, match=r"block_k: expected a power of two ≥ 16"):
        matmul(a, randn(8, 3), block_m=16, block_n=16, block_k=8)
    with pytest.raises(ValueError, match=r"group_m: expected an int ≥ 1; got 0"):
        matmul(a, randn(8, 3), group_m=0)


# ----------------------------------------------------------------------------- FlashAttention backward
from course_lib.triton_kernels.flash import flash_attention, flash_attention_backward  # noqa: E402


def sdpa_grads(q, k, v, do, causal, scale=None):
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    o = F.scaled_dot_product_attention(*leaves, is_causal=causal, scale=scale)
    return o, torch.autograd.grad(o, leaves, do.double())


BWD_CASES = [
    # (B, H, N, d, block_m, block_n)
    (1, 2, 37, 16, 32, 16),     # N not a multiple of either block
    (2, 1, 64, 32, 32, 32),     # exact multiples
    (1, 1, 50, 64, 16, 16),     # block_m = block_n, ragged
    (1, 1, 1, 16, 16, 16),      # one query, one key
]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("case", BWD_CASES, ids=lambda c: "B{}H{}N{}d{}-{}x{}".format(*c))
def test_flash_gradients_equal_sdpa_fp32(case, causal):
    B, H, N, d, bm, bn = case
    q, k, v, do = (randn(B, H, N, d, seed=s) for s in (50, 51, 52, 53))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    o = flash_attention(*leaves, causal, block_m=bm, block_n=bn)
    grads = torch.autograd.grad(o, leaves, do)
    want_o, want = sdpa_grads(q, k, v, do, causal)
    close(o, want_o, torch.float32, factor=2.0)
    for name, got, ref in zip("qkv", grads, want):
        assert got.shape == (B, H, N, d) and got.dtype == torch.float32, name
        close(got, ref, torch.float32, factor=5.0)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_flash_gradients_fp16(causal):
    # fp16 in, fp32 accumulation: within the error SDPA itself makes in fp16 (and a floor)
    q, k, v, do = (randn(1, 2, 45, 32, dtype=torch.float16, seed=s) for s in (54, 55, 56, 57))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    grads = torch.autograd.grad(flash_attention(*leaves, causal, block_m=32, block_n=16), leaves, do)
    _, want = sdpa_grads(q, k, v, do, causal)
    own = [t.clone().requires_grad_() for t in (q, k, v)]
    torch_grads = torch.autograd.grad(F.scaled_dot_product_attention(*own, is_causal=causal), own, do)
    for got, ref, t in zip(grads, want, torch_grads):
        assert got.dtype == torch.float16
        err, torch_err = (got.double() - ref).abs().max().item(), (t.double() - ref).abs().max().item()
        assert err <= max(2e-3, 2 * torch_err), (err, torch_err)


def test_flash_backward_strided_inputs_scale_default_blocks_and_determinism():
    B, N, H, d = 1, 40, 2, 16
    qkv = randn(B, N, 3, H, d, seed=58).requires_grad_()
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    do = randn(B, H, N, d, seed=59)
    (gqkv,) = torch.autograd.grad(flash_attention(q, k, v, True, scale=0.3), qkv, do)
    ref_qkv = qkv.detach().double().requires_grad_()
    rq, rk, rv = (ref_qkv[:, :, i].transpose(1, 2) for i in range(3))
    (want,) = torch.autograd.grad(F.scaled_dot_product_attention(rq, rk, rv, is_causal=True, scale=0.3),
                                  ref_qkv, do.double())
    close(gqkv, want, torch.float32, factor=5.0)
    (again,) = torch.autograd.grad(flash_attention(q, k, v, True, scale=0.3), qkv, do)
    assert torch.equal(gqkv, again)                       # no atomics: bit-identical reruns


def test_flash_backward_rejects_bad_input_with_a_clear_message():
    q = randn(1, 2, 8, 16)
    o, lse = flash_attention_forward(q, q, q)
    with pytest.raises(ValueError, match=r"do: expected the shape of q"):
        flash_attention_backward(q, q, q, o, lse, randn(1, 2, 9, 16))
    with pytest.raises(ValueError, match=r"lse: expected shape \(1, 2, 8\) \(\[B, H, N\] of q\); got \(1, 2, 7\)"):
        flash_attention_backward(q, q, q, o, lse[..., :7], o)
    with pytest.raises(ValueError, match=r"lse: expected dtype in \(torch.float32\); got torch.float16"):
        flash_attention_backward(q, q, q, o, lse.half(), o)


# ----------------------------------------------------------------------------- the GPU self-check
def test_selfcheck_without_a_gpu_says_so_and_writes_nothing(capsys):
    from course_lib.triton_kernels import bench, selfcheck

    if torch.cuda.is_available():  # on a GPU the self-check is run by hand, not by the test suite
        pytest.skip("a GPU is present: run python -m course_lib.triton_kernels.selfcheck")
    before = sorted(bench.RESULTS.glob("*")) if bench.RESULTS.exists() else []
    assert selfcheck.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("No CUDA GPU on this machine") and "Nothing checked, nothing written" in out
    after = sorted(bench.RESULTS.glob("*")) if bench.RESULTS.exists() else []
    assert before == after


def test_selfcheck_module_runs_as_a_command_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = subprocess.run([sys.executable, "-m", "course_lib.triton_kernels.selfcheck"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "No CUDA GPU" in out.stdout, out.stderr[-2000:]


def test_selfcheck_checks_pass_in_the_interpreter_and_catch_a_wrong_kernel(monkeypatch):
    # the same check functions the GPU run uses, at tiny sizes, on whatever device the kernels use
    from course_lib.triton_kernels import selfcheck
    from course_lib.triton_kernels import flash as flash_mod

    out: list = []
    selfcheck.check_row_kernels(out, [(3, 37)])
    selfcheck.check_matmul(out, [(37, 20, 50)])
    selfcheck.check_flash(out, [(1, 1, 37, 16)])
    assert out and all(c["ok"] for c in out), [c for c in out if not c["ok"]]
    kernels = {c["kernel"] for c in out}
    assert {"add", "softmax", "rms_norm", "matmul", "flash fwd O", "flash fwd LSE", "flash bwd dQ", "flash bwd dK",
            "flash bwd dV"} <= kernels
    assert {c["dtype"] for c in out} >= {"float32", "float16"}

    real = flash_mod.flash_attention_backward
    monkeypatch.setattr(flash_mod, "flash_attention_backward",
                        lambda *a, **kw: tuple(g * 1.01 for g in real(*a, **kw)))   # 1 % off
    bad: list = []
    selfcheck.check_flash(bad, [(1, 1, 37, 16)])
    assert not all(c["ok"] for c in bad if c["kernel"].startswith("flash bwd"))
    md = selfcheck.to_markdown({"gpu": "test", "date": "-", "command": "-", "torch": "-", "triton": "-",
                                "capability": "-", "seconds": 0.0, "checks": bad, "bench": None})
    assert "✗" in md and f"of {len(bad)} checks passed" in md


def test_bench_and_selfcheck_markdown_tables():
    # the report format, from a made-up result (no GPU here): every figure lands in its column
    from course_lib.triton_kernels import bench, selfcheck

    res = {"gpu": "Some GPU", "date": "2026-01-01", "command": "cmd", "torch": "t", "triton": "tr",
           "copy_gbps": 1000.0, "flash_shape": {"B": 4, "H": 32, "d": 64},
           "rows": [{"n_cols": 1024, "softmax_triton_gbps": 800.0, "softmax_torch_gbps": 500.0,
                     "rmsnorm_triton_gbps": 700.0, "rmsnorm_torch_gbps": 300.0}],
           "flash": [{"causal": False, "N": 4096, "triton_tflops": 300.0, "sdpa_tflops": 400.0, "ratio": 0.75}],
           "flash_bwd": [{"causal": True, "N": 4096, "triton_tflops": 100.0, "sdpa_tflops": 250.0, "ratio": 0.4}],
           "matmul": [{"n": 8192, "triton_tflops": 600.0, "torch_tflops": 700.0, "ratio": 0.857}]}
    md = bench.to_markdown(res)
    assert "| 1024 | 800 | 500 | 700 | 300 | 0.80 | 0.70 |" in md
    assert "| False | 4096 | 300.0 | 400.0 | 0.75 |" in md and "| True | 4096 | 100.0 | 250.0 | 0.40 |" in md
    assert "| 8192 | 600.0 | 700.0 | 0.86 |" in md
    check = {"kernel": "matmul", "case": "1x1x1", "dtype": "float16", "max_err": 1e-3, "torch_err": 1e-3,
             "tol": 1e-2, "ok": True}
    sc = selfcheck.to_markdown({"gpu": "Some GPU", "date": "d", "command": "c", "torch": "t", "triton": "tr",
                                "capability": "9.0", "seconds": 200.0, "checks": [check], "bench": res})
    assert "**1 of 1 checks passed**" in sc and "| matmul | 1x1x1 | float16 | 1.0e-03 |" in sc and md in sc
