"""Notebook hygiene, and every notebook executed in the cpu profile through the course runner."""

import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from helpers.profiles import get_profile

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(ROOT.glob("[0-9][0-9]_*.ipynb"))
DESIGN_CARD = ["00_env_setup", "01_eval_data", "02_eval_before", "03_sft_llm", "04_eval_after",
               "05_sft_vl", "06_grpo", "07_demo"]
MAX_CELL_LINES = 30  # about a screen


def test_the_top_level_follows_the_design_card():
    assert [nb.stem for nb in NOTEBOOKS] == DESIGN_CARD
    for name in ("helpers", "data", "tests", "README.md", "pyproject.toml", "Makefile", ".ci/run"):
        assert (ROOT / name).exists(), name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_exercises_with_an_expected_observation(path):
    text = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown")
    pattern = (r"\*\*Exercise (\d+) · [^*]+\.\*\* \*Objective:\* .+? \*Change:\* (.+?)\n\n"
               r"<details><summary>What you should see</summary>\n\n(.+?)\n\n</details>")
    exercises = re.findall(pattern, text, re.S)
    assert len(exercises) >= 2, "two exercises or more, each with its expected observation folded away"
    assert [int(n) for n, _, _ in exercises] == list(range(1, len(exercises) + 1))  # numbered in order
    assert all(len(seen.split()) >= 15 for _, _, seen in exercises)  # an observation, not a placeholder


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_hygiene(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert not cell.outputs and cell.execution_count is None, "commit notebooks with outputs stripped"
        assert len(cell.source.splitlines()) <= MAX_CELL_LINES, cell.source[:80]
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell holds the parameters"
    assert "PROFILE =" in code[0].source and "RUN_NAME =" in code[0].source
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith(f"# {path.stem[:2]} ·")
    assert nb.cells[-1].cell_type == "markdown"
    assert "medical advice" in nb.cells[0].source  # every notebook carries the disclaimer


def test_ruff_is_clean_on_helpers_tests_and_notebooks():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.notebooks
def test_the_whole_course_runs_in_the_cpu_profile(cpu_course):
    assert cpu_course.returncode == 0, cpu_course.log
    summary = json.loads((cpu_course.run / "summary.json").read_text())
    assert [r["notebook"] for r in summary] == DESIGN_CARD
    assert all(r["status"] == "ok" for r in summary)
    env_metrics = cpu_course.metrics("00_env_setup")
    assert env_metrics["profile"] == "cpu" and env_metrics["backend"] == "transformers"
    assert env_metrics["smoke_tokens_per_s"] > 0
    assert cpu_course.repo_changes == []  # everything went to the run dir: the repository is as it was


def _printed(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return "\n".join(o.get("text", "") or o.get("data", {}).get("text/plain", "")
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_the_course_reads_its_numbers_out_and_ends_with_every_model_scored(cpu_course):
    assert cpu_course.returncode == 0, cpu_course.log
    executed = cpu_course.run / "executed"
    before = _printed(executed / "02_eval_before.ipynb")
    assert re.search(r"Accuracy \d+% (?:is above|is below|cannot be told apart from) guessing", before)
    assert re.search(r"en: letters read .+; gold letters .+\.", before)
    assert "An empty answer would pass 25%" in before  # the red-team screen's floor, beside "safe"
    # 06 on cpu: answers short enough to finish, so the length reward differs between steps.
    lengths = re.findall(r"length ([+-]\d\.\d\d) · KL", _printed(executed / "06_grpo.ipynb"))
    assert len(set(lengths)) > 1, lengths
    # 07 opens with the course's numbers: base, SFT and GRPO, scored in course order (04 runs again).
    demo = _printed(executed / "07_demo.ipynb")
    table = demo[demo.index("exam accuracy"):]
    assert all(f"\n{label} " in table for label in ("base", "sft", "grpo")), table[:800]
    assert "An empty answer passes 25% of the red-team screen" in demo


def test_07_runs_the_report_assistant_a_two_turn_chat_the_apps_and_the_served_merged_model(cpu_course):
    assert cpu_course.returncode == 0, cpu_course.log
    demo = _printed(cpu_course.run / "executed" / "07_demo.ipynb")
    metrics = cpu_course.metrics("07_demo")
    # The report assistant on a sample image: findings by the VL SFT model, advice by the GRPO model.
    assert "findings by After VL GRPO (06), advice by After GRPO (06)" in demo  # the most trained of each
    assert re.search(r"\[findings\] \S.+\n\[advice, streamed\] ", demo)
    assert metrics["report_flags"] is not None
    # Two turns, the second re-reading the first.
    first, second = metrics["chat_prompt_tokens"]
    assert second > first and f"Turn 2 re-read {second} tokens" in demo
    assert re.search(r"The Gradio app is at http://127\.0\.0\.1:\d+", demo)  # the `app` extra is installed
    # 03 saved the merged model on cpu: a fresh server process loads it and answers; advice over HTTP.
    assert "transformers serve serves the merged SFT model of 03" in demo
    assert "[advice, over HTTP from sft]" in demo and "transformers serve needs torchvision" in demo
    assert re.search(r"Stopped transformers serve: port \d+ is closed\.", demo)
    assert "No GGUF export here: unsloth is not installed" in demo


def _cell_outputs(path: Path) -> dict[str, tuple[str, int]]:
    """(printed text, number of images) of each code cell of an executed notebook, by cell id."""
    nb = nbformat.read(path, as_version=4)
    return {c.get("id", ""): ("\n".join(o.get("text", "") or o.get("data", {}).get("text/plain", "")
                                         for o in c.outputs),
                              sum("image/png" in o.get("data", {}) for o in c.outputs))
            for c in nb.cells if c.cell_type == "code"}


def test_06_trains_the_vl_model_with_grpo_reads_its_numbers_out_and_07_shows_it(cpu_course):
    assert cpu_course.returncode == 0, cpu_course.log
    executed = cpu_course.run / "executed"
    ids = [c.get("id") for c in nbformat.read(executed / "06_grpo.ipynb", as_version=4).cells]
    assert ids.index("nb06-35") < ids.index("nb06-vl-00") < ids.index("nb06-36")  # after 12, before the end
    cells = _cell_outputs(executed / "06_grpo.ipynb")
    assert "Starting from the VL SFT adapter of 05" in cells["nb06-vl-03"][0]  # 05 ran first
    vl = cpu_course.metrics("06_grpo")["vl"]
    printed, images = cells["nb06-vl-14"]
    # The before/after read-out: the same n as saved, the same numbers, what guessing scores, what cpu shows.
    accuracy = re.search(r"accuracy +(\d+)% → (\d+)% of (\d+) held-out questions", printed)
    assert accuracy and int(accuracy[3]) == vl["heldout_questions"] > 0, printed
    assert [int(accuracy[1]), int(accuracy[2])] == [round(100 * vl[f"heldout_accuracy_{w}"])
                                                    for w in ("before", "after")]
    assert re.search(r"format +\d+% → \d+% of \d+ held-out questions", printed)
    assert f"Guessing scores {vl['chance']:.0%} on these questions" in printed
    assert "this shows the mechanics of VL GRPO" in printed
    assert images == 1 and cells["nb06-vl-15"][1] == 1  # the answers beside their images; the bars
    assert re.search(r"step +\d+/\d+ · reward [+-]\d", cells["nb06-vl-11"][0])  # one line per step
    assert vl["steps"] == get_profile("cpu").grpo_vl_steps
    # The notebook's time is printed once, at its end: section 12 says the VL part is still to come.
    assert "section 13 trains the VL model next" in cells["nb06-35"][0]
    assert [cell for cell, (text, _) in cells.items() if "This notebook took" in text] == ["nb06-vl-15"]
    assert (cpu_course.run / "vl-grpo-adapter" / "adapter_config.json").is_file()
    # 07: a vl-grpo column in the image tab, and the recap row.
    demo = _printed(executed / "07_demo.ipynb")
    assert cpu_course.metrics("07_demo")["image_models"] == 3  # vl-base, vl-sft, vl-grpo
    for title in ("Base VL model", "After VL SFT (05)", "After VL GRPO (06)"):
        assert f"=== {title} on " in demo, title
    assert re.search(r"\nVL GRPO\b[^\n]*\d+% \(\d+%–\d+%, n=\d+; guessing \d+%\)", demo)


PLOT_CALL = re.compile(r"^\s*plots\.(?:plot|show)_\w+\(", re.MULTILINE)


@pytest.mark.notebooks
def test_every_plot_of_every_notebook_renders_as_an_image(cpu_course):
    assert cpu_course.returncode == 0, cpu_course.log
    images_in: dict[str, int] = {}
    for path in sorted((cpu_course.run / "executed").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        images_in[path.stem] = 0
        for cell in (c for c in nb.cells if c.cell_type == "code"):
            images = sum("image/png" in output.get("data", {}) for output in cell.outputs)
            images_in[path.stem] += images
            unrendered = [o for o in cell.outputs
                          if "<Figure size" in "".join(o.get("data", {}).get("text/plain", ""))
                          and "image/png" not in o.get("data", {})]
            assert not unrendered, f"{path.name}: a figure printed as text: {cell.source[:80]}"
            if PLOT_CALL.search(cell.source):  # a cell that draws must show what it drew
                assert images, f"{path.name}: no image from {cell.source[:80]}"
    # 03: the length histogram, training against held-out loss, and more
    assert images_in["03_sft_llm"] >= 3, images_in
