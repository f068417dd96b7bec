"""SFT sets (03): medical chain-of-thought.

Two real sources of medical chain-of-thought, each with its own column names:
  medical-o1-reasoning-SFT   Question, Complex_CoT, Response   (configs "en" and "zh")
  delicate_medical_r1_data   question, think, answer
Both become an SFTExample: a question, the reasoning (the think block) and the final answer.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from helpers.answers import THINK_CLOSE, THINK_OPEN, split_think
from helpers.data_files import Location, local_files, locate, read_records
from helpers.datasets.common import DATA_DIR, deidentify, detect_language
from helpers.errors import CourseError

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
    files = local_files(location.path or SFT_DIR, f"the {source} files are {', '.join(spec.files)} (.json, "
                        f".jsonl, .parquet or .csv with the columns {', '.join(spec.columns)})")
    known = [(p, spec.files[p.name]) for p in files if p.name in spec.files]
    return known or [(p, None) for p in files]


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
