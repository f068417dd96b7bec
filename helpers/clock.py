"""Class mode: a notebook's time budget, step times with the warm-up apart, and projected finish times.

A notebook starts a ``Budget`` in its first cells (``TIME_BUDGET_MIN``, None for no limit). Each long
phase asks it for a deadline: training stops before a step that would not finish in time
(``StepClock``), and generation stops before a batch that would not (``generation.generate_to_jsonl``).
Both print what they measured, what they project, and what the budget cut.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from transformers import TrainerCallback


def clock_time(seconds_from_now: float) -> str:
    """The wall-clock time (HH:MM) that many seconds from now."""
    return (datetime.now() + timedelta(seconds=seconds_from_now)).strftime("%H:%M")


def minutes(seconds: float) -> str:
    """Seconds as a short duration: '45 s' or '3.2 min'."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


@dataclass
class Budget:
    """The minutes a notebook may take, counted from when this was made (None: no limit)."""

    minutes: float | None
    started: float = field(default_factory=lambda: time.monotonic())

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        """Seconds left, ``inf`` with no budget."""
        return math.inf if self.minutes is None else self.minutes * 60 - self.elapsed()

    def deadline(self, share: float = 1.0, keep: float = 0.0) -> float | None:
        """The ``time.monotonic()`` by which a phase should end: ``share`` of what is left after keeping
        ``keep`` seconds for the cells after it. None with no budget."""
        if self.minutes is None:
            return None
        return time.monotonic() + max(0.0, self.left() - keep) * share

    def report(self) -> str:
        """One line for the end of the notebook: its time against the budget."""
        took = minutes(self.elapsed())
        if self.minutes is None:
            return f"This notebook took {took} (no TIME_BUDGET_MIN set)."
        within = "within" if self.left() >= 0 else "over"
        return f"This notebook took {took}, {within} its budget of {self.minutes:g} min."


def fits_before(deadline: float | None, seconds_needed: float) -> bool:
    """Whether something that takes ``seconds_needed`` ends before ``deadline`` (always, with none)."""
    return deadline is None or time.monotonic() + seconds_needed <= deadline


class StepClock(TrainerCallback):
    """Times every optimizer step. The first step (compiling, allocating, caching) is the warm-up; the
    steps after it give the steady step time, the projected finish, and, with a deadline, where to stop.

    Measures one process: with several processes the deadline is not applied (they must stop together).
    """

    def __init__(self, deadline: float | None = None, *, warmup_steps: int = 1, project_after: int = 2):
        self.deadline, self.warmup_steps, self.project_after = deadline, warmup_steps, project_after
        self.durations: list[float] = []
        self.planned = self.first_step = 0
        self.cut = 0
        self._last = 0.0
        self._projected = False

    @property
    def warmup_seconds(self) -> float:
        return sum(self.durations[:self.warmup_steps])

    @property
    def step_seconds(self) -> float | None:
        """The mean time of a step after the warm-up (evaluation and checkpoint time included)."""
        steady = self.durations[self.warmup_steps:]
        return statistics.fmean(steady) if steady else None

    def timings(self) -> dict[str, object]:
        """The numbers a notebook saves with its metrics: the warm-up, the steady step time, every step's
        seconds (a slow second or third step shows a recompilation that the warm-up did not cover), and the
        steps the budget cut."""
        return {"warmup_seconds": round(self.warmup_seconds, 1), "step_seconds": self.step_seconds,
                "step_durations": [round(d, 2) for d in self.durations], "steps_cut": self.cut}

    def on_train_begin(self, args, state, control, **kwargs):
        self.planned, self.first_step = state.max_steps, state.global_step
        if args.world_size > 1:
            self.deadline = None
        self._last = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.monotonic()
        self.durations.append(now - self._last)
        self._last = now
        step = self.step_seconds
        if step is None:
            return
        remaining = self.planned - state.global_step
        measured_enough = len(self.durations) >= self.warmup_steps + self.project_after
        if not self._projected and remaining > 0 and measured_enough:
            self._projected = True
            if state.is_world_process_zero:
                fit = "" if self.deadline is None else (
                    f"; TIME_BUDGET_MIN leaves time for about {max(0, int((self.deadline - now) // step))}")
                print(f"Step time {step:.2f} s after a warm-up of {self.warmup_seconds:.1f} s: "
                      f"{remaining} more steps take about {minutes(remaining * step)}, "
                      f"done near {clock_time(remaining * step)}{fit}.")
        if remaining > 0 and not fits_before(self.deadline, step):
            self.cut = remaining
            control.should_training_stop = True

    def summary(self) -> str:
        """What the steps took and, if the budget stopped training, what it cut."""
        done = len(self.durations)
        if not done:
            return "No step trained (the run had already finished)."
        text = f"{done} steps in {minutes(sum(self.durations))}: warm-up {self.warmup_seconds:.1f} s (step 1"
        text += (f": kernels, memory and caches set up on first use), then {self.step_seconds:.2f} s a step."
                 if self.step_seconds else ").")
        if self.cut:
            text += (f" TIME_BUDGET_MIN stopped training after step {self.first_step + done} of "
                     f"{self.planned} ({self.cut} cut); the learning-rate schedule was planned for "
                     f"{self.planned} steps, so it ended before its decay.")
        return text
