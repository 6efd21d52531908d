"""course_lib: the reference implementations behind the course *Transformers and Beyond*.

One module per chapter topic (``attention``, ...), plus ``grading`` (the checks that
exercise notebooks call) and ``grade`` (the command-line autograder).
"""

__version__ = "0.1.0"

from course_lib.utils import default_device, set_seed  # noqa: E402,F401
