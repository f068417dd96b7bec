"""Evaluation sets (01, 02, 04): CMB-Exam, MedQA 4-option, CMB-Clin, mapped to exam and case items,
cleaned with a report of what was skipped and masked, and the prompts 02 and 04 ask them with."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from helpers.data_files import Unreadable, read_records
from helpers.datasets.common import (
    DEIDENTIFY,
    Skip,
    Source,
    deidentify,
    detect_language,
    read_source,
    text_of,
)
from helpers.errors import CourseError
from helpers.files import atomic_path


@dataclass
class MCQItem:
    """One multiple-choice exam question, whatever dataset it came from."""

    id: str
    source: str  # "cmb-exam" or "medqa"
    language: str  # "zh" or "en"
    exam: str  # exam type, e.g. "医师考试/规培结业" or "USMLE"
    subject: str  # for breakdowns: CMB's exam_subject, MedQA's step
    question: str
    options: dict[str, str]
    answer: str  # one letter
    explanation: str = ""


@dataclass
class OpenItem:
    """One question about a clinical case, with the reference answer."""

    id: str
    source: str  # "cmb-clin"
    language: str
    case_id: str
    title: str
    description: str
    question: str
    reference: str


EVAL_SOURCES = {
    "cmb-exam": Source("cmb-exam", "mcq", "FreedomIntelligence/CMB",
                       ("CMB-Exam/CMB-val/CMB-val-merge.json", "**/CMB-val-merge.json",
                        "**/CMB-test-choice-question-merge.json"), "eval/cmb_exam.json"),
    "medqa": Source("medqa", "mcq", "GBaker/MedQA-USMLE-4-options",
                    ("phrases_no_exclude_test.jsonl", "**/*test*.jsonl", "**/test-*.parquet"),
                    "eval/medqa_4options.jsonl"),
    "cmb-clin": Source("cmb-clin", "open", "FreedomIntelligence/CMB",
                       ("CMB-Clin/CMB-Clin-qa.json", "**/CMB-Clin-qa.json", "**/CMB-test-qa.json"),
                       "eval/cmb_clin.json"),
}
EVAL_SKIP_REASONS = ("malformed", "empty", "answer not in options", "multiple answers", "duplicate",
                     "overlong")


@dataclass
class CleaningReport:
    """What happened to the rows of one source: how many were kept, skipped (why) and masked."""

    source: str
    origin: str = ""
    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    masked: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # the first row skipped for each reason

    def eval_row(self) -> dict:
        """``row`` with every reason an evaluation set can be skipped for, and every identifier kind."""
        return self.row(EVAL_SKIP_REASONS, tuple(DEIDENTIFY))

    def skip(self, reason: str, example: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, example[:120])

    def row(self, reasons: tuple[str, ...] = (), masks: tuple[str, ...] = ()) -> dict:
        """One line of the report table; ``reasons`` and ``masks`` are shown even when zero."""
        skipped = {k: self.skipped.get(k, 0) for k in reasons} | dict(self.skipped)
        masked = {k: self.masked.get(k, 0) for k in masks} | dict(self.masked)
        return {"source": self.source, "origin": self.origin, "rows read": self.read, "items kept": self.kept,
                **{f"skipped: {k}": v for k, v in skipped.items()},
                **{f"masked: {k}": v for k, v in masked.items()}}


def _options(raw: object) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise Skip("malformed")
    options = {str(k).strip().upper(): str(v).strip() for k, v in raw.items() if v is not None}
    options = {k: v for k, v in sorted(options.items()) if v}  # CMB leaves unused letters empty
    if len(options) < 2:
        raise Skip("empty")
    return options


def map_cmb_exam(record: dict, index: int) -> MCQItem:
    """A CMB-Exam row (exam_type, exam_class, exam_subject, question, answer, option, …)."""
    if not isinstance(record, dict):
        raise Skip("malformed")
    question, answer = text_of(record, "question"), text_of(record, "answer").upper()
    options = _options(record.get("option"))
    if not question or not answer:
        raise Skip("empty")
    letters = re.sub(r"[^A-Z]", "", answer)
    if len(letters) > 1:
        raise Skip("multiple answers")  # the course scores single-answer questions
    if letters not in options:
        raise Skip("answer not in options")
    exam = "/".join(x for x in (text_of(record, "exam_type"), text_of(record, "exam_class")) if x)
    return MCQItem(f"cmb-exam-{record.get('id', index)}", "cmb-exam", "zh", exam,
                   text_of(record, "exam_subject") or "unknown", question, options, letters,
                   text_of(record, "explanation"))


def map_medqa(record: dict, index: int) -> MCQItem:
    """A MedQA 4-option row (question, answer text, options, meta_info, answer_idx)."""
    if not isinstance(record, dict):
        raise Skip("malformed")
    question, letter = text_of(record, "question"), text_of(record, "answer_idx").upper()
    options = _options(record.get("options"))
    if not question or not letter:
        raise Skip("empty")
    if letter not in options:
        raise Skip("answer not in options")
    answer_text = text_of(record, "answer")
    if answer_text and " ".join(answer_text.split()) != " ".join(options[letter].split()):
        raise Skip("answer not in options")  # the key and the answer text disagree
    step = text_of(record, "meta_info") or "unknown"
    return MCQItem(f"medqa-{record.get('id', index)}", "medqa", "en", "USMLE", f"USMLE {step}",
                   question, options, letter)


def map_cmb_clin(record: dict, index: int) -> list[OpenItem]:
    """A CMB-Clin case (id, title, description, QA_pairs) as one item per question."""
    if not isinstance(record, dict) or not isinstance(record.get("QA_pairs"), list):
        raise Skip("malformed")
    description = text_of(record, "description")
    if not description:
        raise Skip("empty")
    case_id = text_of(record, "id") or str(index)
    items = []
    for number, qa in enumerate(record["QA_pairs"]):
        if not isinstance(qa, dict):
            raise Skip("malformed")
        question = text_of(qa, "question")
        reference = text_of(qa, "answer") or text_of(qa, "solution")  # an older README calls it "solution"
        if not question or not reference:
            raise Skip("empty")
        items.append(OpenItem(f"cmb-clin-{case_id}-{number}", "cmb-clin", detect_language(description),
                              case_id, text_of(record, "title"), description, question, reference))
    return items


MAPPERS = {"cmb-exam": map_cmb_exam, "medqa": map_medqa, "cmb-clin": map_cmb_clin}


def read_eval_source(name: str, where: str | None = None, offline: bool = False) -> tuple[list, str]:
    """(raw rows, origin) of an evaluation source, read from ``where`` (its hub id by default, or a local
    file or folder in the real layout), else from the offline sample in ``data/eval/``."""
    if name not in EVAL_SOURCES:
        raise CourseError(f"Unknown evaluation set {name!r}: choose one of {', '.join(EVAL_SOURCES)}.")
    rows, origin, _ = read_source(EVAL_SOURCES[name], where, offline)
    return rows, origin


def _deidentify_item(item: MCQItem | OpenItem, report: CleaningReport) -> None:
    for key, value in vars(item).items():
        if isinstance(value, str):
            clean, counts = deidentify(value)
            setattr(item, key, clean)
            report.masked.update(counts)
        elif isinstance(value, dict):
            for letter, text in value.items():
                value[letter], counts = deidentify(text)
                report.masked.update(counts)


def prompt_chars(item: MCQItem | OpenItem) -> int:
    """The length in characters of what the model reads for this item."""
    if isinstance(item, MCQItem):
        return len(item.question) + sum(len(v) + 3 for v in item.options.values())
    return len(item.description) + len(item.question)


def _dedup_key(item: MCQItem | OpenItem) -> str:
    if isinstance(item, MCQItem):
        text = item.question + "|" + "|".join(sorted(item.options.values()))
    else:
        text = item.description + "|" + item.question
    return re.sub(r"\s+", "", text).casefold()


def clean_eval_rows(name: str, rows: list, *, max_chars: int = 4000,
                    origin: str = "") -> tuple[list[MCQItem | OpenItem], CleaningReport]:
    """Map rows of source ``name`` to items; skip (and count) the bad ones; mask identifiers."""
    mapper, report = MAPPERS[name], CleaningReport(name, origin)
    items: list = []
    seen: set[str] = set()
    for index, row in enumerate(rows):
        report.read += 1
        try:
            if isinstance(row, Unreadable):
                raise Skip("malformed")
            mapped = mapper(row, index)
        except Skip as skip:
            reason = str(skip) if str(skip) in EVAL_SKIP_REASONS else "malformed"
            report.skip(reason, json.dumps(row, ensure_ascii=False, default=str))
            continue
        for item in mapped if isinstance(mapped, list) else [mapped]:
            key = _dedup_key(item)
            if key in seen:
                report.skip("duplicate", item.id)
            elif prompt_chars(item) > max_chars:
                report.skip("overlong", item.id)
            else:
                seen.add(key)
                _deidentify_item(item, report)
                items.append(item)
    report.kept = len(items)
    return items, report


def load_eval_set(name: str, *, where: str | None = None, offline: bool = False,
                  max_chars: int = 4000) -> tuple[list[MCQItem | OpenItem], CleaningReport]:
    """The cleaned items of one evaluation source and the report of what cleaning did."""
    rows, origin = read_eval_source(name, where, offline)
    return clean_eval_rows(name, rows, max_chars=max_chars, origin=origin)


def sample_balanced(items: list, n: int, seed: int = 0, by: str = "language") -> list:
    """``n`` items drawn with a fixed seed, as evenly as possible across the values of ``by``."""
    groups: dict[str, list] = {}
    for item in sorted(items, key=lambda x: x.id):
        groups.setdefault(getattr(item, by), []).append(item)
    rng = random.Random(seed)
    for members in groups.values():
        rng.shuffle(members)
    chosen: list = []
    while len(chosen) < min(n, len(items)):  # one from each group in turn, until n are chosen
        for key in sorted(groups):
            if groups[key] and len(chosen) < n:
                chosen.append(groups[key].pop())
    return sorted(chosen, key=lambda x: (x.language, x.id))


def save_items(items: list, path: Path) -> Path:
    """Items as JSON Lines (one per line, Chinese kept readable)."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(asdict(i), ensure_ascii=False) + "\n" for i in items),
                       encoding="utf-8")
    return path


def load_eval_sets(run: Path) -> tuple[list[MCQItem], list[OpenItem]]:
    """The exam and clinical-case sets that 01_eval_data saved in the run dir."""
    from helpers.runs import require

    folder = run / "eval"
    mcq = [MCQItem(**r) for r in read_records(require(folder / "mcq.jsonl", "01_eval_data.ipynb"))]
    open_ = [OpenItem(**r) for r in read_records(require(folder / "open.jsonl", "01_eval_data.ipynb"))]
    return mcq, open_


# The instructions the model reads. 02 and 04 use the same ones, so scores stay comparable. The
# request for a final "Answer: X" line comes last, right before the model starts writing: small
# models follow the last instruction they read far more often than the first.
MCQ_INSTRUCTIONS = {
    "zh": ("以下是一道医学考试单项选择题。", "请选出唯一正确的选项，只写选项字母，格式为“答案：X”。"),
    "en": ("The following is a multiple-choice question from a medical exam.",
           "Choose the single best option and reply with its letter, as 'Answer: X'."),
}
OPEN_INSTRUCTIONS = {
    "zh": "请阅读以下病例，然后回答问题。",
    "en": "Read the clinical case below, then answer the question.",
}


def mcq_prompt(item: MCQItem) -> str:
    """The user turn for an exam question: what it is, the stem, one option per line, what to reply."""
    options = "\n".join(f"{letter}. {text}" for letter, text in item.options.items())
    header, request = MCQ_INSTRUCTIONS[item.language]
    return f"{header}\n\n{item.question}\n{options}\n\n{request}"


def open_prompt(item: OpenItem) -> str:
    """The user turn for a case question: instruction, case description, question."""
    label = "问题：" if item.language == "zh" else "Question: "
    return f"{OPEN_INSTRUCTIONS[item.language]}\n\n{item.description}\n\n{label}{item.question}"


def chance_accuracy(items: list[MCQItem]) -> float:
    """The accuracy of guessing uniformly at random: 1/5 for CMB, 1/4 for MedQA, averaged."""
    return sum(1 / len(i.options) for i in items) / len(items) if items else 0.0

