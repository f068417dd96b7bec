"""03, 05 and 06 read a local folder of rows in the real datasets' schemas, and say so.

The rows are written the way the real sets are: medical-o1-reasoning-SFT reasoning of several hundred
tokens (longer than the cpu profile's 512-token cap), verifiable-problem golds with commas and
semicolons, and Radiology_mini rows whose image column is a path relative to the file.
"""

import json
import shutil
from pathlib import Path

import nbformat
import pytest

from helpers.course import parse_knobs, run_course
from helpers.datasets import DATA_DIR

ROOT = Path(__file__).resolve().parent.parent

FINDINGS = ("The patient reports crushing central chest pain radiating to the left arm for two hours. "
            "Vital signs show tachycardia and mild hypotension, which suggests reduced cardiac output. "
            "The electrocardiogram shows ST elevation in leads II, III and aVF, an inferior wall pattern. "
            "Troponin is raised, so myocardial injury is present rather than stable angina. "
            "An aortic dissection could also cause chest pain, but the pulses are equal in both arms. "
            "Pericarditis gives diffuse ST elevation with PR depression, which is not seen here. ")


def medical_o1_row(i: int) -> dict:
    """A medical-o1-reasoning-SFT row: a long worked reasoning (about 700 tokens) and a paragraph answer."""
    return {"Question": f"Case {i}: a 58-year-old man has two hours of crushing chest pain and ST elevation "
                        f"in II, III and aVF. What is the most likely diagnosis, and what comes next?",
            "Complex_CoT": (FINDINGS * 6) + "So the most likely diagnosis is an inferior STEMI.",
            "Response": "The most likely diagnosis is an acute inferior ST-elevation myocardial infarction, "
                        "given the ECG changes and the raised troponin. Arrange urgent reperfusion."}


GOLDS = ["Ischemic heart disease; Aortic aneurysm", "Membranous GN, subepithelial deposits",
         "Vitamin B12 deficiency", "Iron deficiency anemia, due to chronic blood loss", "Naloxone",
         "Acute inferior STEMI", "Thiamine", "Sarcoidosis"]


def write_real_folder(folder: Path) -> dict[str, Path]:
    """One folder per notebook, each in its real dataset's schema and file names."""
    sft, grpo, vl = folder / "medical-o1-reasoning-SFT", folder / "verifiable", folder / "radiology"
    for path in (sft, grpo, vl / "images"):
        path.mkdir(parents=True)
    (sft / "medical_o1_sft.json").write_text(json.dumps([medical_o1_row(i) for i in range(10)]), "utf-8")
    problems = [{"Open-ended Verifiable Question": f"Question {i}: which diagnosis fits this patient?",
                 "Ground-True Answer": gold} for i, gold in enumerate(GOLDS)]
    (grpo / "medical_o1_verifiable_problem.json").write_text(json.dumps(problems), "utf-8")
    for split, lines in (("train", 6), ("test", 3)):
        rows = [json.loads(line) for line in (DATA_DIR / "vl" / f"{split}.jsonl").read_text().splitlines()]
        for row in rows[:lines]:
            shutil.copy(DATA_DIR / "vl" / row["image"], vl / "images")
        (vl / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:lines]), "utf-8")
    return {"sft": sft, "grpo": grpo / "medical_o1_verifiable_problem.json", "vl": vl}


def outputs(notebook: Path) -> str:
    """Everything the executed notebook printed or displayed as text."""
    nb = nbformat.read(notebook, as_version=4)
    return "\n".join(o.get("text", "") or o.get("data", {}).get("text/plain", "")
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_parse_knobs_reads_literals_and_refuses_a_bad_setting():
    assert parse_knobs(["STEPS=3", "DATA=~/x", 'SOURCES={"medqa": "a.jsonl"}']) == {
        "STEPS": 3, "DATA": "~/x", "SOURCES": {"medqa": "a.jsonl"}}
    from helpers.errors import CourseError

    with pytest.raises(CourseError, match="write KNOB=VALUE"):
        parse_knobs(["STEPS"])


def test_03_05_06_train_on_a_local_folder_in_the_real_schemas(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_OUTPUTS", str(tmp_path / "outputs"))
    paths = write_real_folder(tmp_path / "data")
    small = {"STEPS": 2, "EXAMPLES": 4, "HELD_OUT": 2}
    runs = [("03", {**small, "SOURCES": {"medical-o1-reasoning-SFT": str(paths["sft"])},
                    "CHECK_MAX_NEW_TOKENS": 16, "BATCH_SIZE": 2, "EVAL_EVERY": 2}),
            ("05", {**small, "DATA": str(paths["vl"])}),
            ("06", {"STEPS": 2, "PROMPTS": 4, "CHECK_PROMPTS": 2,
                    "SOURCES": {"medical-o1-verifiable-problem": str(paths["grpo"])}})]
    for number, knobs in runs:
        [result] = run_course("cpu", [number], "local", folder=ROOT, knobs=knobs)
        assert result.status == "ok", result.error
    executed = tmp_path / "outputs" / "local" / "executed"
    sft = outputs(executed / "03_sft_llm.ipynb")
    assert f"medical-o1-reasoning-SFT: local folder {paths['sft']}" in sft
    assert "4 had their reasoning cut at a sentence end (answer kept), 0 dropped" in sft  # none lost
    assert f"from local folder {paths['vl']}" in outputs(executed / "05_sft_vl.ipynb")
    assert f"local file {paths['grpo']}" in outputs(executed / "06_grpo.ipynb")
