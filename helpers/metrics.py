"""How good is an answer: the chosen letter, accuracy with an interval, and open-answer scores.

Every function here takes plain strings and numbers, never a model, so each can be tested on
hand-written answers. Scoring always reads the answer *after* the think block: the reasoning
is kept in the saved record for people to read, but only the final answer is graded.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from functools import lru_cache

# --- the think block -----------------------------------------------------------------------
# Reasoning models write "<think>…</think>" before the answer. Some chat templates put the
# opening tag into the prompt, so a reply may hold only the closing tag.

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def split_think(text: str) -> tuple[str, str]:
    """(think block, answer) of a reply; the think block is "" when there is none.

    Everything before the last ``</think>`` is reasoning. A reply with an opening ``<think>`` and
    no closing tag ran out of tokens while reasoning: all of it after the tag is reasoning and
    the answer is what came before the tag (usually nothing).
    """
    if THINK_CLOSE in text:
        think, _, answer = text.rpartition(THINK_CLOSE)
        before, opened, inside = think.partition(THINK_OPEN)
        return (inside if opened else before).strip(), answer.strip()
    if THINK_OPEN in text:
        answer, _, think = text.partition(THINK_OPEN)
        return think.strip(), answer.strip()
    return "", text.strip()


def strip_think(text: str) -> str:
    """The reply without its think block: the part that is scored."""
    return split_think(text)[1]


def has_think_block(text: str) -> bool:
    """Whether the reply reasons in a closed, non-empty think block before answering."""
    return THINK_CLOSE in text and bool(split_think(text)[0])


# --- the chosen letter of a multiple-choice answer ---------------------------------------
# Models answer "B", "**B**", "(B)", "The answer is B.", "答案：C", "选B", or quote the option's
# text. We read the letter in tiers of decreasing certainty; the first tier that finds anything
# decides. Two different letters in that tier mean the answer is ambiguous: None, never a guess.

_NEG_ZH = "不"  # "不选A" (don't choose A) must not read as "选A"
_GAP = r"[\s:=\-*_#>(\[{【「“\"']*"  # what may sit between a cue and its letter: "Answer:** (B"
_OPTION_WORD = r"(?:(?:option|choice|选项|选)\s*)?"
# Negations that follow a letter ("B is wrong", "B项错误"); not a bare "不", which many option texts hold.
_NEGATION = re.compile(r"\b(?:not|incorrect|wrong|false|never|except|unlikely|rule[sd]? out)\b|"
                       r"错误|不正确|不对|不是|不选|不考虑|排除|除外", re.IGNORECASE)


def _letters(choices: str) -> str:
    return "".join(dict.fromkeys(c for c in choices.upper() if "A" <= c <= "Z"))


def _letter(letters: str) -> str:
    """One allowed letter: a capital, or a small letter that ends the phrase ("answer: b.", not "a bit")."""
    return rf"(?:(?-i:[{letters}])|(?-i:[{letters.lower()}])(?=\s*(?:$|[.)\]】,，。;；!！*])))"


@lru_cache(maxsize=16)
def _cue_patterns(letters: str) -> tuple[list[re.Pattern], list[re.Pattern]]:
    """(final-answer patterns, answer-statement patterns) for the allowed letters."""
    one = _letter(letters)
    # A letter, or a short list of letters such as "A or B" / "A、C" (which is then ambiguous).
    many = rf"(?P<letters>{one}(?:\s*(?:,|、|/|and|or|和|或|与)\s*{one})*)(?![A-Za-z0-9])"
    final = [
        rf"(?:final\s+answer|最终答案|最终选择|最后答案)\s*(?:is|为|是|应为)?{_GAP}{_OPTION_WORD}{many}",
        rf"\\boxed\{{\s*(?:\\text\{{)?\s*{many}",  # "\boxed{B}", as maths-trained models write
    ]
    statements = [
        # "the answer is B", "Answer: B", "correct answer would be (B)", "答案是B", "答案：C"
        rf"answer(?:\s+(?:is|would\s+be|should\s+be|will\s+be|must\s+be))?{_GAP}{_OPTION_WORD}{many}",
        rf"答案(?:是|为|应为|应该是|应是|选)?{_GAP}{_OPTION_WORD}{many}",
        # "I choose B", "I would pick C", "选B", "应选择D" (but not "不选A" or "选项A")
        rf"\bI\s+(?:would\s+|will\s+|'d\s+)?(?:choose|pick|select|go\s+with){_GAP}{_OPTION_WORD}{many}",
        rf"(?<!{_NEG_ZH})(?:应该|应)?选(?:择)?(?!项){_GAP}{many}",
        rf"(?:correct|right|best)\s+(?:option|choice)(?:\s+is)?{_GAP}{many}",
        rf"正确(?:的)?(?:选项|选择)(?:是|为)?{_GAP}{many}",
        # "B is correct", "B is the best answer", "B项正确", "B是正确的"
        rf"(?<![A-Za-z0-9]){_OPTION_WORD}(?P<letter>{one})\s*(?:项|选项)?\s*"
        rf"(?:is\s+(?:the\s+)?(?:correct|right|best)|正确|是正确的|是对的|为正确答案|最佳)",
    ]
    flags = re.IGNORECASE
    return ([re.compile(p, flags) for p in final], [re.compile(p, flags) for p in statements])


@lru_cache(maxsize=16)
def _formatted_patterns(letters: str) -> list[re.Pattern]:
    """Letters set apart by formatting: line starts, brackets, bold, "Option B", "B项"."""
    one = f"[{letters}]"  # capitals only: a lone "a" is an article
    return [re.compile(p, re.MULTILINE) for p in (
        rf"^\s*(?:[-*>#]+\s*)?(?P<letter>{one})\s*(?:[.)、:]|$)",  # "B. Metformin", "C)", "D、…", "B"
        rf"[(\[{{【]\s*(?P<letter>{one})\s*[)\]}}】]",  # "(B)", "[C]", "【D】"
        rf"\*\*\s*(?P<letter>{one})(?![A-Za-z0-9])",  # "**B**", "**B. Metformin**"
        rf"(?i:option|choice|选项)\s*(?P<letter>{one})(?![A-Za-z0-9])",  # "option B", "选项B"
        rf"(?<![A-Za-z0-9])(?P<letter>{one})\s*(?:项|选项)",  # "B项", "C选项"
    )]


def _found(pattern: re.Pattern, text: str) -> list[tuple[str, int]]:
    """(letters, end position) of every match; letters hold several when the match lists some."""
    found = []
    for match in pattern.finditer(text):
        groups = match.groupdict()
        raw = groups.get("letters") or groups.get("letter") or ""
        found.append(("".join(dict.fromkeys(c for c in raw.upper() if "A" <= c <= "Z")), match.end()))
    return found


def _single(candidates: list[str]) -> str | None:
    """The one letter all candidates agree on, else None (ambiguous)."""
    distinct = set("".join(candidates))
    return distinct.pop() if len(distinct) == 1 else None


def _negated_after(text: str, end: int) -> bool:
    """Whether the clause right after a letter negates it: "option B is wrong", "B项错误"."""
    clause = re.split(r"[.;!?。；！？\n,，]", text[end:end + 40], maxsplit=1)[0]
    return bool(_NEGATION.search(clause))


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().casefold()


def _by_option_text(answer: str, options: Mapping[str, str], letters: str) -> str | None:
    """The letter whose option text the answer quotes, when exactly one is quoted."""
    said = _normalise(answer)
    texts = {k.upper(): _normalise(str(v)).strip(" .。") for k, v in options.items() if k.upper() in letters}
    quoted = {k: t for k, t in texts.items() if len(t) >= 2 and t in said}
    # "aspirin" inside a quoted "aspirin and clopidogrel" is not a second choice.
    kept = [k for k, t in quoted.items() if not any(t != o and t in o for o in quoted.values())]
    return kept[0] if len(kept) == 1 else None


def extract_choice(text: str, choices: str = "ABCDE", *,
                   options: Mapping[str, str] | None = None) -> str | None:
    """The one letter a free-form answer chooses (Chinese or English), or None if it cannot be read.

    ``choices`` are the allowed letters; ``options`` (letter → option text), when given, also let
    an answer that quotes an option's text instead of its letter count. The think block is ignored.
    Never raises, never guesses: no letter or two different letters give None.
    """
    if not isinstance(text, str):
        return None
    letters = _letters(choices)
    if not letters:
        return None
    answer = unicodedata.normalize("NFKC", strip_think(text))
    bare = re.sub(r"[\s*_()\[\]{}【】.。:：,，!！]", "", answer)
    if len(bare) == 1 and bare.upper() in letters:  # the whole reply is one letter
        return bare.upper()
    final, statements = _cue_patterns(letters)
    finals = [letters_ for p in final for letters_, _ in _found(p, answer)]
    if finals:  # a final answer overrides earlier reasoning; the last one counts
        return _single(finals[-1:])
    stated = [letters_ for p in statements for letters_, _ in _found(p, answer)]
    if stated:
        return _single(stated)
    formatted = [found for p in _formatted_patterns(letters) for found in _found(p, answer)]
    kept = [letters_ for letters_, end in formatted if not _negated_after(answer, end)]
    if formatted:
        return _single(kept)
    return _by_option_text(answer, options, letters) if options else None
