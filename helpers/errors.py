"""The one error type the course raises for problems a learner can fix."""

from __future__ import annotations

import sys


class CourseError(RuntimeError):
    """A problem the learner can fix; the message is one sentence saying what to do."""


def _brief_traceback(shell, etype, value, tb, tb_offset=None) -> list[str]:
    # A CourseError already says what is wrong and what to do: a traceback would bury that.
    # Shown as an error output, so "Run all" and the course runner still stop at this cell.
    brief = [f"{etype.__name__}: {value}"]
    shell._showtraceback(etype, value, brief)
    return brief


def show_course_errors_briefly() -> None:
    """In a notebook, show a CourseError as its one sentence instead of a traceback."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython else None
    if shell is not None:
        shell.set_custom_exc((CourseError,), _brief_traceback)
