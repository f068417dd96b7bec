"""The course's datasets: each real schema mapped to one internal form, with offline samples in data/.

Every loader takes the real dataset by its hub id (through ``helpers.hub``) and, when no hub is
reachable, reads the course's own samples in ``data/`` through the same schema mapping. Rows that
cannot be used are counted and skipped, never fatal.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from helpers.errors import CourseError
from helpers.hub import resolve_dataset

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def detect_language(text: str) -> str:
    """'zh' when at least a fifth of the letters are CJK characters, else 'en'."""
    cjk = sum(1 for ch in text if "\u4e00" <= ch <= "\u9fff")
    letters = sum(1 for ch in text if ch.isalpha())
    return "zh" if letters and cjk / letters >= 0.2 else "en"


def read_records(path: Path) -> list[dict]:
    """The rows of a .json (a list of objects) or .jsonl (one object a line) file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    rows = json.loads(text)
    if not isinstance(rows, list):
        raise CourseError(f"{path} should hold a JSON list of rows: fix or remove the file.")
    return rows


# --- SFT sets (03) ----------------------------------------------------------------------------
#
# Two real sources of medical chain-of-thought, each with its own column names:
#   medical-o1-reasoning-SFT   Question, Complex_CoT, Response   (configs "en" and "zh")
#   delicate_medical_r1_data   question, think, answer
# Both become an SFTExample: a question, the reasoning (the think block) and the final answer.

SFT_DIR = DATA_DIR / "sft"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class SFTSource:
    """A real SFT dataset: its hub id, its configs (None: the default) and its column names."""

    hub_id: str
    configs: tuple[str | None, ...]
    columns: tuple[str, str, str]  # question, reasoning, answer


SFT_SOURCES: dict[str, SFTSource] = {
    "medical-o1-reasoning-SFT": SFTSource(
        "FreedomIntelligence/medical-o1-reasoning-SFT", ("en", "zh"), ("Question", "Complex_CoT", "Response")),
    "delicate_medical_r1_data": SFTSource(
        "krisfu/delicate_medical_r1_data", (None,), ("question", "think", "answer")),
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
    origins: dict[str, str] = field(default_factory=dict)  # source -> "hub" or the samples' folder
    skipped: Counter = field(default_factory=Counter)  # reason -> count

    def counts(self) -> Counter:
        """How many examples each (source, language) contributes."""
        return Counter((ex.source, ex.language) for ex in self.examples)


def _strip_think_tags(text: str) -> str:
    # Some sources already wrap the reasoning in <think> tags; the chat format adds them once.
    return text.replace(THINK_OPEN, "").replace(THINK_CLOSE, "").strip()


def map_sft_rows(rows: list[dict], source: str) -> tuple[list[SFTExample], Counter]:
    """The rows of ``source``'s schema as SFTExamples, and a count of the rows skipped, by reason."""
    q_col, r_col, a_col = SFT_SOURCES[source].columns
    examples, skipped, seen = [], Counter(), set()
    for row in rows:
        values = [row.get(col) for col in (q_col, r_col, a_col)]
        if not all(isinstance(v, str) for v in values):
            skipped["missing column"] += 1
            continue
        question, reasoning, answer = values[0].strip(), _strip_think_tags(values[1]), values[2].strip()
        if not (question and reasoning and answer):
            skipped["empty field"] += 1
        elif question in seen:
            skipped["duplicate question"] += 1
        else:
            seen.add(question)
            examples.append(SFTExample(question, reasoning, answer, detect_language(question), source))
    return examples, skipped


def schema_of(row: dict) -> str | None:
    """The SFT source whose column names ``row`` has, or None."""
    for name, spec in SFT_SOURCES.items():
        if all(col in row for col in spec.columns):
            return name
    return None


def read_sft_samples(folder: Path = SFT_DIR) -> dict[str, list[dict]]:
    """The offline sample rows in ``folder``, grouped by the source whose schema they follow."""
    files = sorted([*folder.glob("*.json"), *folder.glob("*.jsonl")])
    if not files:
        raise CourseError(f"No SFT samples in {folder}: restore data/sft/ from the course repository.")
    grouped: dict[str, list[dict]] = {}
    for path in files:
        rows = read_records(path)
        source = schema_of(rows[0]) if rows else None
        if source is not None:  # files of other schemas (if any) belong to other notebooks
            grouped.setdefault(source, []).extend(rows)
    return grouped


def _read_hub_rows(folder: Path, source: str, languages: tuple[str, ...]) -> list[dict]:
    from datasets import load_dataset

    rows: list[dict] = []
    for config in SFT_SOURCES[source].configs:
        if config is not None and config not in languages:
            continue
        rows.extend(load_dataset(str(folder), name=config, split="train").to_list())
    return rows


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
    sources: tuple[str, ...] = tuple(SFT_SOURCES),
    languages: tuple[str, ...] = ("en", "zh"),
    limit: int | None = None,
    seed: int = 0,
    samples: Path = SFT_DIR,
    hub_source: str | None = None,
) -> SFTSet:
    """Up to ``limit`` SFT examples from ``sources`` in ``languages``: the real datasets when a hub
    answers, the course's samples otherwise; shuffled with ``seed`` and balanced across groups."""
    unknown = [s for s in sources if s not in SFT_SOURCES]
    if unknown:
        raise CourseError(f"Unknown SFT source {', '.join(unknown)}: choose from {', '.join(SFT_SOURCES)}.")
    result, offline = SFTSet([]), None
    groups: dict[tuple[str, str], list[SFTExample]] = {}
    for source in sources:
        found = resolve_dataset(SFT_SOURCES[source].hub_id, source=hub_source)
        if found is not None:
            rows, result.origins[source] = _read_hub_rows(found.path, source, languages), "hub"
        else:
            offline = offline if offline is not None else read_sft_samples(samples)
            rows, result.origins[source] = offline.get(source, []), str(samples)
        examples, skipped = map_sft_rows(rows, source)
        result.skipped.update(skipped)
        for ex in examples:
            if ex.language in languages:
                groups.setdefault((ex.source, ex.language), []).append(ex)
    rng = random.Random(seed)
    for key in sorted(groups):
        rng.shuffle(groups[key])
    result.examples = interleave([groups[k] for k in sorted(groups)], limit)
    if not result.examples:
        raise CourseError(f"No SFT examples in {', '.join(languages)} from {', '.join(sources)}: "
                          "widen LANGUAGES or SOURCES.")
    return result


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
    return [len(ids) for ids in tokenizer(texts)["input_ids"]]


def drop_overlong(rows: list[dict], lengths: list[int], max_tokens: int) -> tuple[list[dict], int]:
    """The rows of at most ``max_tokens`` tokens, and how many were dropped (never silently truncated)."""
    kept = [row for row, n in zip(rows, lengths, strict=True) if n <= max_tokens]
    return kept, len(rows) - len(kept)
