"""course_lib: the reference implementations behind the course *Transformers and Beyond*.

One module per chapter topic (``attention``, ...), plus ``grading`` (the checks that
exercise notebooks call) and ``grade`` (the command-line autograder).
"""

__version__ = "0.1.0"

from course_lib.utils import default_device, set_seed, use_triton_interpreter_without_gpu  # noqa: E402,F401

# Before anything imports triton (transformers and torch.utils.flop_counter do): without a GPU,
# Chapter 12's kernels run in Triton's interpreter.
use_triton_interpreter_without_gpu()
