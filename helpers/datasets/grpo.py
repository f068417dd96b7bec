"""GRPO sets (06): verifiable questions with a gold answer.

GRPO needs prompts whose answers a rule can check. Two kinds:
  medical-o1-verifiable-problem   "Open-ended Verifiable Question", "Ground-True Answer" (short text)
  exam questions (CMB-Exam, MedQA) mapped as for evaluation; the gold is the option letter
From the hub the exam questions come from the training splits. Offline they come from the
evaluation samples in data/eval/, so every item of the run's evaluation set (written by 01) is
held out: GRPO must never train on a test item.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from helpers.data_files import Unreadable, read_records
from helpers.datasets.common import Skip, Source, deidentify, detect_language, read_source, text_of
from helpers.datasets.evaluation import EVAL_SKIP_REASONS, MAPPERS, MCQItem, mcq_prompt
from helpers.errors import CourseError

GRPO_SOURCES = {
    "medical-o1-verifiable-problem": Source(
        "medical-o1-verifiable-problem", "open", "FreedomIntelligence/medical-o1-verifiable-problem",
        ("medical_o1_verifiable_problem.json", "**/*.json"), "grpo/medical_o1_verifiable_problem.json"),
    "cmb-exam": Source(
        "cmb-exam", "mcq", "FreedomIntelligence/CMB",
        ("CMB-Exam/CMB-train/CMB-train-merge.json", "**/CMB-train-merge.json"), "eval/cmb_exam.json"),
    "medqa": Source(
        "medqa", "mcq", "GBaker/MedQA-USMLE-4-options",
        ("phrases_no_exclude_train.jsonl", "**/*train*.jsonl", "**/train-*.parquet"),
        "eval/medqa_4options.jsonl"),
}
NOT_HELD_OUT = "evaluation sample, 01 has not run"


@dataclass(frozen=True)
class GRPOItem:
    """One verifiable question, whatever dataset it came from."""

    question: str  # the user turn: the question (for an exam question: instruction, stem and options)
    answer: str  # the gold answer: a short text, or the option letter
    choices: str  # "" for an open question; the option letters ("ABCD") for an exam question
    source: str
    language: str  # "zh" or "en"
    options: tuple[str, ...] = ()  # the option texts in the order of ``choices``; () for an open question


def map_verifiable_problem(record: dict, index: int = 0) -> GRPOItem:
    """A medical-o1-verifiable-problem row: an open question and its short ground-truth answer."""
    if not isinstance(record, dict):
        raise Skip("malformed")
    question = text_of(record, "Open-ended Verifiable Question")
    answer = text_of(record, "Ground-True Answer")
    if not question or not answer:
        raise Skip("empty")
    return GRPOItem(question, answer, "", "medical-o1-verifiable-problem", detect_language(question))


def grpo_item_from_exam(item: MCQItem) -> GRPOItem:
    """An exam question as a GRPO prompt: the same instruction and layout as in 02 and 04."""
    return GRPOItem(mcq_prompt(item), item.answer, "".join(item.options), item.source, item.language,
                    tuple(item.options.values()))


def question_key(text: str) -> str:
    """A question reduced to its letters and digits, to find the same question written twice."""
    return re.sub(r"[\W_]+", "", text).casefold()


def read_grpo_source(name: str, where: str | None = None, offline: bool = False) -> tuple[list, str, bool]:
    """(rows, origin, is_sample) of a GRPO source, read from ``where`` (its hub id by default, or a local
    file or folder in the real layout), else from the offline sample in data/."""
    if name not in GRPO_SOURCES:
        raise CourseError(f"Unknown GRPO source {name!r}: choose from {', '.join(GRPO_SOURCES)} (and give "
                          "each a hub id or a local path as its value).")
    return read_source(GRPO_SOURCES[name], where, offline)


def evaluation_questions(run: Path) -> set[str] | None:
    """The question keys of the exam set 01_eval_data saved in the run dir; None when 01 has not run."""
    path = run / "eval" / "mcq.jsonl"
    if not path.is_file():
        return None
    return {question_key(r["question"]) for r in read_records(path)
            if isinstance(r, dict) and isinstance(r.get("question"), str)}


def _map_grpo_row(name: str, row: object, index: int) -> tuple[GRPOItem, str]:
    """(item, key of its question) of one row, de-identified; raises Skip for an unusable row."""
    if isinstance(row, Unreadable):
        raise Skip("malformed")
    if GRPO_SOURCES[name].kind == "open":
        item = map_verifiable_problem(row, index)
        (question, _), (answer, _) = deidentify(item.question), deidentify(item.answer)
        return GRPOItem(question, answer, "", name, item.language), question_key(question)
    exam = MAPPERS[name](row, index)
    exam.question, _ = deidentify(exam.question)  # as 01 does, so its held-out keys match
    return grpo_item_from_exam(exam), question_key(exam.question)


def load_grpo_items(sources: Mapping[str, str | None] | Sequence[str], limit: int, *, offline: bool = False,
                    held_out: set[str] | None = None, seed: int = 0) -> tuple[list[GRPOItem], list[dict]]:
    """Up to ``limit`` verifiable questions drawn in turn from ``sources``, and a report row per source.

    ``sources`` maps each schema (a key of GRPO_SOURCES) to where to read it (its hub id, or a local
    file or folder); a plain list reads each from its hub. ``held_out`` holds the question keys of the
    evaluation set (``evaluation_questions``): exam questions among them are skipped. Read offline, the
    exam samples *are* the evaluation samples, so without ``held_out`` (01 has not run) they are left
    out entirely, and the report says so.
    """
    where = dict(sources) if isinstance(sources, Mapping) else {s: None for s in sources}
    rng = random.Random(seed)
    groups, report = [], []
    seen: set[str] = set()
    for name, place in where.items():
        rows, origin, is_sample = read_grpo_source(name, place, offline)
        skipped: Counter = Counter()
        items: list[GRPOItem] = []
        if GRPO_SOURCES[name].kind == "mcq" and is_sample and held_out is None:
            skipped[NOT_HELD_OUT] = len(rows)
        for index, row in enumerate(rows if not skipped else []):
            try:
                item, key = _map_grpo_row(name, row, index)
            except Skip as skip:
                skipped[str(skip) if str(skip) in EVAL_SKIP_REASONS else "malformed"] += 1
                continue
            if key in seen:
                skipped["duplicate"] += 1
            elif held_out and key in held_out:
                skipped["in the evaluation set"] += 1
            else:
                seen.add(key)
                items.append(item)
        rng.shuffle(items)
        groups.append(items)
        report.append({"source": name, "origin": origin, "read": len(rows), "usable": len(items),
                       **{f"skipped: {k}": v for k, v in sorted(skipped.items())}})
    chosen: list[GRPOItem] = []
    while len(chosen) < limit and any(groups):  # one from each source in turn
        for group in groups:
            if group and len(chosen) < limit:
                chosen.append(group.pop(0))
    for row in report:
        row["used"] = sum(item.source == row["source"] for item in chosen)
    return chosen, report
