"""Benchmarks of the Chapter 12 kernels: ``python -m course_lib.triton_kernels.bench``.

On a CUDA GPU it measures, with ``triton.testing.do_bench`` (median of many runs, after warm-up):

* softmax and RMSNorm (fp16, 4096 rows) — effective bandwidth in GB/s, counting one read and one
  write of the matrix, for the Triton kernel and for PyTorch, against the GPU's **measured** copy
  bandwidth (``x.clone()`` of a 1 GiB tensor, which also reads and writes every byte);
* the FlashAttention-2 forward (B=4, H=32, d=64, fp16, N = 512 … 4096, causal and not) — TFLOP/s,
  counting ``4·B·H·N²·d`` FLOPs (half when causal), for the Triton kernel and for
  ``F.scaled_dot_product_attention``, and their ratio;
* the FlashAttention-2 backward at the same shapes — TFLOP/s counting ``2.5×`` the forward's FLOPs
  (the convention of Triton's tutorial 06: five ``N²d`` products to the forward's two), Triton's
  two-kernel backward against SDPA's, and their ratio;
* the tiled matmul (fp16, square, 1024 … 8192) against ``torch.matmul`` (cuBLAS), TFLOP/s;

checks every result against PyTorch before timing it, prints the tables, and saves them to
``course_lib/triton_kernels/results/bench_<gpu-name>.json`` and ``.md`` (with the GPU name, date,
versions and this command). Without a GPU it says so and exits 0 without writing anything: the
interpreter's timings say nothing about a GPU, and no table is ever made up.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"
COMMAND = "python -m course_lib.triton_kernels.bench"
FLASH_SHAPE = dict(B=4, H=32, d=64)
SEQ_LENS = (512, 1024, 2048, 4096)
MATMUL_SIZES = (1024, 2048, 4096, 8192)
ROW_SIZES = (1024, 2048, 4096, 8192, 16384)
N_ROWS = 4096


def gpu_name() -> str:
    return torch.cuda.get_device_name(0)


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def _ms(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def copy_bandwidth(n_bytes: int = 1 << 30) -> float:
    """GB/s of ``x.clone()`` (reads and writes ``n_bytes`` each)."""
    x = torch.empty(n_bytes // 2, dtype=torch.float16, device="cuda").normal_()
    ms = _ms(lambda: x.clone())
    return 2 * n_bytes / (ms * 1e-3) / 1e9


def row_kernels(sizes=ROW_SIZES, rows: int = N_ROWS) -> list[dict]:
    """GB/s of softmax and RMSNorm (Triton vs PyTorch) for ``[rows, n]`` fp16 matrices."""
    from course_lib.triton_kernels import rms_norm, softmax

    out = []
    for n in sizes:
        x = torch.randn(rows, n, device="cuda", dtype=torch.float16)
        w = torch.randn(n, device="cuda", dtype=torch.float16)
        torch.testing.assert_close(softmax(x), torch.softmax(x, -1), atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(rms_norm(x, w), F.rms_norm(x, (n,), w, 1e-6), atol=2e-2, rtol=2e-2)
        gb = 2 * x.numel() * x.element_size() / 1e9
        row = {"n_cols": n}
        for key, fn in [("softmax_triton", lambda: softmax(x)), ("softmax_torch", lambda: torch.softmax(x, -1)),
                        ("rmsnorm_triton", lambda: rms_norm(x, w)),
                        ("rmsnorm_torch", lambda: F.rms_norm(x, (n,), w, 1e-6))]:
            row[key + "_gbps"] = gb / (_ms(fn) * 1e-3)
        out.append(row)
    return out


def flash(seq_lens=SEQ_LENS, B: int = 4, H: int = 32, d: int = 64) -> list[dict]:
    """TFLOP/s of the Triton FlashAttention-2 forward and of SDPA, fp16, causal and not."""
    from course_lib.triton_kernels import flash_attention_forward

    out = []
    for causal in (False, True):
        for n in seq_lens:
            q, k, v = (torch.randn(B, H, n, d, device="cuda", dtype=torch.float16) for _ in range(3))
            o, _ = flash_attention_forward(q, k, v, causal=causal)
            ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            torch.testing.assert_close(o, ref, atol=1e-2, rtol=1e-2)
            flops = 4 * B * H * n * n * d * (0.5 if causal else 1.0)
            t_triton = _ms(lambda: flash_attention_forward(q, k, v, causal=causal))
            t_sdpa = _ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
            out.append({"causal": causal, "N": n, "triton_ms": t_triton, "sdpa_ms": t_sdpa,
                        "triton_tflops": flops / (t_triton * 1e-3) / 1e12,
                        "sdpa_tflops": flops / (t_sdpa * 1e-3) / 1e12,
                        "ratio": t_sdpa / t_triton})
    return out


def flash_backward(seq_lens=SEQ_LENS, B: int = 4, H: int = 32, d: int = 64,
                   dtype: torch.dtype = torch.float16) -> list[dict]:
    """TFLOP/s of the backward alone (dQ, dK, dV from a saved forward): Triton vs SDPA."""
    from course_lib.triton_kernels.flash import flash_attention

    out = []
    for causal in (False, True):
        for n in seq_lens:
            q, k, v = (torch.randn(B, H, n, d, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
            do = torch.randn_like(q)
            o_tri = flash_attention(q, k, v, causal)
            o_ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            g_tri = torch.autograd.grad(o_tri, (q, k, v), do, retain_graph=True)
            g_ref = torch.autograd.grad(o_ref, (q, k, v), do, retain_graph=True)
            for a, b in zip(g_tri, g_ref):
                torch.testing.assert_close(a, b, atol=5e-2, rtol=5e-2)
            flops = 2.5 * 4 * B * H * n * n * d * (0.5 if causal else 1.0)
            t_triton = _ms(lambda: torch.autograd.grad(o_tri, (q, k, v), do, retain_graph=True))
            t_sdpa = _ms(lambda: torch.autograd.grad(o_ref, (q, k, v), do, retain_graph=True))
            out.append({"causal": causal, "N": n, "triton_ms": t_triton, "sdpa_ms": t_sdpa,
                        "triton_tflops": flops / (t_triton * 1e-3) / 1e12,
                        "sdpa_tflops": flops / (t_sdpa * 1e-3) / 1e12, "ratio": t_sdpa / t_triton})
    return out


def matmul_bench(sizes=MATMUL_SIZES, dtype: torch.dtype = torch.float16) -> list[dict]:
    """TFLOP/s (``2·n³``) of the Triton tiled matmul and of ``torch.matmul`` on square matrices."""
    from course_lib.triton_kernels.matmul import matmul

    out = []
    for n in sizes:
        a, b = (torch.randn(n, n, device="cuda", dtype=dtype) for _ in range(2))
        torch.testing.assert_close(matmul(a, b), a @ b, atol=1e-1, rtol=1e-2)
        flops = 2 * n ** 3
        t_triton, t_torch = _ms(lambda: matmul(a, b)), _ms(lambda: a @ b)
        out.append({"n": n, "triton_tflops": flops / (t_triton * 1e-3) / 1e12,
                    "torch_tflops": flops / (t_torch * 1e-3) / 1e12, "ratio": t_torch / t_triton})
    return out


def collect() -> dict:
    """Every benchmark above, with the GPU name, date and versions (needs a CUDA GPU)."""
    import triton

    res = {"gpu": gpu_name(), "date": _dt.date.today().isoformat(), "command": COMMAND,
           "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
           "copy_gbps": copy_bandwidth(), "flash_shape": FLASH_SHAPE}
    res["rows"] = row_kernels()
    res["flash"] = flash(**FLASH_SHAPE)
    res["flash_bwd"] = flash_backward(**FLASH_SHAPE)
    res["matmul"] = matmul_bench()
    return res


def to_markdown(res: dict) -> str:
    lines = [f"**{res['gpu']}** — {res['date']} — `{res['command']}` "
             f"(torch {res['torch']}, triton {res['triton']})", "",
             f"Measured copy bandwidth (`x.clone()`, 1 GiB): **{res['copy_gbps']:.0f} GB/s**", "",
             f"Softmax and RMSNorm, fp16, {N_ROWS} rows, GB/s (one read + one write):", "",
             "| n_cols | softmax Triton | softmax torch | RMSNorm Triton | RMSNorm torch | Triton softmax / copy "
             "| Triton RMSNorm / copy |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['n_cols']} | {r['softmax_triton_gbps']:.0f} | {r['softmax_torch_gbps']:.0f} | "
                     f"{r['rmsnorm_triton_gbps']:.0f} | {r['rmsnorm_torch_gbps']:.0f} | "
                     f"{r['softmax_triton_gbps'] / res['copy_gbps']:.2f} | "
                     f"{r['rmsnorm_triton_gbps'] / res['copy_gbps']:.2f} |")
    s = res["flash_shape"]
    tables = [("flash", f"FlashAttention-2 forward, fp16, B={s['B']}, H={s['H']}, d={s['d']}, TFLOP/s:"),
              ("flash_bwd", "FlashAttention-2 backward (dQ, dK, dV), same shapes, TFLOP/s (2.5 × forward FLOPs):")]
    for key, title in tables:
        if not res.get(key):
            continue
        lines += ["", title, "", "| causal | N | Triton | SDPA | Triton / SDPA |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['causal']} | {r['N']} | {r['triton_tflops']:.1f} | {r['sdpa_tflops']:.1f} | {r['ratio']:.2f} |"
                  for r in res[key]]
    if res.get("matmul"):
        lines += ["", "Tiled matmul, fp16, n × n × n, TFLOP/s (2n³):", "",
                  "| n | Triton | torch.matmul | Triton / torch |", "|---:|---:|---:|---:|"]
        for r in res["matmul"]:
            lines.append(f"| {r['n']} | {r['triton_tflops']:.1f} | {r['torch_tflops']:.1f} | {r['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-save", action="store_true", help="print the tables, write nothing")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("No CUDA GPU on this machine: the benchmarks need one (the Triton interpreter's timings "
              "say nothing about a GPU). Nothing measured, nothing written.")
        return 0
    res = collect()
    md = to_markdown(res)
    print(md)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        stem = RESULTS / f"bench_{slug(res['gpu'])}"
        stem.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
        stem.with_suffix(".md").write_text(md)
        print(f"saved {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
