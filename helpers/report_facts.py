"""Facts a radiology report states, and whether an answer claims them: checkable answers for VL rewards.

A vision-language model's free report cannot be graded by a rule, but some of what it says can: the
imaging modality (CT, MRI, X-ray, ultrasound, nuclear medicine) and whether a finding such as a
fracture is there or explicitly absent ("There is no fracture", "未见骨折"). The reference caption (or
its UMLS concepts, in ROCO-style sets such as Radiology_mini) gives the right answer; the rules here
read it, and read what a model's answer claims, in English and Chinese. A rule misses paraphrases:
a question is asked only when the caption states its answer plainly.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Spellings of each modality, English and Chinese (matched as whole words where they are Latin).
MODALITIES: dict[str, tuple[str, ...]] = {
    "CT": ("ct", "cta", "computed tomography", "cat scan", "计算机断层", "电子计算机断层"),
    "MRI": ("mri", "mr", "mra", "magnetic resonance", "t1-weighted", "t2-weighted", "flair", "磁共振",
            "核磁"),
    "X-ray": ("x-ray", "xray", "radiograph", "radiography", "plain film", "x线", "x光", "平片", "摄片"),
    "ultrasound": ("ultrasound", "ultrasonography", "sonography", "sonogram", "echocardiogram",
                   "echocardiography", "doppler", "超声", "彩超", "b超"),
    "nuclear medicine": ("scintigraphy", "bone scan", "pet", "spect", "nuclear medicine", "核素", "骨扫描",
                         "放射性核素"),
}
# ROCO's UMLS concepts for the modality (the first concept of a Radiology_mini row names it).
MODALITY_CUIS = {"C0040405": "CT", "C0024485": "MRI", "C1306645": "X-ray", "C0041618": "ultrasound",
                 "C0032743": "nuclear medicine", "C0034606": "nuclear medicine"}
# Findings a report states as present or absent; the answer to "Is there a …?" is yes or no.
FINDINGS: dict[str, tuple[str, ...]] = {
    "fracture": ("fracture", "骨折"),
    "effusion": ("effusion", "积液"),
    "mass": ("mass", "tumour", "tumor", "lesion", "占位", "肿块", "肿物", "病灶"),
    "nodule": ("nodule", "nodular", "结节"),
    "pneumothorax": ("pneumothorax", "气胸"),
}
# Cues that negate a finding named after them in the same clause, or after it ("… is not seen").
NEGATED_BEFORE = ("no", "not", "without", "absence of", "negative for", "free of", "nor", "未见", "无",
                  "没有", "未发现", "排除", "不伴")
NEGATED_AFTER = ("not seen", "not identified", "not visible", "not demonstrated", "is absent", "are absent",
                 "未见", "不明显")  # not "is not": "the fracture is not displaced" is a fracture
_CLAUSE_END = re.compile(r"[,.;:!?，。；：！？\n]|\bbut\b|\bhowever\b")


def _normal(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _pattern(spelling: str) -> re.Pattern:
    # Latin spellings are whole words ("ct" is not in "acted", "pet" not in "petechiae"); Chinese has no
    # spaces, and "CT" in "胸部CT平扫" is still a word.
    spelling = re.escape(spelling)
    return re.compile(rf"(?<![a-z]){spelling}s?(?![a-z])" if spelling.isascii() else spelling)


def _mentions(text: str, spellings: tuple[str, ...]) -> list[re.Match]:
    return [m for s in spellings for m in _pattern(s).finditer(text)]


def _negated(text: str, match: re.Match) -> bool:
    before = _CLAUSE_END.split(text[max(0, match.start() - 40):match.start()])[-1]
    after = _CLAUSE_END.split(text[match.end():match.end() + 40])[0]
    return (any(_pattern(cue).search(before) for cue in NEGATED_BEFORE)
            or any(_pattern(cue).search(after) for cue in NEGATED_AFTER))


def claimed(text: str, vocabulary: dict[str, tuple[str, ...]]) -> set[str]:
    """The entries of ``vocabulary`` that ``text`` names and does not negate ("not an MRI" names none)."""
    text = _normal(text)
    return {name for name, spellings in vocabulary.items()
            if any(not _negated(text, m) for m in _mentions(text, spellings))}


def modality(caption: str, cuis: list[str] | tuple[str, ...] = ()) -> str | None:
    """The imaging modality a report states: from its UMLS concepts when they name one, else from the
    caption's words; None when it names none, or more than one (a comparison of two studies)."""
    from_cuis = {MODALITY_CUIS[c] for c in cuis if c in MODALITY_CUIS}
    if len(from_cuis) == 1:
        return from_cuis.pop()
    named = claimed(caption, MODALITIES)
    return named.pop() if len(named) == 1 else None


def finding_status(caption: str, finding: str) -> bool | None:
    """True when the caption states the finding, False when it states its absence, None when it says
    neither or both (a fracture on one side and none on the other)."""
    text = _normal(caption)
    marks = {not _negated(text, m) for m in _mentions(text, FINDINGS[finding])}
    return marks.pop() if len(marks) == 1 else None


@dataclass(frozen=True)
class Question:
    """A closed question about an image whose answer the reference caption states."""

    kind: str  # "modality", or a finding of FINDINGS
    question: str
    answer: str  # a modality name, or "yes" / "no"


def closed_questions(caption: str, cuis: list[str] | tuple[str, ...] = (),
                     language: str = "en") -> list[Question]:
    """The closed questions this caption answers: its modality, and each finding it states or rules out."""
    asked = []
    if (named := modality(caption, cuis)) is not None:
        choices = ", ".join(MODALITIES)
        asked.append(Question("modality", f"Which imaging modality is this: {choices}? Answer in one word."
                              if language == "en" else f"这是哪种影像检查（{choices}）？请用一个词回答。",
                              named))
    for finding, spellings in FINDINGS.items():
        status = finding_status(caption, finding)
        if status is not None:
            asked.append(Question(finding, f"Is there a {finding} in this image? Answer yes or no."
                                  if language == "en" else f"这张影像中有{spellings[-1]}吗？请回答有或无。",
                                  "yes" if status else "no"))
    return asked


def _yes_or_no(text: str) -> str | None:
    text = _normal(text).strip()
    first = re.split(r"[\s,.;:!?，。；：！？]", text, maxsplit=1)[0]
    if first in ("yes", "是", "有") or text.startswith(("有", "是", "存在")):
        return "yes"
    if first in ("no", "none", "否", "无", "没有") or text.startswith(("无", "没有", "未见", "不存在", "否")):
        return "no"
    return None


def is_correct(answer: str, question: Question) -> bool:
    """Whether an answer gives the question's answer: exactly the right modality (naming two is not an
    answer), or the right yes/no, said first."""
    if question.kind == "modality":
        return claimed(answer, MODALITIES) == {question.answer}
    return _yes_or_no(answer) == question.answer
