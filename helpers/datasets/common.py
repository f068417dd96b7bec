"""What every dataset family shares: the data folder, the source of a real dataset and its reader,
the skipped-row signal, and de-identification."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from helpers.data_files import locate, pick_file, read_records

DATA_DIR = Path(__file__).resolve().parents[2] / "data"


class Skip(ValueError):
    """Raised by a schema mapper for a row it cannot use; the message is the reason."""


def text_of(record: dict, key: str) -> str:
    """The stripped text of one field of a row ("" when absent); a list or an object is malformed."""
    value = record.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str | int | float):
        raise Skip("malformed")
    return str(value).strip()


@dataclass(frozen=True)
class Source:
    """A real dataset of questions: hub id, files inside its snapshot, and the offline sample."""

    name: str
    kind: str  # "mcq" (a gold option letter) or "open" (a reference or short gold answer)
    hub_id: str
    files: tuple[str, ...]  # glob patterns, best first: the hub's layout, then the GitHub repository's
    sample: str  # the offline sample, relative to data/


def read_source(source: Source, where: str | None = None, offline: bool = False) -> tuple[list, str, bool]:
    """(rows, origin, is_sample) of ``source``, read from ``where`` (its hub id by default, or a local
    file or folder in the real layout), else from its offline sample in data/."""
    location = locate(where or source.hub_id, offline=offline)
    if location.path is None:
        return read_records(DATA_DIR / source.sample), f"offline sample data/{source.sample}", True
    path = pick_file(location.path, source.files, f"the {source.name} source")
    rows = read_records(path)
    if source.name == "cmb-exam" and location.path.is_dir():
        rows = _with_cmb_answers(rows, location.path)
    return rows, location.describe(path), False


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

