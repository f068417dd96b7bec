import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import CourseError
from helpers.data_files import read_records
from helpers.datasets import (
    MCQItem,
    OpenItem,
    chance_accuracy,
    clean_eval_rows,
    deidentify,
    detect_language,
    load_eval_set,
    load_eval_sets,
    mcq_prompt,
    open_prompt,
    read_eval_source,
    sample_balanced,
    save_items,
)

CMB_ROW = {"exam_type": "医师考试", "exam_class": "规培结业", "exam_subject": "内科",
           "question": "2型糖尿病首选的口服降糖药是", "answer": "B", "question_type": "单项选择题",
           "option": {"A": "胰岛素", "B": "二甲双胍", "C": "格列本脲", "D": "阿卡波糖", "E": ""},
           "explanation": "二甲双胍为一线用药。"}
MEDQA_ROW = {"question": "Which drug is first line for type 2 diabetes?", "answer": "Metformin",
             "options": {"A": "Insulin", "B": "Metformin", "C": "Glyburide", "D": "Acarbose"},
             "meta_info": "step1", "answer_idx": "B", "metamap_phrases": ["type 2 diabetes"]}
CLIN_ROW = {"id": "7", "title": "案例分析-糖尿病", "description": "患者，男，50岁，多饮多尿1月。",
            "QA_pairs": [{"question": "诊断是什么？", "answer": "2型糖尿病。"},
                         {"question": "如何治疗？", "solution": "生活方式干预加二甲双胍。"}]}


def with_(row, **changes):
    return {**json.loads(json.dumps(row)), **changes}


def test_the_offline_samples_meet_the_course_counts():
    exam, exam_report = load_eval_set("cmb-exam", offline=True)
    medqa, _ = load_eval_set("medqa", offline=True)
    cases, case_report = load_eval_set("cmb-clin", offline=True)
    mcq = exam + medqa
    assert len(mcq) >= 80
    by_language = Counter(i.language for i in mcq)
    assert abs(by_language["zh"] - by_language["en"]) <= 0.1 * len(mcq)  # half Chinese, half English
    assert len({i.subject for i in exam}) >= 5 and len({i.subject for i in medqa}) >= 2
    assert len({i.case_id for i in cases}) >= 15 and case_report.read >= 15
    assert {i.language for i in cases} == {"zh", "en"}
    assert exam_report.skipped == {"multiple answers": 3}  # the sample's 3 multi-answer items
    assert all(i.answer in i.options for i in mcq)


def test_each_schema_maps_to_the_internal_form():
    [exam], _ = clean_eval_rows("cmb-exam", [CMB_ROW])
    assert exam == MCQItem("cmb-exam-0", "cmb-exam", "zh", "医师考试/规培结业", "内科", CMB_ROW["question"],
                           {"A": "胰岛素", "B": "二甲双胍", "C": "格列本脲", "D": "阿卡波糖"}, "B",
                           "二甲双胍为一线用药。")  # the empty option E is dropped
    [medqa], _ = clean_eval_rows("medqa", [MEDQA_ROW])
    assert (medqa.language, medqa.subject, medqa.answer, medqa.exam) == ("en", "USMLE step1", "B", "USMLE")
    cases, report = clean_eval_rows("cmb-clin", [CLIN_ROW])
    assert [c.id for c in cases] == ["cmb-clin-7-0", "cmb-clin-7-1"] and report.read == 1
    assert cases[1].reference == "生活方式干预加二甲双胍。"  # the older "solution" key is read too
    assert isinstance(cases[0], OpenItem) and cases[0].language == "zh"


def test_cleaning_counts_every_bad_row_and_keeps_the_good_ones():
    rows = [
        CMB_ROW,
        with_(CMB_ROW),  # duplicate
        with_(CMB_ROW, question=" "),  # empty
        with_(CMB_ROW, question="另一题", answer="E"),  # E's text is empty: answer not in options
        with_(CMB_ROW, question="多选题", answer="AB"),  # multiple answers
        with_(CMB_ROW, question="很长" * 3000),  # overlong
        with_(CMB_ROW, question="坏选项", option=["A", "B"]),  # malformed options
        "not a record", None, 42,  # malformed rows
    ]
    items, report = clean_eval_rows("cmb-exam", rows, max_chars=2000)
    assert [i.question for i in items] == [CMB_ROW["question"]]
    assert report.read == 10 and report.kept == 1
    assert report.skipped == {"duplicate": 1, "empty": 1, "answer not in options": 1, "multiple answers": 1,
                              "overlong": 1, "malformed": 4}
    assert set(report.examples) == set(report.skipped)
    row = report.eval_row()
    assert row["items kept"] == 1 and row["skipped: malformed"] == 4 and row["masked: phone"] == 0


def test_medqa_answer_text_must_match_its_key():
    rows = [with_(MEDQA_ROW, answer="Insulin"), with_(MEDQA_ROW, answer_idx="E")]
    items, report = clean_eval_rows("medqa", rows)
    assert items == [] and report.skipped == {"answer not in options": 2}


def test_clinical_cases_skip_bad_cases_and_duplicate_questions():
    rows = [CLIN_ROW, CLIN_ROW, with_(CLIN_ROW, id="8", QA_pairs="none"),
            with_(CLIN_ROW, id="9", description=""), with_(CLIN_ROW, id="10", QA_pairs=[{"question": "?"}])]
    items, report = clean_eval_rows("cmb-clin", rows)
    assert len(items) == 2
    assert report.skipped == {"duplicate": 2, "malformed": 1, "empty": 2}


def test_a_broken_jsonl_line_is_counted_not_fatal(tmp_path):
    path = tmp_path / "medqa.jsonl"
    path.write_text(json.dumps(MEDQA_ROW) + "\n{broken\n\n", encoding="utf-8")
    items, report = clean_eval_rows("medqa", read_records(path))
    assert len(items) == 1 and report.skipped == {"malformed": 1}


def test_a_broken_json_file_is_one_sentence(tmp_path):
    path = tmp_path / "cmb.json"
    path.write_text("[{", encoding="utf-8")
    with pytest.raises(CourseError, match="is not valid JSON"):
        read_records(path)
    path.write_text(json.dumps({"data": [CMB_ROW]}), encoding="utf-8")
    assert read_records(path) == [CMB_ROW]


def test_identifiers_are_masked_and_counted():
    text = ("患者张某，电话 138-1234-5678，身份证号11010119900307123X，出生日期：1990年3月7日，"
            "邮箱 zhang.san@example.com。Call (555) 123-4567 or +86 13912345678; DOB: 03/07/1990.")
    masked, counts = deidentify(text)
    assert counts == {"phone": 3, "id card": 1, "date of birth": 2, "email": 1}
    secrets = ("1234-5678", "11010119900307123X", "1990年3月7日", "example.com", "123-4567", "03/07/1990")
    for secret in secrets:
        assert secret not in masked
    assert "出生日期：[DOB]" in masked and "[EMAIL]" in masked


@pytest.mark.parametrize("clinical", [
    "BP 146/88mmHg, P 98次/分，血糖6.2mmol/L，2小时前发病，2023年5月1日就诊。",
    "Temperature 38.1°C, WBC 12.3 × 10^9/L, onset on 2024-03-05, aged 61, INR 2.5, 120 mg daily.",
    "拨打120急救；hs-cTnT 0.52 ng/mL；ID of the study: 12345.",
])
def test_clinical_numbers_are_not_masked(clinical):
    assert deidentify(clinical) == (clinical, Counter())


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_deidentify_never_raises_and_is_idempotent(text):
    once, _ = deidentify(text)
    twice, counts = deidentify(once)
    assert twice == once and not counts


def test_language_detection():
    assert detect_language("患者男性，50岁") == "zh" and detect_language("A 50-year-old man") == "en"
    assert detect_language("") == "en" and detect_language("ECG 示 ST 段抬高") == "zh"


def test_sampling_is_balanced_and_repeatable():
    exam, _ = load_eval_set("cmb-exam", offline=True)
    medqa, _ = load_eval_set("medqa", offline=True)
    first = sample_balanced(exam + medqa, 16, seed=7)
    assert [i.id for i in first] == [i.id for i in sample_balanced(medqa + exam, 16, seed=7)]
    assert Counter(i.language for i in first) == {"zh": 8, "en": 8}
    assert [i.id for i in sample_balanced(exam + medqa, 16, seed=8)] != [i.id for i in first]
    assert len(sample_balanced(medqa[:3], 10)) == 3  # asking for more than there is gives all


def test_eval_sets_round_trip_and_name_the_notebook_when_missing(tmp_path):
    with pytest.raises(CourseError, match="run 01_eval_data.ipynb first"):
        load_eval_sets(tmp_path)
    [exam], _ = clean_eval_rows("cmb-exam", [CMB_ROW])
    cases, _ = clean_eval_rows("cmb-clin", [CLIN_ROW])
    save_items([exam], tmp_path / "eval" / "mcq.jsonl")
    save_items(cases, tmp_path / "eval" / "open.jsonl")
    assert load_eval_sets(tmp_path) == ([exam], cases)
    assert "二甲双胍" in (tmp_path / "eval" / "mcq.jsonl").read_text(encoding="utf-8")  # readable Chinese


def test_a_local_folder_in_the_hub_layout_is_read(tmp_path):
    folder = tmp_path / "CMB" / "CMB-Exam" / "CMB-val"
    folder.mkdir(parents=True)
    (folder / "CMB-val-merge.json").write_text(json.dumps([CMB_ROW] * 2), encoding="utf-8")
    rows, origin = read_eval_source("cmb-exam", str(tmp_path / "CMB"))
    val = "CMB-Exam/CMB-val/CMB-val-merge.json"
    assert len(rows) == 2 and origin == f"local folder {tmp_path / 'CMB'}: {val}"
    with pytest.raises(CourseError, match=f"No file like CMB-Clin.*it holds {val}"):
        read_eval_source("cmb-clin", str(tmp_path / "CMB"))  # a folder with only CMB-Exam: one sentence
    with pytest.raises(CourseError, match="Unknown evaluation set"):
        read_eval_source("pubmedqa", offline=True)
    with pytest.raises(CourseError, match="No file or folder at"):
        read_eval_source("medqa", str(tmp_path / "missing" / "medqa.jsonl"))


def test_the_cmb_github_layout_and_single_files_are_read(tmp_path):
    # The CMB GitHub repository: cases as Data/CME-test-qa/CMB-test-qa.json, exam answers apart from the
    # questions (CMB-test-choice-answer.json, by id), the questions as on the hub.
    repo = tmp_path / "CMB"
    (repo / "Data" / "CME-test-qa").mkdir(parents=True)
    (repo / "Data" / "CME-test-qa" / "CMB-test-qa.json").write_text(json.dumps([CLIN_ROW]), encoding="utf-8")
    cases, origin = read_eval_source("cmb-clin", str(repo))
    assert cases == [CLIN_ROW] and origin.endswith("Data/CME-test-qa/CMB-test-qa.json")
    (repo / "data").mkdir()
    question = {k: v for k, v in CMB_ROW.items() if k != "answer"} | {"id": 3}
    (repo / "data" / "CMB-test-choice-question-merge.json").write_text(json.dumps([question]),
                                                                     encoding="utf-8")
    (repo / "data" / "CMB-test-choice-answer.json").write_text(
        json.dumps([{"id": 3, "exam_type": "医师考试", "question_type": "单项选择题", "answer": "B"}]),
        encoding="utf-8")
    rows, _ = read_eval_source("cmb-exam", str(repo))
    [item], report = clean_eval_rows("cmb-exam", rows)
    assert item.answer == "B" and item.options["B"] == "二甲双胍" and report.kept == 1
    # one file of any of the four formats, Chinese-only or English-only
    (tmp_path / "medqa.csv").write_text("question,answer,answer_idx,meta_info\nWhich?,x,A,step1\n")
    rows, origin = read_eval_source("medqa", str(tmp_path / "medqa.csv"))
    assert rows[0]["answer_idx"] == "A" and origin == f"local file {tmp_path / 'medqa.csv'}"


def test_prompts_carry_the_instruction_stem_and_every_option():
    [exam], _ = clean_eval_rows("cmb-exam", [CMB_ROW])
    [medqa], _ = clean_eval_rows("medqa", [MEDQA_ROW])
    zh, en = mcq_prompt(exam), mcq_prompt(medqa)
    assert "答案：X" in zh and "B. 二甲双胍" in zh and exam.question in zh
    assert "Answer: X" in en and "D. Acarbose" in en
    cases, _ = clean_eval_rows("cmb-clin", [CLIN_ROW])
    prompt = open_prompt(cases[0])
    assert prompt.endswith("问题：诊断是什么？") and CLIN_ROW["description"] in prompt
    assert chance_accuracy([exam, medqa]) == pytest.approx((1 / 4 + 1 / 4) / 2)
