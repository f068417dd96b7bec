import json

import pytest

from helpers import CourseError
from helpers import datasets as ds
from helpers.datasets import Skip, grpo_item_from_exam, load_grpo_items, map_verifiable_problem

CMB_ROW = {"exam_type": "医师考试", "exam_class": "执业医师", "exam_subject": "内科",
           "question": "首选药物是", "answer": "B", "question_type": "单项选择题",
           "option": {"A": "胰岛素", "B": "二甲双胍", "C": "阿司匹林", "D": "", "E": ""}, "explanation": ""}
MEDQA_ROW = {"question": "Which drug reverses opioid overdose?", "answer": "Naloxone",
             "options": {"A": "Flumazenil", "B": "Naloxone", "C": "Atropine", "D": "Glucagon"},
             "meta_info": "step1", "answer_idx": "B", "metamap_phrases": []}


def test_a_verifiable_problem_keeps_question_and_gold_answer():
    item = map_verifiable_problem({"Open-ended Verifiable Question": " Which antidote? ",
                                   "Ground-True Answer": "N-acetylcysteine"})
    assert (item.question, item.answer) == ("Which antidote?", "N-acetylcysteine")
    assert item.choices == "" and item.language == "en"
    assert map_verifiable_problem({"Open-ended Verifiable Question": "首选药物？",
                                   "Ground-True Answer": "肾上腺素"}).language == "zh"


@pytest.mark.parametrize("row, reason", [
    ({"Open-ended Verifiable Question": "Q?", "Ground-True Answer": ""}, "empty"),
    ({"Open-ended Verifiable Question": "Q?"}, "empty"),
    ({"Open-ended Verifiable Question": ["Q?"], "Ground-True Answer": "A"}, "malformed"),
    (None, "malformed"),
])
def test_unusable_verifiable_rows_say_why(row, reason):
    with pytest.raises(Skip, match=reason):
        map_verifiable_problem(row)


def test_exam_questions_of_both_schemas_become_lettered_prompts_as_in_evaluation():
    cmb = grpo_item_from_exam(ds.map_cmb_exam(CMB_ROW, 0))
    assert cmb.answer == "B" and cmb.choices == "ABC" and cmb.language == "zh"  # empty options dropped
    header, request = ds.MCQ_INSTRUCTIONS["zh"]  # the instruction 02 and 04 use, before and after
    assert cmb.question == f"{header}\n\n首选药物是\nA. 胰岛素\nB. 二甲双胍\nC. 阿司匹林\n\n{request}"
    medqa = grpo_item_from_exam(ds.map_medqa(MEDQA_ROW, 0))
    assert medqa.answer == "B" and medqa.choices == "ABCD" and "\nB. Naloxone\n" in medqa.question


@pytest.mark.parametrize("change, reason", [
    ({"answer": "ABE"}, "multiple answers"),
    ({"answer": "D"}, "answer not in options"),  # D is empty in this row
    ({"answer": ""}, "empty"),
    ({"option": "A. x B. y"}, "malformed"),
    ({"question": None}, "empty"),
])
def test_unusable_exam_rows_are_counted_with_their_reason(change, reason, tmp_path, monkeypatch):
    path = tmp_path / "exam.json"
    broken = {**CMB_ROW, **change, "question": change.get("question", "另一题")}
    path.write_text(json.dumps([CMB_ROW, broken]))
    source = ds.Source("cmb-exam", "mcq", "x/y", ("*",), str(path))
    monkeypatch.setitem(ds.GRPO_SOURCES, "cmb-exam", source)
    items, [report] = load_grpo_items(["cmb-exam"], 10, offline=True, held_out=set())
    assert len(items) == 1 and report[f"skipped: {reason}"] == 1 and report["read"] == 2


def test_the_offline_samples_load_in_turn_from_every_source():
    items, report = load_grpo_items(list(ds.GRPO_SOURCES), 12, offline=True, held_out=set())
    assert [i.source for i in items[:3]] == list(ds.GRPO_SOURCES)  # one from each source in turn
    assert len(items) == 12 and len({i.question for i in items}) == 12
    rows = {r["source"]: r for r in report}
    assert rows["cmb-exam"]["skipped: multiple answers"] == 3  # the sample's three multi-answer items
    open_rows = rows["medical-o1-verifiable-problem"]
    assert open_rows["read"] == open_rows["usable"] == 70
    assert sum(r["used"] for r in report) == 12
    assert all(i.choices for i in items if i.source != "medical-o1-verifiable-problem")


def test_the_draw_is_seeded():
    first = load_grpo_items(["medical-o1-verifiable-problem"], 5, offline=True, seed=1)[0]
    again = load_grpo_items(["medical-o1-verifiable-problem"], 5, offline=True, seed=1)[0]
    other = load_grpo_items(["medical-o1-verifiable-problem"], 5, offline=True, seed=2)[0]
    assert first == again and first != other


def test_exam_samples_are_left_out_until_the_evaluation_set_exists():
    items, report = load_grpo_items(["medical-o1-verifiable-problem", "medqa"], 100, offline=True)
    assert {i.source for i in items} == {"medical-o1-verifiable-problem"}
    assert report[1]["skipped: evaluation sample, 01 has not run"] == 48 and report[1]["used"] == 0


def test_items_of_the_evaluation_set_are_never_trained_on(tmp_path):
    lines = (ds.DATA_DIR / "eval" / "medqa_4options.jsonl").read_text().splitlines()
    medqa = [json.loads(line) for line in lines]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "mcq.jsonl").write_text(
        "".join(json.dumps({"question": r["question"] + " "}) + "\n" for r in medqa[:10]))
    held_out = ds.evaluation_questions(tmp_path)
    assert len(held_out) == 10
    items, report = load_grpo_items(["medqa"], 100, offline=True, held_out=held_out)
    assert len(items) == 38 and report[0]["skipped: in the evaluation set"] == 10
    assert not any(r["question"] in i.question for r in medqa[:10] for i in items)
    assert ds.evaluation_questions(tmp_path / "nothing") is None


def test_duplicates_and_broken_lines_are_counted_not_fatal(tmp_path, monkeypatch):
    row = {"Open-ended Verifiable Question": "Which vitamin?", "Ground-True Answer": "Vitamin C"}
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps(row) + "\n{not json\n" + json.dumps({**row, "Open-ended Verifiable Question":
                                                                         "which  vitamin"}) + "\n")
    monkeypatch.setitem(ds.GRPO_SOURCES, "local", ds.Source("local", "open", "x/y", ("*",), str(path)))
    items, [report] = load_grpo_items(["local"], 10, offline=True)
    assert len(items) == 1
    assert report["skipped: malformed"] == 1 and report["skipped: duplicate"] == 1 and report["read"] == 3


def test_unknown_source_and_broken_json_are_one_sentence(tmp_path, monkeypatch):
    with pytest.raises(CourseError, match="Unknown GRPO source 'pubmedqa'"):
        load_grpo_items(["pubmedqa"], 4, offline=True)
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    monkeypatch.setitem(ds.GRPO_SOURCES, "bad", ds.Source("bad", "open", "x/y", ("*",), str(bad)))
    with pytest.raises(CourseError, match="is not valid JSON"):
        load_grpo_items(["bad"], 4, offline=True)


def test_a_local_file_in_the_real_schema_is_read_de_identified_with_its_option_texts(tmp_path):
    problems = [{"Open-ended Verifiable Question": "A 30-year-old (phone 13812345678) has a low MCV. Cause?",
                 "Ground-True Answer": "Iron deficiency anemia, due to chronic blood loss"},
                {"Open-ended Verifiable Question": "Renal biopsy: spikes on silver stain. Diagnosis?",
                 "Ground-True Answer": "Membranous GN, subepithelial deposits"}]
    path = tmp_path / "problems.json"
    path.write_text(json.dumps(problems), encoding="utf-8")
    medqa = tmp_path / "medqa_train.jsonl"
    medqa.write_text(json.dumps(MEDQA_ROW) + "\n", encoding="utf-8")
    items, report = load_grpo_items({"medical-o1-verifiable-problem": str(path), "medqa": str(tmp_path)}, 10,
                                    held_out=set())
    assert [r["origin"] for r in report] == [f"local file {path}",
                                             f"local folder {tmp_path}: medqa_train.jsonl"]
    by_source = {item.source: item for item in items}
    assert "[PHONE]" in items[0].question or "[PHONE]" in items[1].question
    assert {i.answer for i in items if i.source != "medqa"} == {p["Ground-True Answer"] for p in problems}
    assert by_source["medqa"].options == ("Flumazenil", "Naloxone", "Atropine", "Glucagon")
