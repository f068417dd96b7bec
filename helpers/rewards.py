"""What the reward functions of 06 stand on: reading completions, and small tested parsing rules.

06 defines its rewards in its own cells, each a few lines over the rules here (``reasoning_steps``,
``has_content``) and over ``helpers.answers.split_think``, which reads the think block and the answer.
Whether an answer is right is decided by ``helpers.answers.is_correct``, the reader 02 and 04 score
the exam with, so reward and score agree.
``reward`` turns a function that scores one answer into a reward as TRL calls it,
``fn(completions, **kwargs) -> list[float]``: one float per completion (a plain string or a
conversation), dataset columns arriving as keyword arguments with one value per completion
(``answer``, ``choices``, ``question``). Every reward made so is bounded, always finite, and never
raises: a reward that crashes stops training, and a NaN poisons every advantage in its group.
The optional teacher (an LLM judge) is here too, since it is a client, not a rule.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

MIN_STEP_WORDS = 4  # a step needs this many words (or Chinese characters) to count

# --- reading completions --------------------------------------------------------------------

def completion_text(completion: object) -> str:
    """The text of one completion: a string, or the assistant turns of a conversation."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    if not isinstance(completion, list | tuple):
        return ""
    parts = []
    for message in completion:
        if isinstance(message, str):
            parts.append(message)
        elif isinstance(message, Mapping) and message.get("role", "assistant") == "assistant":
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):  # multimodal form: [{"type": "text", "text": ...}]
                parts += [p["text"] for p in content
                          if isinstance(p, Mapping) and isinstance(p.get("text"), str)]
    return "".join(parts)


def _texts(completions: object) -> list[str]:
    if completions is None:
        return []
    if isinstance(completions, str | Mapping):
        return [completion_text(completions)]
    try:
        return [completion_text(c) for c in completions]
    except TypeError:  # not iterable
        return []


def _column(values: object, i: int) -> object:
    """Row ``i`` of a dataset column as TRL passes it (a list), or the value itself if it is not a list."""
    if isinstance(values, list | tuple):
        return values[i] if i < len(values) else None
    return values


def reward(low: float, high: float, fallback: float = 0.0):
    """Turn ``score(text, **row) -> float``, which scores one answer, into a reward function as TRL
    calls it: ``fn(completions, **columns) -> list[float]``.

    ``row`` holds this completion's value of each column (``answer``, ``choices``, ``question``, TRL's
    ``completion_ids``...). Each score is clamped to ``[low, high]``; one that raises or is not finite
    scores ``fallback``. The reward keeps the function's name (TRL logs it), and has ``.bounds`` and
    ``.score`` (the one-answer function, to try by hand)."""
    def wrap(score: Callable[..., float]) -> Callable[..., list[float]]:
        @functools.wraps(score)
        def reward_function(completions, **columns) -> list[float]:
            out = []
            for i, text in enumerate(_texts(completions)):
                row = {name: _column(values, i) for name, values in columns.items()}
                try:
                    value = float(score(text, **row))
                except Exception:  # a reward must never stop training: an unreadable case scores the fallback
                    value = fallback
                out.append(min(high, max(low, value if math.isfinite(value) else fallback)))
            return out

        reward_function.bounds, reward_function.score = (low, high), score
        return reward_function

    return wrap


def has_content(text: str) -> bool:
    """Whether ``text`` holds a letter, digit or character (not only spaces and punctuation)."""
    return any(c.isalnum() for c in text)


# --- reasoning steps ------------------------------------------------------------------------

# A step ends at a line break, at ". " / "? " / "! " (not inside "6.5"), or at Chinese end punctuation.
_STEP_END = re.compile(r"\n+|(?<=[.!?;])\s+|(?<=[。！？；])")
_WORD = re.compile(r"[^\W\d_\u3400-\u9fff]+|[\u3400-\u9fff]", re.UNICODE)  # a word, or one Chinese character


def reasoning_steps(think: str) -> list[str]:
    """The distinct steps of a think block: sentences or lines with at least MIN_STEP_WORDS words.

    Two steps are the same when they have the same words, ignoring numbers and case, so "Step 1: check
    the ECG" and "Step 2: check the ECG" count once.
    """
    steps, seen = [], set()
    for piece in _STEP_END.split(think):
        words = [w.casefold() for w in _WORD.findall(piece)]
        key = " ".join(words)
        if len(words) >= MIN_STEP_WORDS and key not in seen:
            seen.add(key)
            steps.append(piece.strip())
    return steps


# --- length ---------------------------------------------------------------------------------

def count_tokens(text: str) -> int:
    """A rough token count for a text without token ids: words plus Chinese characters."""
    return len(re.findall(r"[\u3400-\u9fff]|[^\s\u3400-\u9fff]+", text))


# --- the teacher (an LLM judge) -------------------------------------------------------------

TEACHER_PROMPT = """You grade a short answer to a medical question against the reference answer.

Question: {question}
Reference answer: {answer}
Reply to grade: {reply}

How correct and clinically sound is the reply's final answer? Reply with one integer from 0 (wrong or \
unsafe) to 10 (fully correct), and nothing else."""


def parse_grade(reply: object) -> float | None:
    """The 0–10 grade in a judge's reply, as a fraction of 1; None when there is none."""
    match = re.search(r"(?<![\d.])(\d+(?:\.\d+)?)", reply) if isinstance(reply, str) else None
    if match is None or float(match.group(1)) > 10:
        return None
    return float(match.group(1)) / 10


def _default_ask() -> Callable[[str], str] | None:
    """The course's judge client when one is set up in the environment, else None."""
    try:
        from helpers.judge import ask_judge, judge_config
    except ImportError:
        return None
    return (lambda prompt: ask_judge(prompt, max_tokens=8)) if judge_config() is not None else None


def teacher_available() -> bool:
    """Whether a judge is set up in the environment (JUDGE_API_KEY), so ``teacher_reward`` can grade."""
    return _default_ask() is not None


def teacher_reward(completions, answer=None, question=None, prompts=None, ask=None, **kwargs) -> list[float]:
    """A judge model's 0–10 grade of each answer, divided by 10.

    ``ask(prompt) -> reply`` is the judge; by default the course's OpenAI-compatible client
    (``helpers.judge``, set up with JUDGE_API_KEY, cached on disk). With no judge every completion
    scores 0, which changes no advantage. A grade that fails gets the mean of the others, so a flaky
    endpoint neither rewards nor punishes a completion.
    """
    texts = _texts(completions)
    ask = ask or _default_ask()
    if ask is None:
        return [0.0] * len(texts)
    grades: list[float | None] = []
    for i, text in enumerate(texts):
        q = _column(question, i) or completion_text(_column(prompts, i))
        prompt = TEACHER_PROMPT.format(question=q, answer=_column(answer, i) or "", reply=text.strip())
        try:
            grades.append(parse_grade(ask(prompt)))
        except Exception:  # the endpoint failed: handled below, training goes on
            grades.append(None)
    known = [g for g in grades if g is not None]
    fill = sum(known) / len(known) if known else 0.0
    return [g if g is not None else fill for g in grades]


teacher_reward.bounds = (0.0, 1.0)


# --- combining rewards ----------------------------------------------------------------------

def reward_name(fn: Callable) -> str:
    """The name TRL logs a reward under (``functools.partial`` unwrapped)."""
    while hasattr(fn, "func"):
        fn = fn.func
    return getattr(fn, "__name__", type(fn).__name__)


def mix_weights(rule_weights: Mapping[str, float], teacher_share: float = 0.0) -> dict[str, float]:
    """Weights that make the total reward ``(1 - share) × (weighted mean of the rules) + share × teacher``.

    ``mix_weights({"format_reward": 1, "accuracy_reward": 2}, 0.4)`` gives format 0.2, accuracy 0.4,
    teacher 0.4. With ``teacher_share=0`` there is no teacher weight (leave the teacher out).
    """
    share = min(1.0, max(0.0, float(teacher_share)))
    total = sum(rule_weights.values())
    if total <= 0:
        raise ValueError("The rule weights must add up to more than 0.")
    weights = {name: (1 - share) * w / total for name, w in rule_weights.items()}
    if share > 0:
        weights["teacher_reward"] = share
    return weights


def score_completions(completions: Sequence, reward_funcs: Iterable[Callable],
                      weights: Mapping[str, float] | None = None, **columns) -> list[dict[str, float]]:
    """Each reward's score of each completion, and the weighted total: one dict per completion."""
    texts = _texts(completions)
    rows: list[dict[str, float]] = [{} for _ in texts]
    for fn in reward_funcs:
        name = reward_name(fn)
        for row, value in zip(rows, fn(completions, **columns), strict=True):
            row[name] = value
    for row in rows:
        row["total"] = sum((weights or {}).get(name, 1.0) * value for name, value in row.items())
    return rows
