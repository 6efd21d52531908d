"""One command for a GPU: ``python -m course_lib.triton_kernels.selfcheck``.

On a machine with a CUDA GPU it

1. runs every Chapter 12 kernel **compiled** (with fixed block sizes) against PyTorch — vector add, softmax, RMSNorm,
   the tiled matmul, and FlashAttention-2 forward (O and LSE) and backward (dQ, dK, dV) — in
   fp32, fp16 and (on sm ≥ 80) bf16, causal and not, with sequence lengths and matrix sizes that
   are not multiples of any block size;
2. runs the benchmark (:mod:`course_lib.triton_kernels.bench`), which uses the autotuned paths
   and checks their results against PyTorch before timing them;
3. writes ``course_lib/triton_kernels/results/selfcheck_<gpu>.json`` and ``.md`` with the GPU
   name, the versions, every error and its tolerance, the tables and the time it took,

and exits 1 if any check failed. Without a GPU it says so, exits 0 and writes nothing: the
interpreter versions of the same checks are the test suite (``pytest tests/test_triton_kernels.py``).

**Tolerances.** Every result is compared with a float64 reference computed by PyTorch on the GPU
(``F.scaled_dot_product_attention`` and its autograd for attention). A check passes when the
largest absolute error is at most ``max(floor, 2 × PyTorch's own error in the same dtype)``:
the floors are 1e-4 (fp32, exact ``"ieee"`` products), 1e-2 (fp16) and 6e-2 (bf16, 8-bit
mantissa); "PyTorch's own error" is that of the same PyTorch operation run in the kernel's dtype,
so a kernel is held to the accuracy the dtype allows, not to an absolute number picked after the
fact.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import platform
import sys
import time

import torch
import torch.nn.functional as F

from course_lib.triton_kernels import bench

COMMAND = "python -m course_lib.triton_kernels.selfcheck"
FLOORS = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 6e-2}
#: Attention shapes (B, H, N, d): N never a multiple of 16; d = 64 and the LLaMA head size 128.
ATTN_SHAPES = [(2, 4, 1000, 64), (1, 3, 777, 128)]
#: Fixed block sizes for the correctness checks: one compilation per kernel, dtype, d and mask
#: instead of a whole autotuning list each (the benchmark runs the autotuned paths, and checks
#: their results before timing them). This keeps the command within a few minutes.
FLASH_BLOCKS = dict(block_m=64, block_n=32)
MATMUL_BLOCKS = dict(block_m=64, block_n=64, block_k=32)
#: Matmul shapes (M, N, K), ragged on every edge.
MATMUL_SHAPES = [(1000, 777, 513), (129, 2050, 96), (2048, 2048, 2048)]


def no_gpu_message() -> str:
    return ("No CUDA GPU on this machine: the self-check compiles the Triton kernels for a GPU and "
            "times them there. Nothing checked, nothing written. (Without a GPU the same kernels "
            "run in Triton's interpreter and are checked by: pytest tests/test_triton_kernels.py)")


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def _record(out: list, kernel: str, case: str, dtype: torch.dtype, err: float, torch_err: float) -> None:
    tol = max(FLOORS[dtype], 2 * torch_err)
    out.append({"kernel": kernel, "case": case, "dtype": str(dtype).replace("torch.", ""),
                "max_err": err, "torch_err": torch_err, "tol": tol, "ok": bool(err <= tol)})


def dtypes() -> list[torch.dtype]:
    from course_lib.triton_kernels._common import supported_dtypes

    return list(supported_dtypes())


def _randn(g: torch.Generator, *shape) -> torch.Tensor:
    from course_lib.triton_kernels import DEVICE

    return torch.randn(*shape, generator=g).to(DEVICE)


ROW_SHAPES = [(1000, 1), (513, 777), (64, 4097)]


def check_row_kernels(out: list, shapes=ROW_SHAPES) -> None:
    """vector add, softmax and RMSNorm against PyTorch, ragged sizes."""
    from course_lib.triton_kernels import add, rms_norm, softmax

    g = torch.Generator().manual_seed(0)
    for dtype in dtypes():
        for rows, n in shapes:
            x = (_randn(g, rows, n) * 3).to(dtype)
            y = _randn(g, rows, n).to(dtype)
            w = _randn(g, n).to(dtype)
            case = f"[{rows}, {n}]"
            _record(out, "add", case, dtype, _err(add(x, y), x.double() + y.double()),
                    _err(x + y, x.double() + y.double()))
            ref = torch.softmax(x.double(), -1)
            _record(out, "softmax", case, dtype, _err(softmax(x), ref), _err(torch.softmax(x, -1), ref))
            ref = F.rms_norm(x.double(), (n,), w.double(), 1e-6)
            _record(out, "rms_norm", case, dtype, _err(rms_norm(x, w), ref), _err(F.rms_norm(x, (n,), w, 1e-6), ref))


def check_matmul(out: list, shapes=MATMUL_SHAPES) -> None:
    """The tiled matmul against ``a @ b``, ragged on every edge."""
    from course_lib.triton_kernels.matmul import matmul

    g = torch.Generator().manual_seed(1)
    for dtype in dtypes():
        for M, N, K in shapes:
            a = _randn(g, M, K).to(dtype)
            b = _randn(g, K, N).to(dtype)
            ref = a.double() @ b.double()
            # relative to the size of the entries (~√K): compare C / √K
            s = 1 / math.sqrt(K)
            _record(out, "matmul", f"{M}x{N}x{K}", dtype, _err(matmul(a, b, **MATMUL_BLOCKS) * s, ref * s),
                    _err((a @ b) * s, ref * s))


def check_flash(out: list, shapes=ATTN_SHAPES) -> None:
    """FlashAttention forward (O, LSE) and backward (dQ, dK, dV) against SDPA."""
    from course_lib.triton_kernels.flash import flash_attention, flash_attention_forward

    g = torch.Generator().manual_seed(2)
    for dtype in dtypes():
        for B, H, N, d in shapes:
            for causal in (False, True):
                case = f"B{B} H{H} N{N} d{d} {'causal' if causal else 'full'}"
                q, k, v, do = (_randn(g, B, H, N, d).to(dtype) for _ in range(4))
                leaves64 = [t.double().requires_grad_() for t in (q, k, v)]
                o64 = F.scaled_dot_product_attention(*leaves64, is_causal=causal)
                grads64 = torch.autograd.grad(o64, leaves64, do.double())
                s = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(d)
                if causal:
                    s = s.masked_fill(torch.ones(N, N, dtype=torch.bool, device=q.device).triu(1), -math.inf)
                lse64 = torch.logsumexp(s, -1)

                leaves = [t.clone().requires_grad_() for t in (q, k, v)]
                o_ref = F.scaled_dot_product_attention(*leaves, is_causal=causal)
                grads_ref = torch.autograd.grad(o_ref, leaves, do)
                o_fwd, lse = flash_attention_forward(q, k, v, causal=causal, **FLASH_BLOCKS)
                leaves = [t.clone().requires_grad_() for t in (q, k, v)]
                o = flash_attention(*leaves, causal, **FLASH_BLOCKS)
                grads = torch.autograd.grad(o, leaves, do)

                _record(out, "flash fwd O", case, dtype, _err(o_fwd, o64), _err(o_ref, o64))
                _record(out, "flash fwd LSE", case, dtype, _err(lse, lse64), 0.0)
                for name, got, ref, t in zip(("dQ", "dK", "dV"), grads, grads64, grads_ref):
                    _record(out, f"flash bwd {name}", case, dtype, _err(got, ref), _err(t, ref))


def to_markdown(res: dict) -> str:
    bad = [c for c in res["checks"] if not c["ok"]]
    lines = [f"# Self-check on {res['gpu']}", "",
             f"{res['date']} — `{res['command']}` — torch {res['torch']}, triton {res['triton']}, "
             f"compute capability {res['capability']} — {res['seconds']:.0f} s", "",
             f"**{len(res['checks']) - len(bad)} of {len(res['checks'])} checks passed** "
             "(max |error| against a float64 PyTorch reference ≤ max(floor, 2 × PyTorch's own error "
             "in the same dtype); floors fp32 1e-4, fp16 1e-2, bf16 6e-2).", "",
             "| kernel | case | dtype | max error | PyTorch's error | tolerance | ok |",
             "|---|---|---|---:|---:|---:|---|"]
    for c in res["checks"]:
        lines.append(f"| {c['kernel']} | {c['case']} | {c['dtype']} | {c['max_err']:.1e} | "
                     f"{c['torch_err']:.1e} | {c['tol']:.1e} | {'✓' if c['ok'] else '✗'} |")
    if res.get("bench"):
        lines += ["", "## Benchmark", "", bench.to_markdown(res["bench"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-bench", action="store_true", help="only the correctness checks")
    ap.add_argument("--no-save", action="store_true", help="print, write nothing")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print(no_gpu_message())
        return 0
    from course_lib.triton_kernels import INTERPRETED

    if INTERPRETED:
        print("TRITON_INTERPRET=1 is set although a GPU is present: unset it to check the compiled kernels.")
        return 2
    import triton

    start = time.perf_counter()
    checks: list = []
    for step in (check_row_kernels, check_matmul, check_flash):
        step(checks)
        print(f"{step.__name__}: {sum(c['ok'] for c in checks)} of {len(checks)} passed so far "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    res = {"gpu": bench.gpu_name(), "date": _dt.date.today().isoformat(), "command": COMMAND,
           "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
           "capability": ".".join(map(str, torch.cuda.get_device_capability())), "checks": checks}
    res["bench"] = None if args.no_bench else bench.collect()
    res["seconds"] = time.perf_counter() - start
    md = to_markdown(res)
    print(md)
    if not args.no_save:
        bench.RESULTS.mkdir(exist_ok=True)
        stem = bench.RESULTS / f"selfcheck_{bench.slug(res['gpu'])}"
        stem.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
        stem.with_suffix(".md").write_text(md)
        print(f"saved {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
