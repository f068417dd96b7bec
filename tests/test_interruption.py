"""A real training process killed mid-run, then run again: it resumes from its last checkpoint.

The kill is SIGKILL, what a Colab disconnect or a dead kernel amounts to: no clean-up code runs.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import training

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "scripts" / "sft_run.py"
STEPS, SAVE_EVERY = 8, 2


def _start(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SWANLAB_MODE": "disabled"}
    return subprocess.Popen([sys.executable, str(SCRIPT), str(out), str(STEPS), str(SAVE_EVERY)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_killed_sft_run_resumes_from_its_last_checkpoint(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    first = _start(tmp_path)
    deadline = time.monotonic() + 600
    while training.last_checkpoint(checkpoints) is None:  # wait for the first complete checkpoint
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint after 10 minutes"
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL and not (tmp_path / "adapter").exists()
    kept = training.last_checkpoint(checkpoints)
    step = training.checkpoint_step(kept)
    assert SAVE_EVERY <= step < STEPS

    second = _start(tmp_path)
    out, _ = second.communicate(timeout=900)
    assert second.returncode == 0, out[-3000:]
    assert f"Resuming from checkpoint-{step} (step {step} of {STEPS})." in out
    assert out.strip().endswith(f"finished at step {STEPS}")
    state = json.loads((checkpoints / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == list(range(1, STEPS + 1))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size > 0
