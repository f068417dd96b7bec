import json

import pytest

from helpers import CourseError
from helpers.runs import key_metric, load_metrics, require, run_dir, save_metrics, write_json


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_OUTPUTS", str(tmp_path))
    return tmp_path


def test_run_dir_defaults_to_the_profile_name(outputs):
    assert run_dir("cpu") == outputs / "cpu" and (outputs / "cpu").is_dir()
    assert run_dir("cpu", "class-1") == outputs / "class-1"


def test_metrics_round_trip_and_key_metric(outputs):
    run = run_dir("cpu")
    save_metrics(run, "02_eval_before", {"acc": 0.41234, "n": 16}, key="acc")
    assert load_metrics(run, "02_eval_before") == {"acc": 0.41234, "n": 16}
    assert key_metric(run, "02_eval_before") == "acc=0.412"
    assert load_metrics(run, "03_sft_llm") is None and key_metric(run, "03_sft_llm") == ""


def test_key_must_be_a_metric(outputs):
    with pytest.raises(CourseError, match="'loss' is not among"):
        save_metrics(run_dir("cpu"), "03_sft_llm", {"acc": 1.0}, key="loss")


def test_write_json_leaves_no_temporary_file(outputs):
    path = write_json(outputs / "a" / "b.json", {"x": "中文"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"x": "中文"}
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]


def test_require_names_the_notebook_to_run_first(outputs):
    with pytest.raises(CourseError, match="run 01_eval_data.ipynb first"):
        require(outputs / "cpu" / "eval" / "mcq.jsonl", "01_eval_data.ipynb")
    assert require(outputs, "x") == outputs
