"""Datasets of the course: each real dataset's schema mapped to one internal form, cleaned, reported.

Every loader takes the real dataset by its hub id and falls back to the samples in ``data/``
(same schemas) when no hub is reachable. Rows that cannot be used are counted and skipped with a
reason, never a crash, and text is de-identified before anything else sees it.

Sections: shared reading, cleaning and de-identification; then one section per notebook family.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from helpers.errors import CourseError

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


# === Shared: reading files, the cleaning report, de-identification =========================

def read_records(path: Path) -> list:
    """The rows of a .json (an array, or an object holding one), .jsonl or .parquet file."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict("records")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    rows.append(_Unreadable(f"{path.name} line {number}"))
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise CourseError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}): "
                          "fix or replace it.") from err
    if isinstance(data, dict):  # {"data": [...]} or {"train": [...]}: the rows inside
        data = next((data[k] for k in _CONTAINER_KEYS if isinstance(data.get(k), list)), [data])
    return data if isinstance(data, list) else [data]


_CONTAINER_KEYS = ("data", "rows", "items", "train", "validation", "val", "test")


@dataclass(frozen=True)
class _Unreadable:
    """A line that is not JSON: kept as a row so the cleaning report counts it."""

    where: str


class Skip(ValueError):
    """Raised by a schema mapper for a row it cannot use; the message is the reason."""


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


# De-identification: what a record must never carry into a model or a plot. Each pattern is
# replaced by a placeholder; digits are bounded by non-digits because Chinese text has no spaces.
_DATE = (r"(?:\d{4}\s*[-/.年]\s*\d{1,2}\s*[-/.月]\s*\d{1,2}\s*日?|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}|"
         r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.?\s+\d{1,2},?\s+\d{4}|"
         r"\d{1,2}\s+(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.?,?\s+\d{4})")
DEIDENTIFY = {
    "email": (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "[EMAIL]"),
    "id card": (re.compile(r"(?<!\d)[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
                           r"\d{3}[\dXx](?![\dA-Za-z])"), "[ID]"),
    "date of birth": (re.compile(rf"(?P<cue>(?:出生日期|出生于|生于|出生|生日|date\s+of\s+birth|birth\s*date|"
                                 rf"D\.?O\.?B\.?|born(?:\s+on)?)\s*[:：]?\s*){_DATE}", re.IGNORECASE),
                      r"\g<cue>[DOB]"),
    "phone": (re.compile(r"(?<![\d.])(?:(?:\+|00)86[-\s]?)?1[3-9]\d[-\s]?\d{4}[-\s]?\d{4}(?!\d)|"
                         r"(?<![\d.])0\d{2,3}-\d{7,8}(?!\d)|"
                         r"(?<![\d.])(?:\+1[-.\s]?)?\(?\d{3}\)?[-.\s]\d{3}[-.\s]\d{4}(?!\d)"), "[PHONE]"),
}


def deidentify(text: str) -> tuple[str, Counter]:
    """``text`` with e-mails, Chinese ID-card numbers, dates of birth and phone numbers masked."""
    counts: Counter = Counter()
    for kind, (pattern, placeholder) in DEIDENTIFY.items():
        text, n = pattern.subn(placeholder, text)
        if n:
            counts[kind] += n
    return text, counts


def detect_language(text: str) -> str:
    """'zh' when at least a fifth of the letters are Chinese characters, else 'en'."""
    letters = [c for c in text if c.isalpha()]
    chinese = sum("\u4e00" <= c <= "\u9fff" for c in letters)
    return "zh" if letters and chinese / len(letters) >= 0.2 else "en"


# === Evaluation sets (01, 02, 04): CMB-Exam, MedQA 4-option, CMB-Clin =======================

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


@dataclass(frozen=True)
class EvalSource:
    """A real evaluation dataset: hub id, files inside its snapshot, and the offline sample."""

    name: str
    kind: str  # "mcq" or "open"
    hub_id: str
    files: tuple[str, ...]  # glob patterns, best first
    sample: str  # file in data/eval/


EVAL_SOURCES = {
    "cmb-exam": EvalSource("cmb-exam", "mcq", "FreedomIntelligence/CMB",
                           ("CMB-Exam/CMB-val/CMB-val-merge.json", "**/CMB-val-merge.json"), "cmb_exam.json"),
    "medqa": EvalSource("medqa", "mcq", "GBaker/MedQA-USMLE-4-options",
                        ("phrases_no_exclude_test.jsonl", "**/*test*.jsonl", "**/test-*.parquet"),
                        "medqa_4options.jsonl"),
    "cmb-clin": EvalSource("cmb-clin", "open", "FreedomIntelligence/CMB",
                           ("CMB-Clin/CMB-Clin-qa.json", "**/CMB-Clin-qa.json"), "cmb_clin.json"),
}
EVAL_SKIP_REASONS = ("malformed", "empty", "answer not in options", "multiple answers", "duplicate",
                     "overlong")


def _text(record: dict, key: str) -> str:
    value = record.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str | int | float):
        raise Skip("malformed")
    return str(value).strip()


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
    question, answer = _text(record, "question"), _text(record, "answer").upper()
    options = _options(record.get("option"))
    if not question or not answer:
        raise Skip("empty")
    letters = re.sub(r"[^A-Z]", "", answer)
    if len(letters) > 1:
        raise Skip("multiple answers")  # the course scores single-answer questions
    if letters not in options:
        raise Skip("answer not in options")
    exam = "/".join(x for x in (_text(record, "exam_type"), _text(record, "exam_class")) if x)
    return MCQItem(f"cmb-exam-{record.get('id', index)}", "cmb-exam", "zh", exam,
                   _text(record, "exam_subject") or "unknown", question, options, letters,
                   _text(record, "explanation"))


def map_medqa(record: dict, index: int) -> MCQItem:
    """A MedQA 4-option row (question, answer text, options, meta_info, answer_idx)."""
    if not isinstance(record, dict):
        raise Skip("malformed")
    question, letter = _text(record, "question"), _text(record, "answer_idx").upper()
    options = _options(record.get("options"))
    if not question or not letter:
        raise Skip("empty")
    if letter not in options:
        raise Skip("answer not in options")
    answer_text = _text(record, "answer")
    if answer_text and " ".join(answer_text.split()) != " ".join(options[letter].split()):
        raise Skip("answer not in options")  # the key and the answer text disagree
    step = _text(record, "meta_info") or "unknown"
    return MCQItem(f"medqa-{record.get('id', index)}", "medqa", "en", "USMLE", f"USMLE {step}",
                   question, options, letter)


def map_cmb_clin(record: dict, index: int) -> list[OpenItem]:
    """A CMB-Clin case (id, title, description, QA_pairs) as one item per question."""
    if not isinstance(record, dict) or not isinstance(record.get("QA_pairs"), list):
        raise Skip("malformed")
    description = _text(record, "description")
    if not description:
        raise Skip("empty")
    case_id = _text(record, "id") or str(index)
    items = []
    for number, qa in enumerate(record["QA_pairs"]):
        if not isinstance(qa, dict):
            raise Skip("malformed")
        question = _text(qa, "question")
        reference = _text(qa, "answer") or _text(qa, "solution")  # an older README calls it "solution"
        if not question or not reference:
            raise Skip("empty")
        items.append(OpenItem(f"cmb-clin-{case_id}-{number}", "cmb-clin", detect_language(description),
                              case_id, _text(record, "title"), description, question, reference))
    return items


MAPPERS = {"cmb-exam": map_cmb_exam, "medqa": map_medqa, "cmb-clin": map_cmb_clin}


def _find_file(folder: Path, source: EvalSource) -> Path:
    for pattern in source.files:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    raise CourseError(f"No file like {source.files[0]} in {folder}: pass the folder of the {source.hub_id} "
                      "dataset as it is on the hub, or set OFFLINE = True to use the course's samples.")


def read_eval_source(name: str, hub_id: str | None = None, offline: bool = False) -> tuple[list, str]:
    """(raw rows, origin) of an evaluation source: from the hub (or a local folder), else ``data/eval/``."""
    from helpers.hub import resolve_dataset

    if name not in EVAL_SOURCES:
        raise CourseError(f"Unknown evaluation set {name!r}: choose one of {', '.join(EVAL_SOURCES)}.")
    source = EVAL_SOURCES[name]
    resolved = None if offline else resolve_dataset(hub_id or source.hub_id)
    if resolved is None:
        path = DATA_DIR / "eval" / source.sample
        return read_records(path), f"offline sample data/eval/{source.sample}"
    path = _find_file(resolved.path, source)
    return read_records(path), f"{hub_id or source.hub_id} ({resolved.origin}) {path.name}"


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
            if isinstance(row, _Unreadable):
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


def load_eval_set(name: str, *, hub_id: str | None = None, offline: bool = False,
                  max_chars: int = 4000) -> tuple[list[MCQItem | OpenItem], CleaningReport]:
    """The cleaned items of one evaluation source and the report of what cleaning did."""
    rows, origin = read_eval_source(name, hub_id, offline)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(asdict(i), ensure_ascii=False) + "\n" for i in items), encoding="utf-8")
    tmp.replace(path)
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
