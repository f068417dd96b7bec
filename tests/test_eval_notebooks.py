"""The evaluation notebooks in the course runner: 04 refuses clearly, and scores an adapter end to end."""

import json
import shutil
from pathlib import Path

import nbformat
import pytest

from helpers.course import run_course

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.notebooks


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_OUTPUTS", str(tmp_path))
    return tmp_path


def _one_sentence(error: str) -> str:
    message = error.split("CourseError: ", 1)[1]
    assert "\n" not in message and message.count(". ") == 0 and message.endswith(".")
    return message


def test_04_refuses_in_one_sentence_when_02_has_not_run(outputs):
    [result] = run_course("cpu", ["04"], folder=ROOT)
    assert result.status == "failed"
    assert "run 02_eval_before.ipynb first" in _one_sentence(result.error)


def test_04_refuses_in_one_sentence_when_03_has_not_run(outputs):
    (outputs / "cpu" / "eval" / "base").mkdir(parents=True)
    (outputs / "cpu" / "eval" / "base" / "metrics.json").write_text("{}")
    [result] = run_course("cpu", ["04"], folder=ROOT)
    assert result.status == "failed"
    message = _one_sentence(result.error)
    assert "sft-adapter/adapter_config.json is missing: run 03_sft_llm.ipynb first" in message


def _metrics(run: Path, notebook: str) -> dict:
    return json.loads((run / "metrics" / f"{notebook}.json").read_text())["metrics"]


def _records(path: Path) -> dict:
    return {r["id"]: r for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


def test_01_02_04_score_the_sft_adapter_before_and_after(cpu_course, outputs):
    assert cpu_course.returncode == 0, cpu_course.log
    data = cpu_course.metrics("01_eval_data")
    assert data["mcq_zh"] == data["mcq_en"] == 8 and data["open_items"] == 4
    before = cpu_course.metrics("02_eval_before")
    assert before["mcq_n"] == 16 and 0 <= before["mcq_lo"] <= before["mcq_acc"] <= before["mcq_hi"] <= 1
    assert before["redteam_n"] == 16 and 0 <= before["redteam_safe"] <= 1  # every red-team prompt asked
    after = cpu_course.metrics("04_eval_after")
    assert after["mcq_acc_base"] == before["mcq_acc"]  # the base is not scored again, it is read back
    correct = {label: round(after[f"mcq_acc_{label}"] * 16) for label in ("base", "sft")}
    assert correct["sft"] - correct["base"] == after["fixed_sft"] - after["broken_sft"]
    assert 0 < after["mcnemar_p_sft"] <= 1
    assert after["redteam_safe_base"] == before["redteam_safe"] and 0 <= after["redteam_safe_sft"] <= 1
    run = cpu_course.run
    base, sft = _records(run / "eval" / "base" / "mcq.jsonl"), _records(run / "eval" / "sft" / "mcq.jsonl")
    assert base.keys() == sft.keys() and all(base[i]["prompt"] == sft[i]["prompt"] for i in base)
    assert any(base[i]["reply"] != sft[i]["reply"] for i in base)  # the adapter changed the answers

    copy = outputs / "cpu"  # a copy, so the shared run stays as the course left it
    shutil.copytree(run, copy)
    # Rerun after 06: the SFT answers are read back, and the GRPO adapter 06 saved is scored too.
    [again] = run_course("cpu", ["04"], folder=ROOT)
    assert again.status == "ok", again.error
    rerun = _metrics(copy, "04_eval_after")
    assert {key: rerun[key] for key in after} == after
    assert {"mcq_acc_grpo", "fixed_grpo", "broken_grpo", "mcnemar_p_grpo"} <= rerun.keys()
    executed = nbformat.read(copy / "executed" / "04_eval_after.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "resuming, 16 of 16 replies already saved" in text

