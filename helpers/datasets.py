"""Datasets of the course: each real dataset's schema mapped to one internal form.

Every loader takes the real dataset by its hub id and falls back to the samples in ``data/`` (same
schemas) when no hub is reachable. Rows that cannot be used are counted and skipped with a reason,
never a crash.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from helpers.errors import CourseError

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


# === GRPO sets (06): verifiable questions with a gold answer ===============================
# GRPO needs prompts whose answers a rule can check. Two kinds:
#   medical-o1-verifiable-problem   "Open-ended Verifiable Question", "Ground-True Answer" (short text)
#   exam questions (CMB-Exam, MedQA) question + options, the gold is the option letter
# Offline, the exam questions come from the evaluation samples in data/eval/: then every item of
# the run's evaluation set (written by 01) is held out, so that GRPO never trains on a test item.

@dataclass(frozen=True)
class GRPOSource:
    """A dataset of verifiable questions: hub id, files inside its snapshot, the offline sample."""

    name: str
    kind: str  # "open" (a short gold answer) or "mcq" (a gold option letter)
    hub_id: str
    files: tuple[str, ...]  # glob patterns inside the hub snapshot, best first (training splits)
    sample: str  # the offline sample, relative to data/


GRPO_SOURCES = {
    "medical-o1-verifiable-problem": GRPOSource(
        "medical-o1-verifiable-problem", "open", "FreedomIntelligence/medical-o1-verifiable-problem",
        ("medical_o1_verifiable_problem.json", "**/*.json"), "grpo/medical_o1_verifiable_problem.json"),
    "cmb-exam": GRPOSource(
        "cmb-exam", "mcq", "FreedomIntelligence/CMB",
        ("CMB-Exam/CMB-train/CMB-train-merge.json", "**/CMB-train-merge.json"), "eval/cmb_exam.json"),
    "medqa": GRPOSource(
        "medqa", "mcq", "GBaker/MedQA-USMLE-4-options",
        ("phrases_no_exclude_train.jsonl", "**/*train*.jsonl", "**/train-*.parquet"),
        "eval/medqa_4options.jsonl"),
}

# The instruction that turns an exam question into a prompt; the options follow, one per line.
EXAM_INSTRUCTIONS = {
    "zh": "以下是一道医学考试单项选择题。请选出唯一正确的选项，最后写“答案：X”（X 为选项字母）。",
    "en": "Choose the single best option of this medical exam question and end with 'Answer: X', "
          "where X is the option letter.",
}


@dataclass(frozen=True)
class GRPOItem:
    """One verifiable question, whatever dataset it came from."""

    question: str  # the user turn: the question, and for an exam question the instruction and options
    answer: str  # the gold answer: a short text, or the option letter
    choices: str  # "" for an open question; the option letters ("ABCD") for an exam question
    source: str
    language: str  # "zh" or "en"


class GRPOSkip(ValueError):
    """Raised by a mapper for a row GRPO cannot use; the message is the reason."""


def grpo_language(text: str) -> str:
    """'zh' when the text holds any Chinese character, else 'en'."""
    return "zh" if re.search(r"[\u3400-\u9fff]", text) else "en"


def _field(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, str | int | float):
        raise GRPOSkip("malformed")
    return str(value).strip()


def map_verifiable_problem(row: dict, source: str = "medical-o1-verifiable-problem") -> GRPOItem:
    """A medical-o1-verifiable-problem row: an open question and its short ground-truth answer."""
    if not isinstance(row, dict):
        raise GRPOSkip("malformed")
    question, answer = _field(row, "Open-ended Verifiable Question"), _field(row, "Ground-True Answer")
    if not question or not answer:
        raise GRPOSkip("empty")
    return GRPOItem(question, answer, "", source, grpo_language(question))


def map_exam_question(row: dict, source: str) -> GRPOItem:
    """A CMB-Exam row (question, option, answer) or a MedQA row (question, options, answer_idx)."""
    if not isinstance(row, dict):
        raise GRPOSkip("malformed")
    options = row.get("option", row.get("options"))
    answer = _field(row, "answer_idx" if "answer_idx" in row else "answer").upper()
    if not isinstance(options, dict):
        raise GRPOSkip("malformed")
    options = {str(k).strip().upper(): str(v).strip() for k, v in options.items() if v is not None}
    options = {k: v for k, v in sorted(options.items()) if v}  # CMB leaves unused letters empty
    stem = _field(row, "question")
    if not stem or len(options) < 2 or not answer:
        raise GRPOSkip("empty")
    if not all(len(k) == 1 and "A" <= k <= "Z" for k in options):
        raise GRPOSkip("malformed")  # options are lettered A, B, C…
    if len(answer) > 1:
        raise GRPOSkip("multiple answers")  # a letter reward checks one letter
    if answer not in options:
        raise GRPOSkip("answer not in options")
    language = grpo_language(stem)
    lines = "\n".join(f"{letter}. {text}" for letter, text in options.items())
    return GRPOItem(f"{EXAM_INSTRUCTIONS[language]}\n\n{stem}\n{lines}", answer, "".join(options), source,
                    language)


def question_key(text: str) -> str:
    """A question reduced to its letters and digits, to find the same question written twice."""
    return re.sub(r"[\W_]+", "", text).casefold()


def _read_rows(path: Path) -> list:
    """The rows of a JSON array, a JSON Lines or a Parquet file; an unreadable line is kept as None."""
    if path.suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict("records")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for line in filter(str.strip, text.splitlines()):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                rows.append(None)  # counted as malformed, not fatal
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise CourseError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}): "
                          "fix or replace it.") from err
    return data if isinstance(data, list) else [data]


def read_grpo_source(name: str, offline: bool = False) -> tuple[list, str, bool]:
    """(rows, origin, is_sample) of a GRPO source: the hub (or a local folder), else the sample in data/."""
    from helpers.hub import resolve_dataset

    if name not in GRPO_SOURCES:
        raise CourseError(f"Unknown GRPO source {name!r}: choose from {', '.join(GRPO_SOURCES)}.")
    source = GRPO_SOURCES[name]
    resolved = None if offline else resolve_dataset(source.hub_id)
    if resolved is not None:
        for pattern in source.files:
            found = sorted(resolved.path.glob(pattern))
            if found:
                return _read_rows(found[0]), f"{source.hub_id} ({resolved.origin}) {found[0].name}", False
        raise CourseError(f"No file like {source.files[0]} in {resolved.path}: pass the {source.hub_id} "
                          "dataset as it is on the hub, or set OFFLINE = True to use the course's samples.")
    return _read_rows(DATA_DIR / source.sample), f"offline sample data/{source.sample}", True


def evaluation_questions(run: Path) -> set[str] | None:
    """The question keys of the exam set 01_eval_data saved in the run dir; None when 01 has not run."""
    path = run / "eval" / "mcq.jsonl"
    if not path.is_file():
        return None
    rows = _read_rows(path)
    return {question_key(r["question"]) for r in rows
            if isinstance(r, dict) and isinstance(r.get("question"), str)}


def _interleave(groups: list[list[GRPOItem]], limit: int) -> list[GRPOItem]:
    """One item from each group in turn, so every source is represented however small ``limit`` is."""
    chosen: list[GRPOItem] = []
    while len(chosen) < limit and any(groups):
        for group in groups:
            if group and len(chosen) < limit:
                chosen.append(group.pop(0))
    return chosen


def load_grpo_items(sources: tuple[str, ...] | list[str], limit: int, *, offline: bool = False,
                    held_out: set[str] | None = None, seed: int = 0) -> tuple[list[GRPOItem], list[dict]]:
    """Up to ``limit`` verifiable questions drawn in turn from ``sources``, and a report row per source.

    ``held_out`` holds the question keys of the evaluation set (``evaluation_questions``): exam
    questions among them are skipped. Read offline, the exam samples *are* the evaluation samples,
    so without ``held_out`` (01 has not run) they are left out entirely, and the report says why.
    """
    rng = random.Random(seed)
    groups, report = [], []
    seen: set[str] = set()
    for name in sources:
        rows, origin, is_sample = read_grpo_source(name, offline)
        source = GRPO_SOURCES[name]
        skipped: Counter = Counter()
        items, read = [], len(rows)
        if source.kind == "mcq" and is_sample and held_out is None:
            skipped["evaluation sample, 01 has not run"] = len(rows)
            rows = []
        for row in rows:
            try:
                mapper = map_verifiable_problem if source.kind == "open" else map_exam_question
                item = mapper(row, name)
            except GRPOSkip as skip:
                skipped[str(skip)] += 1
                continue
            key = question_key(row["question"] if source.kind == "mcq" else item.question)
            if key in seen:
                skipped["duplicate"] += 1
            elif held_out and key in held_out:
                skipped["in the evaluation set"] += 1
            else:
                seen.add(key)
                items.append(item)
        rng.shuffle(items)
        groups.append(items)
        report.append({"source": name, "origin": origin, "read": read, "usable": len(items),
                       **{f"skipped: {k}": v for k, v in sorted(skipped.items())}})
    chosen = _interleave(groups, limit)
    for row in report:
        row["used"] = sum(item.source == row["source"] for item in chosen)
    return chosen, report
