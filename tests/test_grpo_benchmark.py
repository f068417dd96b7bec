"""The GRPO benchmark script's CPU path: the same code the GPU run takes, minus CUDA and unsloth."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_benchmark

from helpers.profiles import PROFILES

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("grpo_step")


def test_a_setting_is_the_profile_grpo_shape(bench):
    t4 = bench.setting("t4")
    assert t4["generations"] == PROFILES["t4"].grpo_num_generations
    assert t4["completion"] == PROFILES["t4"].grpo_max_completion_length
    assert t4["load_in_4bit"] and t4["dtype"] == "float16" and t4["seq"] > t4["completion"]
    assert bench.setting("80gb", generations=2, completion=16)["generations"] == 2
    assert t4["prompts"] == 1 and bench.setting("t4", prompts=4)["prompts"] == 4


def test_several_questions_a_step_train_on_all_their_answers(bench, tmp_path):
    folder = bench.make_tiny_checkpoint(tmp_path / "tiny", None)
    shape = bench.setting("t4", generations=2, completion=4, prompts=2)
    result = bench.measure(str(folder), "transformers", "t4", shape, steps=1)
    assert result["prompts"] == 2
    assert result["seconds_per_answer"] == pytest.approx(result["seconds_per_step"] / 4)
    table = bench.render({"rows": [{**result, "setting": "t4"}]}, None)
    assert "| 2 × 2 × 4 |" in table


def test_a_grpo_step_is_measured_on_a_tiny_qwen3(bench, tmp_path):
    folder = bench.make_tiny_checkpoint(tmp_path / "tiny", None)
    shape = bench.setting("t4", generations=2, completion=4)
    result = bench.measure(str(folder), "transformers", "t4", shape, steps=1)
    assert result["backend"] == "transformers" and result["steps"] == 1
    assert result["seconds_per_step"] > 0 and result["peak_gb"] is None  # no GPU here
    assert result["load_in_4bit"] is False and result["dtype"] == "float32"  # what a CPU actually loads
    assert result["mean_completion_tokens"] == 4  # random weights never stop early


def test_each_generation_path_reaches_the_trainer_and_shows_in_the_table(bench, tmp_path):
    folder = bench.make_tiny_checkpoint(tmp_path / "tiny", None)
    shape = bench.setting("t4", generations=2, completion=4)
    result = bench.measure(str(folder), "transformers", "t4", shape, steps=1, generation_path="dynamic-cache")
    assert result["generation"] == "dynamic-cache" and result["mean_completion_tokens"] == 4
    assert result["environment"] == {}  # a way that sets no switch
    assert result["generation_share"] is not None and 0 < result["generation_share"] < 1
    cut = {"backend": "unsloth", "setting": "t4", "generation": "continuous", "error": "not run"}
    table = bench.render({"rows": [{**result, "setting": "t4"}, cut]}, None)
    assert "| t4 | transformers | dynamic-cache |" in table
    assert "| t4 | unsloth | continuous | failed" in table
    with pytest.raises(KeyError):
        bench.measure(str(folder), "transformers", "t4", shape, steps=1, generation_path="vllm-maybe")


def test_the_whole_script_measures_in_a_fresh_process_and_reports_what_its_budget_left_out(tmp_path):
    """The trainer logs dicts to stdout too: the measurement's own JSON, printed last, is what comes back.
    The no-compile way's switch must reach that fresh process (unsloth reads it on import there)."""
    script = [sys.executable, str(ROOT / "benchmarks" / "grpo_step.py"), "--tiny",
              "--backends", "transformers", "--settings", "t4", "--generations", "2", "--max-completion", "4",
              "--steps", "1"]
    out = tmp_path / "grpo.json"
    done = subprocess.run([*script, "--generation", "no-compile", "--budget", "900", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1000)
    assert done.returncode == 0, done.stderr[-2000:]
    [row] = json.loads(out.read_text())
    assert "error" not in row, row["error"][-500:]
    assert row["setting"] == "t4" and row["generation"] == "no-compile" and row["seconds_per_step"] > 0
    assert row["environment"] == {"UNSLOTH_COMPILE_DISABLE": "1"}

    done = subprocess.run([*script, "--generation", "course,continuous", "--budget", "5", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [(r["generation"], r["error"]) for r in rows] == [("course", "not run (time budget)"),
                                                             ("continuous", "not run (time budget)")]
    assert "| t4 | transformers | continuous | failed: not run (time budget)" in done.stdout


@pytest.mark.parametrize("last, before", [(None, []), ("1", ["peft", "transformers"])])
def test_the_unsloth_imported_last_way_loads_transformers_and_peft_before_unsloth(bench, tmp_path, last,
                                                                                   before):
    """A stand-in unsloth records what was imported before it: nothing in the course's way, transformers
    and peft in the notebooks' order (the one unsloth warns about)."""
    record = "print('before:', sorted(m for m in ('peft', 'transformers', 'trl') if m in sys.modules))"
    (tmp_path / "unsloth.py").write_text(f"import sys\n{record}\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "COURSE_BENCH_UNSLOTH_LAST"}
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{ROOT}"
    if last:
        env["COURSE_BENCH_UNSLOTH_LAST"] = last
    code = "from benchmarks.grpo_step import import_unsloth; import_unsloth()"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"before: {before}" in done.stdout
    assert bench.GENERATIONS["unsloth-imported-last"] == ({}, {"COURSE_BENCH_UNSLOTH_LAST": "1"})
