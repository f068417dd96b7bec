"""Checkable facts of radiology reports (helpers.report_facts), on captions as the real sets write them."""

import pytest

from helpers import report_facts as facts
from helpers.report_facts import Question


@pytest.mark.parametrize("caption, cuis, expected", [
    ("Axial contrast-enhanced CT of the thorax, cropped around the spine and shown in a soft-tissue window.",
     [], "CT"),
    ("Oblique coronal T1-weighted MR image of the shoulder. No focal marrow lesion is seen.", [], "MRI"),
    ("Posteroanterior chest radiograph of an adult. Multiple round, well-defined nodular opacities.", [],
     "X-ray"),
    ("Adult transthoracic echocardiogram, a greyscale frame with an on-screen measurement.", [],
     "ultrasound"),
    ("Whole-body bone scan (anterior and posterior views) showing increased uptake in the spine.", [],
     "nuclear medicine"),
    ("胸部CT平扫示双肺多发结节，最大者位于右肺上叶。", [], "CT"),
    ("腰椎MRI矢状位T2加权像：L4/5椎间盘突出。", [], "MRI"),
    ("右胫骨正位X线片，未见明显骨折。", [], "X-ray"),
    ("腹部彩超示胆囊结石。", [], "ultrasound"),
    ("Comparison of the CT and the MRI of the brain of the same patient.", [], None),  # two: no one answer
    ("The patient acted as her own control; petechiae on the skin.", [], None),  # "ct", "pet" inside words
    ("Figure 2: follow-up image, six months later.", ["C0040405", "C0817096"], "CT"),  # the concept decides
    ("It is not an MRI but a plain radiograph of the knee.", [], "X-ray"),
])
def test_the_modality_comes_from_the_concepts_or_the_words(caption, cuis, expected):
    assert facts.modality(caption, cuis) == expected


@pytest.mark.parametrize("caption, finding, expected", [
    ("There is no fracture.", "fracture", False),
    ("No fracture or dislocation is seen.", "fracture", False),
    ("A displaced fracture of the distal radius, with dorsal angulation.", "fracture", True),
    ("A fracture line is not seen; the cortex is intact.", "fracture", False),
    ("The fracture is not displaced.", "fracture", True),  # "not" about displacement, not the fracture
    ("A lobulated lucent lesion in the distal tibial metaphysis. There is no fracture.", "mass", True),
    ("No focal marrow lesion is seen.", "mass", False),
    ("Small left pleural effusion; no pneumothorax.", "effusion", True),
    ("Small left pleural effusion; no pneumothorax.", "pneumothorax", False),
    ("右胫骨正位X线片，未见明显骨折。", "fracture", False),
    ("左侧胫骨中段骨折，断端轻度移位。", "fracture", True),
    ("双肺多发结节，无胸腔积液。", "effusion", False),
    ("双肺多发结节，无胸腔积液。", "nodule", True),
    ("Axial CT of the head in a bone window.", "fracture", None),  # not stated: no question
    ("A fracture of the left radius; no fracture on the right.", "fracture", None),  # both: no one answer
])
def test_a_finding_is_present_absent_or_not_stated(caption, finding, expected):
    assert facts.finding_status(caption, finding) is expected


def test_the_questions_are_those_the_caption_answers():
    caption = ("Anteroposterior radiograph of the right distal tibia, fibula and ankle. A well-defined, "
               "lobulated lucent lesion with a thin sclerotic rim lies eccentrically in the distal tibial "
               "metaphysis, in keeping with a non-ossifying fibroma. There is no fracture.")
    asked = {q.kind: q.answer for q in facts.closed_questions(caption, ["C1306645"])}
    assert asked == {"modality": "X-ray", "fracture": "no", "mass": "yes"}
    asked_zh = facts.closed_questions("右胫骨正位X线片，未见明显骨折。", language="zh")
    [zh] = [q for q in asked_zh if q.kind == "fracture"]
    assert "骨折" in zh.question and zh.answer == "no"
    assert facts.closed_questions("Figure 3.", []) == []


@pytest.mark.parametrize("answer, expected", [
    ("CT", True), ("This is a computed tomography scan of the chest.", True), ("这是一张CT图像。", True),
    ("It is not an MRI; it is a CT.", True),
    ("It could be CT or MRI.", False),  # two modalities named: no credit for hedging
    ("MRI", False), ("I cannot tell.", False), ("", False),
])
def test_a_modality_answer_must_name_the_right_one_alone(answer, expected):
    assert facts.is_correct(answer, Question("modality", "Which modality?", "CT")) is expected


@pytest.mark.parametrize("answer, gold, expected", [
    ("No.", "no", True), ("No, the cortex is intact.", "no", True),
    ("Yes, a displaced fracture.", "yes", True),
    ("无", "no", True), ("没有骨折。", "no", True), ("有，胫骨骨折。", "yes", True), ("未见骨折", "no", True),
    ("Yes.", "no", False), ("Nothing obvious, but maybe.", "no", False), ("None seen.", "no", True),
    ("The image shows no fracture.", "no", False),  # the answer comes first, as the question asks
])
def test_a_yes_no_answer_is_read_from_its_first_word(answer, gold, expected):
    assert facts.is_correct(answer, Question("fracture", "Is there a fracture?", gold)) is expected


def test_the_words_agree_with_the_concepts_on_every_sample_caption():
    import json

    from helpers.datasets import VL_OFFLINE_DIR

    rows = [json.loads(line) for name in ("train.jsonl", "test.jsonl")
            for line in (VL_OFFLINE_DIR / name).read_text().splitlines() if line.strip()]
    checked = [(r["caption"][:60], facts.modality(r["caption"]), facts.MODALITY_CUIS[r["cui"][0]])
               for r in rows if r.get("cui") and r["cui"][0] in facts.MODALITY_CUIS]
    assert len(checked) >= 12
    assert [c for c in checked if c[1] != c[2]] == []
