"""The course's datasets: each real schema mapped to one internal form, with offline samples in data/.

Every loader takes the real dataset by its hub id (through ``helpers.hub``) and, when no hub is
reachable, reads the course's own samples in ``data/`` through the same schema mapping. Rows that
cannot be used are counted and skipped, never fatal.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from helpers.errors import CourseError
from helpers.hub import resolve_dataset

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


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
    origins: dict[str, str] = field(default_factory=dict)  # source -> the folder its files were read from
    skipped: Counter = field(default_factory=Counter)  # reason -> count

    def counts(self) -> Counter:
        """How many examples each (source, language) contributes."""
        return Counter((ex.source, ex.language) for ex in self.examples)


def _strip_think_tags(text: str) -> str:
    # Some sources already wrap the reasoning in <think> tags; the chat format adds them once.
    return text.replace(THINK_OPEN, "").replace(THINK_CLOSE, "").strip()


def map_sft_rows(rows: list[dict], source: str, language: str) -> tuple[list[SFTExample], Counter]:
    """The rows of ``source``'s schema as SFTExamples, and a count of the rows skipped, by reason."""
    q_col, r_col, a_col = SFT_SOURCES[source].columns
    examples, skipped, seen = [], Counter(), set()
    for row in rows:
        values = [row.get(col) if isinstance(row, dict) else None for col in (q_col, r_col, a_col)]
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
            examples.append(SFTExample(question, reasoning, answer, language, source))
    return examples, skipped


def read_sft_source(folder: Path, source: str, languages: tuple[str, ...]) -> dict[str, list[dict]]:
    """The raw rows of ``source``'s files in ``folder`` (a hub snapshot or data/sft/), by language."""
    rows: dict[str, list[dict]] = {}
    for name, language in SFT_SOURCES[source].files.items():
        if language not in languages:
            continue
        path = Path(folder) / name
        if not path.is_file():
            names = ", ".join(SFT_SOURCES[source].files)
            raise CourseError(f"{path} is missing: the {source} files are {names}.")
        rows.setdefault(language, []).extend(read_records(path))
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
    """Up to ``limit`` SFT examples from ``sources`` in ``languages``: the real datasets when their hub
    answers, the course's samples otherwise; shuffled with ``seed`` and balanced across groups.

    ``hub_source`` forces one hub; by default each dataset comes from the hub it is published on.
    """
    unknown = [s for s in sources if s not in SFT_SOURCES]
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise CourseError(f"Unknown SFT source {names}: choose from {', '.join(SFT_SOURCES)}.")
    result = SFTSet([])
    groups: dict[tuple[str, str], list[SFTExample]] = {}
    for source in sources:
        spec = SFT_SOURCES[source]
        found = resolve_dataset(spec.hub_id, source=hub_source or spec.hub)
        folder = found.path if found is not None else Path(samples)
        result.origins[source] = str(folder)
        for language, rows in read_sft_source(folder, source, languages).items():
            examples, skipped = map_sft_rows(rows, source, language)
            result.skipped.update(skipped)
            groups.setdefault((source, language), []).extend(examples)
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
