"""The course runner, on three tiny notebooks: one that passes, one that fails, one never reached."""

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from helpers import CourseError, course

ROOT = Path(__file__).resolve().parent.parent


def _write(folder: Path, name: str, *sources: str) -> None:
    cells = [new_code_cell('PROFILE = "auto"\nRUN_NAME = ""')]
    cells[0].metadata["tags"] = ["parameters"]
    cells += [new_code_cell(s) for s in sources]
    nbformat.write(new_notebook(cells=cells), folder / name)


@pytest.fixture
def course_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernels import helpers from the checkout
    monkeypatch.setenv("COURSE_OUTPUTS", str(tmp_path / "outputs"))
    folder = tmp_path / "course"
    folder.mkdir()
    _write(folder, "00_first.ipynb",
           "from helpers import runs\n"
           "run = runs.run_dir(PROFILE, RUN_NAME)\n"
           "runs.save_metrics(run, '00_first', {'answer': 42, 'profile': PROFILE}, key='answer')")
    _write(folder, "01_second.ipynb", "x = 1", "from helpers import CourseError\n"
           "raise CourseError('Run 00_first.ipynb first.')")
    _write(folder, "02_third.ipynb", "print('never')")
    return folder


def test_find_notebooks_in_order_and_by_number(course_folder):
    assert [p.name for p in course.find_notebooks(course_folder)] == [
        "00_first.ipynb", "01_second.ipynb", "02_third.ipynb"]
    assert [p.stem for p in course.find_notebooks(course_folder, ["02", "00_first"])] == [
        "00_first", "02_third"]


def test_an_unknown_notebook_lists_the_real_ones(course_folder):
    with pytest.raises(CourseError, match="No notebook 09 in .*00_first, 01_second, 02_third"):
        course.find_notebooks(course_folder, ["09"])


def test_run_stops_at_the_failing_cell_and_names_it(course_folder, tmp_path):
    results = course.run_course("cpu", folder=course_folder)
    assert [r.status for r in results] == ["ok", "failed", "not run"]
    assert results[0].metric == "answer=42"
    assert results[1].error == "cell In [4]: CourseError: Run 00_first.ipynb first."
    run = tmp_path / "outputs" / "cpu"
    assert (run / "executed" / "01_second.ipynb").is_file()
    assert json.loads((run / "summary.json").read_text())[1]["status"] == "failed"
    metrics = json.loads((run / "metrics" / "00_first.json").read_text())
    assert metrics["metrics"]["profile"] == "cpu"  # PROFILE was injected into the parameters cell


def test_a_course_error_shows_as_one_sentence_in_the_notebook(course_folder, tmp_path):
    course.run_course("cpu", only=["01"], folder=course_folder)
    executed = nbformat.read(tmp_path / "outputs" / "cpu" / "executed" / "01_second.ipynb", as_version=4)
    [error] = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs
               if o.output_type == "error"]
    assert error.traceback == ["CourseError: Run 00_first.ipynb first."]


def test_main_exits_non_zero_naming_notebook_and_cell(course_folder, monkeypatch, capsys):
    monkeypatch.setattr(course, "ROOT", course_folder)
    assert course.main(["run", "--profile", "cpu", "--only", "00,01"]) == 1
    captured = capsys.readouterr()
    assert "01_second.ipynb failed in cell In [4]: CourseError: Run 00_first.ipynb first." in captured.err
    assert "00_first" in captured.out and "answer=42" in captured.out


def test_main_rejects_an_unknown_profile_in_one_line(capsys):
    assert course.main(["run", "--profile", "a100"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: Unknown profile 'a100'")


def test_summary_table_lists_every_notebook():
    table = course.format_summary([course.Result("00_env_setup", "ok", 12.34, "tok_s=15"),
                                   course.Result("01_eval_data", "not run")])
    lines = table.splitlines()
    assert lines[0].split() == ["notebook", "status", "seconds", "key", "metric"]
    assert "12.3" in lines[2] and "tok_s=15" in lines[2]
    assert lines[3].split() == ["01_eval_data", "not", "run"]


def test_the_readme_layout_names_every_room_of_helpers():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rooms = {p.stem for p in (ROOT / "helpers").glob("*.py") if p.stem != "__init__"}
    rooms |= {p.name for p in (ROOT / "helpers").iterdir() if (p / "__init__.py").is_file()}
    unnamed = sorted(room for room in rooms if not re.search(rf"\b{room}\b", layout))
    assert not unnamed, f"README's Layout does not name helpers/{unnamed}"
