"""Class mode on cpu: 03 with a small TIME_BUDGET_MIN stops training in time and finishes within it."""

from pathlib import Path

import nbformat

from helpers.course import run_course
from helpers.profiles import get_profile
from helpers.runs import load_metrics

ROOT = Path(__file__).resolve().parent.parent
BUDGET_MIN = 1.5
# The budget's clock starts in the notebook's first code cells: the kernel's start and the first imports
# come before it, and the runner's time includes them.
STARTUP_S = 30


def test_03_with_a_time_budget_cuts_steps_and_finishes_within_it(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_OUTPUTS", str(tmp_path))
    knobs = {"TIME_BUDGET_MIN": BUDGET_MIN, "HELD_OUT": 4, "CHECK_MAX_NEW_TOKENS": 32, "TRACKING": "none"}
    [result] = run_course("cpu", ["03"], "budget", folder=ROOT, knobs=knobs)
    assert result.status == "ok", result.error
    metrics = load_metrics(tmp_path / "budget", "03_sft_llm")
    planned = get_profile("cpu").sft_steps
    assert metrics["steps_cut"] > 0 and metrics["steps"] + metrics["steps_cut"] == planned
    assert metrics["notebook_minutes"] <= BUDGET_MIN
    assert result.seconds <= BUDGET_MIN * 60 + STARTUP_S
    assert 0 < metrics["warmup_seconds"] and 0 < metrics["step_seconds"]
    nb = nbformat.read(tmp_path / "budget" / "executed" / "03_sft_llm.ipynb", as_version=4)
    printed = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"TIME_BUDGET_MIN stopped training after step {metrics['steps']} of {planned}" in printed
    assert "Step time" in printed and f"within its budget of {BUDGET_MIN:g} min" in printed
