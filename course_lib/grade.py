"""``python -m course_lib.grade``: the autograder, which lives in :mod:`course_lib.grading.autograde`.

Kept so that the command the exercises and the book give keeps working.
"""

from __future__ import annotations

import sys

from course_lib.grading.autograde import (  # noqa: F401 - re-exported
    DEFAULT_CELL_TIMEOUT,
    Report,
    TaskResult,
    failure_message,
    find_reference,
    format_report,
    grade,
    grade_many,
    main,
)

if __name__ == "__main__":
    sys.exit(main())
