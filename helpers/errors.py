"""The one error type the course raises for problems a learner can fix."""

from __future__ import annotations

import sys


class CourseError(RuntimeError):
    """A problem the learner can fix; the message is one sentence saying what to do."""


class OutOfMemory(CourseError):
    """The GPU ran out of memory; the message names the knobs that use less."""

    def __init__(self, what: str, knobs: str):
        super().__init__(f"The GPU ran out of memory while {what}: {knobs}.")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is the GPU running out of memory (torch's own error, or a CUDA message)."""
    import torch

    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def free_gpu_memory() -> None:
    """Give back what a failed step left behind, so that a smaller retry can fit."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
