"""Datasets of the course: each real dataset's schema mapped to one internal form, cleaned, reported.

Every loader takes the real dataset by its hub id and falls back to the samples in ``data/``
(same schemas) when no hub is reachable. Rows that cannot be used are counted and skipped with a
reason, never a crash, and text is de-identified before anything else sees it.

Sections: shared reading, cleaning and de-identification; then one section per notebook family.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from helpers.answers import THINK_CLOSE, THINK_OPEN, split_think
from helpers.data_files import (
    Location,
    Unreadable,
    data_files,
    is_local_path,
    locate,
    pick_file,
    read_records,
)
from helpers.errors import CourseError
from helpers.files import atomic_path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


# === Shared: reading files, the cleaning report, de-identification =========================

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
    files: tuple[str, ...]  # glob patterns, best first: the hub's layout, then the GitHub repository's
    sample: str  # file in data/eval/


EVAL_SOURCES = {
    "cmb-exam": EvalSource("cmb-exam", "mcq", "FreedomIntelligence/CMB",
                           ("CMB-Exam/CMB-val/CMB-val-merge.json", "**/CMB-val-merge.json",
                            "**/CMB-test-choice-question-merge.json"), "cmb_exam.json"),
    "medqa": EvalSource("medqa", "mcq", "GBaker/MedQA-USMLE-4-options",
                        ("phrases_no_exclude_test.jsonl", "**/*test*.jsonl", "**/test-*.parquet"),
                        "medqa_4options.jsonl"),
    "cmb-clin": EvalSource("cmb-clin", "open", "FreedomIntelligence/CMB",
                           ("CMB-Clin/CMB-Clin-qa.json", "**/CMB-Clin-qa.json", "**/CMB-test-qa.json"),
                           "cmb_clin.json"),
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


def read_eval_source(name: str, where: str | None = None, offline: bool = False) -> tuple[list, str]:
    """(raw rows, origin) of an evaluation source, read from ``where`` (its hub id by default, or a local
    file or folder in the real layout), else from the offline sample in ``data/eval/``."""
    if name not in EVAL_SOURCES:
        raise CourseError(f"Unknown evaluation set {name!r}: choose one of {', '.join(EVAL_SOURCES)}.")
    source = EVAL_SOURCES[name]
    location = locate(where or source.hub_id, offline=offline)
    if location.path is None:
        return read_records(DATA_DIR / "eval" / source.sample), f"offline sample data/eval/{source.sample}"
    path = pick_file(location.path, source.files, f"the {name} source")
    rows = read_records(path)
    if name == "cmb-exam" and location.path.is_dir():
        rows = _with_cmb_answers(rows, location.path)
    return rows, location.describe(path)


def _with_cmb_answers(rows: list, folder: Path) -> list:
    """CMB's test questions come without answers; its GitHub repository publishes them apart
    (``CMB-test-choice-answer.json``, by id): join them when the folder holds that file."""
    if not rows or any(isinstance(r, dict) and r.get("answer") for r in rows[:20]):
        return rows
    answers = sorted(folder.rglob("CMB-test-choice-answer.json"))
    if not answers:
        return rows
    by_id = {str(r.get("id")): r.get("answer") for r in read_records(answers[0]) if isinstance(r, dict)}
    return [{**r, "answer": by_id.get(str(r.get("id")), "")} if isinstance(r, dict) else r for r in rows]


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


# === SFT sets (03): medical chain-of-thought ==================================================
#
# Two real sources of medical chain-of-thought, each with its own column names:
#   medical-o1-reasoning-SFT   Question, Complex_CoT, Response   (configs "en" and "zh")
#   delicate_medical_r1_data   question, think, answer
# Both become an SFTExample: a question, the reasoning (the think block) and the final answer.

SFT_DIR = DATA_DIR / "sft"


@dataclass(frozen=True)
class SFTSource:
    """A real SFT dataset: its hub id, the hub it lives on, its files (by language) and column names.

    The offline samples in data/sft/ copy the real file names, so one reader serves both.
    """

    hub_id: str
    hub: str  # "huggingface" or "modelscope": where the dataset is published
    files: dict[str, str]  # file name -> language ("en" or "zh")
    columns: tuple[str, str, str]  # question, reasoning, answer


SFT_SOURCES: dict[str, SFTSource] = {
    "medical-o1-reasoning-SFT": SFTSource(
        "FreedomIntelligence/medical-o1-reasoning-SFT", "huggingface",
        {"medical_o1_sft.json": "en", "medical_o1_sft_Chinese.json": "zh"},  # the "en" and "zh" configs
        ("Question", "Complex_CoT", "Response")),
    "delicate_medical_r1_data": SFTSource(
        "krisfu/delicate_medical_r1_data", "modelscope", {"r1_data_example.jsonl": "zh"},
        ("question", "think", "answer")),
}


@dataclass(frozen=True)
class SFTExample:
    """One training example: the question, the reasoning that goes in the think block, the answer."""

    question: str
    reasoning: str
    answer: str
    language: str  # "en" or "zh"
    source: str  # a key of SFT_SOURCES


@dataclass
class SFTSet:
    """The examples loaded for SFT, where each source came from, and what was skipped and why."""

    examples: list[SFTExample]
    origins: dict[str, str] = field(default_factory=dict)  # source -> where its rows were read from
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    masked: Counter = field(default_factory=Counter)  # identifier kind -> count (de-identification)
    missing: dict[str, list[str]] = field(default_factory=dict)  # source -> languages asked for, not found

    def counts(self) -> Counter:
        """How many examples each (source, language) contributes."""
        return Counter((ex.source, ex.language) for ex in self.examples)


def map_sft_rows(rows: list[dict], source: str, language: str | None) -> tuple[list[SFTExample], Counter]:
    """The rows of ``source``'s schema as SFTExamples, and a count of the rows skipped, by reason.

    ``language`` is the file's ("en", "zh"), or None to detect it from each question."""
    q_col, r_col, a_col = SFT_SOURCES[source].columns
    examples, skipped, seen = [], Counter(), set()
    for row in rows:
        values = [row.get(col) if isinstance(row, dict) else None for col in (q_col, r_col, a_col)]
        if not all(isinstance(v, str) for v in values):
            skipped["missing column"] += 1
            continue
        question, answer = values[0].strip(), values[2].strip()
        # Some sources already wrap the reasoning in think tags; the chat format adds them once.
        reasoning = split_think(values[1], block_only=True)[0]
        if not (question and reasoning and answer):
            skipped["empty field"] += 1
        elif question in seen:
            skipped["duplicate question"] += 1
        else:
            seen.add(question)
            examples.append(SFTExample(question, reasoning, answer, language or detect_language(question),
                                       source))
    return examples, skipped


def sft_files(location: Location, source: str) -> list[tuple[Path, str | None]]:
    """(file, language or None) to read for ``source``: its files by their real names (the hub's layout,
    or data/sft/ offline), a single local file, or every data file of a local folder."""
    spec = SFT_SOURCES[source]
    path = location.path or SFT_DIR
    if path.is_file():
        return [(path, spec.files.get(path.name))]
    files = data_files(path)
    known = [(p, spec.files[p.name]) for p in files if p.name in spec.files]
    if known:
        return known
    found = [(p, None) for p in files]
    if not found:
        raise CourseError(f"No data files in {path}: the {source} files are {', '.join(spec.files)} (.json, "
                          f".jsonl, .parquet or .csv with the columns {', '.join(spec.columns)}).")
    return found


def interleave(groups: list[list[SFTExample]], limit: int | None) -> list[SFTExample]:
    """Take one example from each group in turn, so every source and language gets an equal share."""
    picked, queues = [], [list(g) for g in groups if g]
    while queues and (limit is None or len(picked) < limit):
        for queue in list(queues):
            if limit is not None and len(picked) >= limit:
                break
            picked.append(queue.pop(0))
            if not queue:
                queues.remove(queue)
    return picked


def load_sft_examples(
    sources: Mapping[str, str | None] | Sequence[str] = tuple(SFT_SOURCES),
    languages: tuple[str, ...] = ("en", "zh"),
    limit: int | None = None,
    seed: int = 0,
    offline: bool = False,
    hub_source: str | None = None,
) -> SFTSet:
    """Up to ``limit`` SFT examples in ``languages``, shuffled with ``seed`` and balanced across groups.

    ``sources`` maps each schema (a key of SFT_SOURCES) to where to read it: its hub id, or a local file
    or folder in that schema; a plain list of schemas reads each from its hub. With no hub reachable (or
    ``offline``) the course's samples are read. ``hub_source`` forces one hub; by default each dataset
    comes from the hub it is published on. A language asked for but absent is reported, not fatal.
    """
    where = dict(sources) if isinstance(sources, Mapping) else {s: None for s in sources}
    unknown = [s for s in where if s not in SFT_SOURCES]
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise CourseError(f"Unknown SFT source {names}: choose from {', '.join(SFT_SOURCES)} (and give each "
                          "a hub id or a local path as its value).")
    result = SFTSet([])
    groups: dict[tuple[str, str], list[SFTExample]] = {}
    for source, place in where.items():
        spec = SFT_SOURCES[source]
        location = locate(place or spec.hub_id, offline=offline, hub=hub_source or spec.hub)
        result.origins[source] = location.origin if location.path else "offline sample data/sft/"
        for path, language in sft_files(location, source):
            if language is not None and language not in languages:
                continue
            examples, skipped = map_sft_rows(read_records(path), source, language)
            result.skipped.update(skipped)
            for example in examples:
                if example.language in languages:
                    clean, masked = _deidentify_example(example)
                    result.masked.update(masked)
                    groups.setdefault((source, example.language), []).append(clean)
        absent = [x for x in languages if (source, x) not in groups]
        if absent:
            result.missing[source] = absent
    rng = random.Random(seed)
    for key in sorted(groups):
        rng.shuffle(groups[key])
    result.examples = interleave([groups[k] for k in sorted(groups)], limit)
    if not result.examples:
        raise CourseError(f"No SFT examples in {', '.join(languages)} from {', '.join(where)}: "
                          "widen LANGUAGES or SOURCES, or check the files' columns.")
    return result


def _deidentify_example(example: SFTExample) -> tuple[SFTExample, Counter]:
    """The example with identifiers masked in its question, reasoning and answer."""
    counts: Counter = Counter()
    fields = {}
    for name in ("question", "reasoning", "answer"):
        fields[name], found = deidentify(getattr(example, name))
        counts.update(found)
    return SFTExample(**{**asdict(example), **fields}), counts


def to_messages(example: SFTExample, system: str | None = None) -> list[dict[str, str]]:
    """The example as chat messages; the assistant turn is the think block, then the answer.

    The whitespace is Qwen3's own thinking format, so its template renders the turn unchanged.
    """
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": example.question})
    messages.append({"role": "assistant",
                     "content": f"{THINK_OPEN}\n{example.reasoning}\n{THINK_CLOSE}\n\n{example.answer}"})
    return messages


def to_prompt_completion(tokenizer, example: SFTExample, system: str | None = None) -> dict[str, str]:
    """The example rendered with the model's chat template and split where generation starts.

    ``prompt`` is exactly what generation sends (the template with its generation prompt), and
    ``completion`` is the rest of the rendered conversation, ending with the end-of-turn token:
    the only tokens the loss is computed on.
    """
    messages = to_messages(example, system)
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise CourseError("This chat template renders the assistant turn differently from its generation "
                          "prompt, so training and generation would disagree: use the model's own template.")
    completion = full[len(prompt):]
    eos = tokenizer.eos_token
    if eos and eos in completion:  # stop at the turn's end; the newline after it is the next turn's business
        completion = completion[: completion.rindex(eos) + len(eos)]
    return {"prompt": prompt, "completion": completion}


def count_tokens(tokenizer, rows: list[dict[str, str]]) -> list[int]:
    """Tokens in prompt + completion of each row, as the trainer will count them."""
    texts = [row["prompt"] + row["completion"] for row in rows]
    return [len(ids) for ids in tokenizer(texts)["input_ids"]] if texts else []  # HELD_OUT = 0: none


def drop_overlong(rows: list[dict], lengths: list[int], max_tokens: int) -> tuple[list[dict], int]:
    """The rows of at most ``max_tokens`` tokens, and how many were dropped (never silently truncated)."""
    kept = [row for row, n in zip(rows, lengths, strict=True) if n <= max_tokens]
    return kept, len(rows) - len(kept)


_SENTENCE_ENDS = re.compile(r"[.!?;](?=\s|$)|[。！？；]|\n")


def trim_reasoning(tokenizer, example: SFTExample, max_tokens: int) -> SFTExample | None:
    """The example with its reasoning cut at the last sentence end that lets prompt + completion fit
    ``max_tokens`` tokens, the answer kept whole; None when not even the first sentence fits."""
    def fits(ex: SFTExample) -> bool:
        return count_tokens(tokenizer, [to_prompt_completion(tokenizer, ex)])[0] <= max_tokens

    if fits(example):
        return example
    cuts = [m.end() for m in _SENTENCE_ENDS.finditer(example.reasoning)][:-1]  # the last end is the whole
    best, low, high = None, 0, len(cuts) - 1
    while low <= high:  # the longest prefix that fits, by bisection (each try renders and tokenizes)
        middle = (low + high) // 2
        candidate = replace(example, reasoning=example.reasoning[:cuts[middle]].strip())
        if fits(candidate):
            best, low = candidate, middle + 1
        else:
            high = middle - 1
    return best


@dataclass
class FittedRows:
    """The prompt/completion rows that fit the sequence length, and what fitting them did."""

    rows: list[dict]
    lengths: list[int]  # tokens of each example as written, before any trimming
    trimmed: int  # examples whose reasoning was cut at a sentence end to fit
    dropped: int  # examples that did not fit at all


def fit_rows(tokenizer, examples: list[SFTExample], max_tokens: int, overlong: str = "drop") -> FittedRows:
    """Each example as a prompt/completion row of at most ``max_tokens`` tokens. An overlong one is
    dropped (``overlong="drop"``) or has its reasoning cut at a sentence end (``"trim"``); both counted."""
    if overlong not in ("drop", "trim"):
        raise CourseError(f"OVERLONG = {overlong!r}: choose \"drop\" or \"trim\".")
    rendered = [to_prompt_completion(tokenizer, ex) for ex in examples]
    lengths = count_tokens(tokenizer, rendered)
    rows, trimmed = [], 0
    for example, row, n in zip(examples, rendered, lengths, strict=True):
        if n <= max_tokens:
            rows.append(row)
        elif overlong == "trim" and (shorter := trim_reasoning(tokenizer, example, max_tokens)) is not None:
            rows.append(to_prompt_completion(tokenizer, shorter))
            trimmed += 1
    return FittedRows(rows, lengths, trimmed, len(examples) - len(rows))


# === GRPO sets (06): verifiable questions with a gold answer ==================================
# GRPO needs prompts whose answers a rule can check. Two kinds:
#   medical-o1-verifiable-problem   "Open-ended Verifiable Question", "Ground-True Answer" (short text)
#   exam questions (CMB-Exam, MedQA) mapped as for evaluation; the gold is the option letter
# From the hub the exam questions come from the training splits. Offline they come from the
# evaluation samples in data/eval/, so every item of the run's evaluation set (written by 01) is
# held out: GRPO must never train on a test item.

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
    question = _text(record, "Open-ended Verifiable Question")
    answer = _text(record, "Ground-True Answer")
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
    source = GRPO_SOURCES[name]
    location = locate(where or source.hub_id, offline=offline)
    if location.path is None:
        return read_records(DATA_DIR / source.sample), f"offline sample data/{source.sample}", True
    path = pick_file(location.path, source.files, f"the {name} source")
    return read_records(path), location.describe(path), False


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


# === Vision-language sets (05) ================================================================
#
# Image + report pairs become a two-turn chat: the user turn holds the image and the instruction,
# the assistant turn holds the report. That is the form the chat template, the collator and
# generation all read.

VL_INSTRUCTION = ("You are a radiologist. Describe this medical image: the imaging modality, the view, "
                  "the anatomy shown and any abnormal findings.")
VL_OFFLINE_DIR = DATA_DIR / "vl"


@dataclass(frozen=True)
class VLSource:
    """Where a real image + report dataset lives and which columns hold the image, report and id."""

    hub_id: str
    config: str | None
    splits: tuple[str, ...]  # the splits it publishes; held-out rows come from the last one
    image: str
    caption: str
    id: str
    stream: bool  # read row by row: the whole dataset is far too big to download for a class
    licence: str


VL_SOURCES: dict[str, VLSource] = {
    # 1,978 train / 327 test radiology images with captions, sampled from ROCOv2 (PubMed Central).
    "unsloth/Radiology_mini": VLSource(
        "unsloth/Radiology_mini", None, ("train", "test"), image="image", caption="caption", id="image_id",
        stream=False, licence="CC BY-NC 2.0 (dataset card)"),
    # The demo subset (~162k rows) of MedTrinity-25M; gated: accept its terms on the hub page first.
    "UCSC-VLAA/MedTrinity-25M": VLSource(
        "UCSC-VLAA/MedTrinity-25M", "25M_demo", ("train",), image="image", caption="caption", id="id",
        stream=True, licence="see the dataset card (gated, research use)"),
}

# The offline samples in data/vl/ use Radiology_mini's columns, whichever dataset was asked for.
VL_OFFLINE = VLSource("data/vl", None, ("train", "test"), image="image", caption="caption", id="image_id",
                      stream=False, licence="images: see data/vl/README.md; reports: Apache-2.0")


@dataclass
class VLSet:
    """Image + report examples ready for training, and what was skipped on the way."""

    examples: list[dict]  # {"id", "messages", "images", "report"}
    origin: str  # the hub id, or "offline samples (data/vl)"
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count

    def __len__(self) -> int:
        return len(self.examples)

    def summary(self) -> str:
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items()))
        return (f"{len(self.examples)} image + report pairs from {self.origin}; skipped {skipped}"
                + (f" ({reasons})" if reasons else ""))

    def fingerprint(self) -> str:
        """A short digest of the pairs' ids and reports, for the training settings: a checkpoint trained on
        other pairs is never resumed, even where the ids are the same (as when samples change split)."""
        pairs = json.dumps([[ex["id"], ex["report"]] for ex in self.examples], ensure_ascii=False)
        return hashlib.sha256(pairs.encode("utf-8")).hexdigest()[:16]


def vl_messages(report: str | None, instruction: str = VL_INSTRUCTION) -> list[dict]:
    """The chat for one pair: a user turn (image, instruction) and, for training, the report turn."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
    if report is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": report}]})
    return messages


def vl_examples(rows: list[dict], source: VLSource, *, instruction: str = VL_INSTRUCTION,
                max_pixels: int | None = None, origin: str = "") -> VLSet:
    """Map rows of a real schema to examples; bad images and empty reports are skipped and counted."""
    from helpers.images import DEFAULT_MAX_PIXELS, UnusableImage, prepare_image

    examples, skipped = [], {}
    for row in rows:
        if not isinstance(row, dict):
            skipped["malformed"] = skipped.get("malformed", 0) + 1
            continue
        report, _ = deidentify(str(row.get(source.caption) or "").strip())
        if not report:
            skipped["no report"] = skipped.get("no report", 0) + 1
            continue
        try:
            image = prepare_image(row.get(source.image), max_pixels or DEFAULT_MAX_PIXELS)
        except UnusableImage as err:
            skipped[str(err)] = skipped.get(str(err), 0) + 1
            continue
        examples.append({"id": str(row.get(source.id, len(examples))), "images": [image], "report": report,
                         "messages": vl_messages(report, instruction)})
    return VLSet(examples, origin or source.hub_id, skipped)


def read_offline_vl_rows(split: str, folder: Path = VL_OFFLINE_DIR) -> list[dict]:
    """The offline samples of a split, in Radiology_mini's schema; the image column holds a file path."""
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        raise CourseError(f"No offline samples at {path}: the course's data/vl folder is incomplete.")
    return _local_rows([path], VL_OFFLINE)


def read_local_vl_rows(path: Path, source: VLSource, n_train: int, n_eval: int) -> tuple[list, list]:
    """(training rows, held-out rows) of a local file or folder in ``source``'s schema.

    In a folder, files named like a test or validation split ("test.jsonl", "data/test-00000.parquet")
    give the held-out rows; without one they come after the training rows. Image paths in json, jsonl
    or csv rows are relative to the file that holds them."""
    files = [path] if path.is_file() else data_files(path)
    if not files:
        raise CourseError(f"No data files in {path}: give .json, .jsonl, .parquet or .csv rows with the "
                          f"columns {source.image!r} and {source.caption!r}.")
    held = [f for f in files if re.search(r"(?:^|[-_.])(?:test|valid|validation|val)(?:$|[-_.])", f.stem)]
    train = _local_rows([f for f in files if f not in held], source, n_train + (0 if held else n_eval))
    return train[:n_train], _local_rows(held, source, n_eval) if held else train[n_train:]


def _local_rows(files: list[Path], source: VLSource, n: int | None = None) -> list:
    """Up to ``n`` rows of ``files`` (all by default), image paths made relative to their file's folder."""
    rows: list = []
    for file in files:
        for row in read_records(file):
            if n is not None and len(rows) >= n:
                return rows
            image = row.get(source.image) if isinstance(row, dict) else None
            if isinstance(image, str) and not Path(image).is_absolute():
                row = {**row, source.image: str(file.parent / image)}
            rows.append(row)
    return rows


def _hub_rows(source: VLSource, split: str, start: int, n: int, hub: str | None) -> list[dict] | None:
    """Rows [start, start + n) of a split from the hub; None when no hub is reachable."""
    from helpers import hub as hubs

    try:
        if source.stream:
            if not hubs.hub_reachable("huggingface"):
                print(f"No hub reachable: using the course's offline samples instead of {source.hub_id}.")
                return None
            from datasets import load_dataset

            hubs.limit_waiting()
            stream = load_dataset(source.hub_id, source.config, split=split, streaming=True)
            return list(stream.skip(start).take(n))
        folder = hubs.resolve_dataset(source.hub_id, source=hub)
        if folder is None:
            return None
        from datasets import load_dataset

        data = load_dataset(str(folder.path), source.config, split=split)
        return [data[i] for i in range(start, min(start + n, len(data)))]
    except CourseError:
        raise
    except Exception as err:  # gated, renamed or unreadable: one sentence saying what to do
        raise CourseError(
            f"Could not read {source.hub_id} ({type(err).__name__}: {str(err).splitlines()[0][:160]}): if it "
            "is gated, accept its terms on its hub page and log in (`hf auth login`); or choose "
            "unsloth/Radiology_mini."
        ) from err


def load_vl_sets(name: str = "unsloth/Radiology_mini", n_train: int = 8, n_eval: int = 4, *,
                 data: str | None = None, instruction: str = VL_INSTRUCTION, max_pixels: int | None = None,
                 hub: str | None = None) -> tuple[VLSet, VLSet]:
    """(train, held-out) image + report sets of a real dataset, or of the offline samples when offline.

    ``data`` is a local file or folder in ``name``'s schema, read instead of the hub. Held-out rows come
    from the dataset's test split where it has one, else from the rows after the training rows, so no
    row is in both; a held-out image that shows the same slice as a training image is dropped too
    (``drop_same_slices``), wherever the rows came from.
    """
    train, held_out = _read_vl_sets(name, n_train, n_eval, data=data, instruction=instruction,
                                    max_pixels=max_pixels, hub=hub)
    return train, drop_same_slices(train, held_out)


def _read_vl_sets(name: str, n_train: int, n_eval: int, *, data: str | None, instruction: str,
                  max_pixels: int | None, hub: str | None) -> tuple[VLSet, VLSet]:
    """(train, held-out) as read: from a local ``data`` path, the hub, or the offline samples."""
    if name not in VL_SOURCES:
        raise CourseError(f"Unknown vision-language dataset {name!r}: choose one of {', '.join(VL_SOURCES)} "
                          "(its schema), and give a local copy as DATA.")
    source = VL_SOURCES[name]
    if data:
        if not is_local_path(data):
            raise CourseError(f"DATA = {data!r} is not a local file or folder: give a path, or set "
                              f"DATA = None to read {name} from the hub.")
        location = locate(data)
        train_rows, eval_rows = read_local_vl_rows(location.path, source, n_train, n_eval)
        return (vl_examples(train_rows, source, instruction=instruction, max_pixels=max_pixels,
                            origin=location.origin),
                vl_examples(eval_rows, source, instruction=instruction, max_pixels=max_pixels,
                            origin=location.origin))
    eval_split, eval_start = (source.splits[-1], 0) if len(source.splits) > 1 else (source.splits[0], n_train)
    train_rows = _hub_rows(source, source.splits[0], 0, n_train, hub)
    if train_rows is None:
        origin = "offline samples (data/vl)"
        train = vl_examples(read_offline_vl_rows("train")[:n_train], VL_OFFLINE, instruction=instruction,
                            max_pixels=max_pixels, origin=origin)
        held_out = vl_examples(read_offline_vl_rows("test")[:n_eval], VL_OFFLINE, instruction=instruction,
                               max_pixels=max_pixels, origin=origin)
        return train, held_out
    eval_rows = _hub_rows(source, eval_split, eval_start, n_eval, hub) or []
    return (vl_examples(train_rows, source, instruction=instruction, max_pixels=max_pixels),
            vl_examples(eval_rows, source, instruction=instruction, max_pixels=max_pixels))


SAME_SLICE_SKIP = "same slice as a training image"  # the reason counted in VLSet.skipped


def drop_same_slices(train: VLSet, held_out: VLSet) -> VLSet:
    """``held_out`` without the images that show the same slice as a training image, even in another
    window, size or flip (``helpers.images.near_duplicates``): scored, they would measure memory, not
    reading. Each is counted in ``skipped`` and named, with its training twin, in one printed sentence."""
    from helpers.images import near_duplicates

    if not train.examples or not held_out.examples:
        return held_out
    pairs = near_duplicates([ex["images"][0] for ex in train.examples],
                            [ex["images"][0] for ex in held_out.examples])
    twins = {j: train.examples[i]["id"] for i, j in pairs}  # held-out index -> training id
    named = "; ".join(f"{held_out.examples[j]['id']} shows the same slice as training image {twin}"
                      for j, twin in twins.items())
    if not twins:
        print(f"Checked {_images(len(held_out), 'held-out')} against {_images(len(train), 'training')}: "
              "none shows the same slice as a training image.")
        return held_out
    if len(twins) == len(held_out):
        raise CourseError(f"Every held-out image shows the same slice as a training image ({named}): give "
                          "held-out images of other patients or slices, such as the dataset's test split.")
    print(f"{_images(len(twins), 'held-out')} dropped: {named}.")
    kept = [ex for j, ex in enumerate(held_out.examples) if j not in twins]
    return VLSet(kept, held_out.origin, {**held_out.skipped, SAME_SLICE_SKIP: len(twins)})


def _images(n: int, kind: str) -> str:
    """'1 held-out image', '4 training images'."""
    return f"{n} {kind} image{'' if n == 1 else 's'}"
