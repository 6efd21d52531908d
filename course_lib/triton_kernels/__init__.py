"""Chapter 12 — kernels written in Triton: vector add, fused softmax, fused RMSNorm, a tiled
matmul, and FlashAttention-2 forward and backward.

On a machine with a CUDA GPU the kernels are compiled and run on the GPU. Without one they run
in Triton's **interpreter** (``TRITON_INTERPRET=1``), which executes every program instance in
Python/NumPy on the CPU: the same kernel source, slow (about a millisecond per program
instance) but good for learning and testing.

.. important::

   ``TRITON_INTERPRET`` must be set **before** ``triton`` is imported in the process (and in any
   case before a kernel is decorated with ``@triton.jit``: that is when triton 3.x decides
   between compiling and interpreting). Importing this package does it for you when no CUDA GPU
   is present, so import it first::

       from course_lib.triton_kernels import INTERPRETED   # sets TRITON_INTERPRET=1 on CPU
       import triton                                      # only after the line above
       import triton.language as tl

   Nothing else in ``course_lib`` imports triton at module import time, so ``import course_lib``
   never fixes the mode too early.

Interpreter facts that shape the course (all checked in the chapter's notebook):

* it is slow, so CPU sizes are small (a few hundred program instances at most);
* bf16 is not supported by the interpreter (Triton's debugging docs say so; NumPy has no bf16, and
  in triton 3.x its ``tl.dot`` on bf16 returns wrong numbers without an error): use fp32 or fp16
  on CPU. Compiled on a GPU of compute capability ≥ 8.0 the kernels accept bf16 too; Colab's
  free T4 (sm_75) has no bf16 tensor cores, so fp16 there;
* ``num_warps`` and ``num_stages`` are accepted and ignored (one program runs at a time), and
  nothing it does can be timed meaningfully;
* an unmasked out-of-bounds load does not fault: it reads whatever lies in memory there.

Exposes ``INTERPRETED`` (bool) and ``DEVICE`` (where kernel inputs must live: ``cpu`` when
interpreted, ``cuda`` when compiled), plus the kernels' Python wrappers:

* :func:`add` (``vector_add``), :func:`softmax` (``softmax``), :func:`rms_norm` (``rmsnorm``),
  :func:`matmul` (``matmul``), :func:`flash_attention_forward` and the differentiable
  :func:`flash_attention` (``flash``).

``python -m course_lib.triton_kernels.selfcheck`` checks every kernel compiled on a GPU and runs
the benchmark (``python -m course_lib.triton_kernels.bench``), saving both under ``results/``.
"""

from __future__ import annotations

from course_lib.triton_kernels.mode import DEVICE, INTERPRETED  # first: sets TRITON_INTERPRET=1 without a GPU
from course_lib.triton_kernels.vector_add import add  # noqa: E402
from course_lib.triton_kernels.softmax import softmax  # noqa: E402
from course_lib.triton_kernels.rmsnorm import rms_norm  # noqa: E402
from course_lib.triton_kernels.matmul import matmul  # noqa: E402
from course_lib.triton_kernels.flash import flash_attention, flash_attention_forward  # noqa: E402

__all__ = ["INTERPRETED", "DEVICE", "add", "softmax", "rms_norm", "matmul", "flash_attention",
           "flash_attention_forward"]
