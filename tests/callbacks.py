"""Trainer callbacks the training tests share."""

from transformers import TrainerCallback


class StepCounter(TrainerCallback):
    """Counts the optimizer steps actually run in this call to train(); dies at ``stop_at``."""

    def __init__(self, stop_at: int | None = None):
        self.steps, self.stop_at = 0, stop_at

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1
        if state.global_step == self.stop_at:
            raise KeyboardInterrupt  # the learner's kernel dies (or Colab disconnects) mid-run
