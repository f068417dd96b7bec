"""What an answer says: its think block, the option letter it chooses, whether it names the gold answer.

One reader for every place the course grades an answer: 02 and 04 score exam replies with it, and the
accuracy reward of 06 pays with it, so a reply the exam counts as right is a reply GRPO is paid for.
Every function takes plain strings, never raises on odd input, and never guesses: an answer that
hedges between candidates, or that can be read two ways, counts as not naming anything.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from functools import lru_cache
from typing import Literal, overload

# --- the think block -----------------------------------------------------------------------
# Reasoning models write "<think>…</think>" before the answer. Some chat templates put the
# opening tag into the prompt, so a reply may hold only the closing tag.

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_TAGS = re.compile(f"{re.escape(THINK_OPEN)}|{re.escape(THINK_CLOSE)}")


@overload
def split_think(text: str, *, strict: Literal[False] = False, opened: bool = False,
                block_only: bool = False) -> tuple[str, str]: ...
@overload
def split_think(text: str, *, strict: Literal[True], opened: bool = False,
                block_only: bool = False) -> tuple[str, str] | None: ...
def split_think(text: str, *, strict: bool = False, opened: bool = False,
                block_only: bool = False) -> tuple[str, str] | None:
    """(think block, answer) of a reply, both stripped; the think block is "" when there is none.

    By default every reply is read, for scoring: everything before the last ``</think>`` is
    reasoning (after its ``<think>``, when there is one). A reply with an opening ``<think>`` and no
    closing tag ran out of tokens while reasoning: all of it after the tag is reasoning and the
    answer is what came before the tag (usually nothing).

    ``strict`` reads only a well-formed reply, for the format checks of 03 and 06, and gives None
    for any other: exactly one block at the start (spaces may come first), ``<think>`` … ``</think>``
    then the answer, no other tag anywhere. Its reasoning or answer may be "" (a block cut off
    after closing, or an empty one): callers decide whether that counts. With ``opened`` the
    ``<think>`` may be missing, because the prompt already opened the block; the default reading
    takes that case always.

    ``block_only`` reads a text that is a think block alone, such as a dataset's reasoning column
    with or without its tags: all of it, the tags removed, is reasoning and the answer is "".
    """
    if block_only:
        return _TAGS.sub("", text).strip(), ""
    if strict:
        return _one_block(text, opened)
    if THINK_CLOSE in text:
        think, _, answer = text.rpartition(THINK_CLOSE)
        before, opening, inside = think.partition(THINK_OPEN)
        return (inside if opening else before).strip(), answer.strip()
    if THINK_OPEN in text:
        answer, _, think = text.partition(THINK_OPEN)
        return think.strip(), answer.strip()
    return "", text.strip()


def _one_block(text: str, opened: bool) -> tuple[str, str] | None:
    if text.count(THINK_CLOSE) != 1 or text.count(THINK_OPEN) > 1:
        return None
    think, _, answer = text.partition(THINK_CLOSE)
    if THINK_OPEN in answer:
        return None
    before, opening, inside = think.partition(THINK_OPEN)
    if opening:
        if before.strip():  # text before the block: not "a think block, then an answer"
            return None
        think = inside
    elif not opened:
        return None
    return think.strip(), answer.strip()


def has_think_block(text: str, *, opened: bool = False) -> bool:
    """Whether the reply opens with one closed, non-empty think block (``split_think``'s strict
    reading; ``opened``: the prompt already opened it)."""
    parts = split_think(text, strict=True, opened=opened)
    return parts is not None and bool(parts[0])


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
        rf"(?<![A-Za-z0-9])[(\[{{【]\s*(?P<letter>{one})\s*[)\]}}】]",  # "(B)", "[C]", "【D】"; not "Rh(D)"
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


def _letter_free(answer: str, options: Mapping[str, str], letters: str) -> str:
    """``answer`` with every quoted option text that holds a letter of its own ("Rh(D) positive",
    "Vitamin D", "C-reactive protein") blanked out, so that letter is not read as a choice."""
    for text in options.values():
        if re.search(rf"(?<![A-Za-z])[{letters}](?![a-z])", str(text)):
            answer = re.sub(r"\s+".join(map(re.escape, str(text).split())), "〈option〉", answer,
                            flags=re.IGNORECASE)
    return answer


# Options made only of words that prose uses all the time ("None", "All of the above", "以上都是") count
# only as the whole answer: "none of these fit" does not choose the option "None".
_COMMON_WORDS = frozenset("none all both neither nothing no yes true false other above below of the these "
                          "those of them 无 以 上 都 是 不 均 对 错 皆 非".split())


def _names_option(answer: str, text: str) -> bool:
    """Whether the answer names this option's text (as ``names_answer`` does a gold answer)."""
    option = normalise(text)
    if set(re.findall(rf"[{_HAN}]|[^\W_{_HAN}]+", option)) <= _COMMON_WORDS:
        said = _fold(answer)
        cues = list(_CUE.finditer(said))
        return bool(option) and normalise(said[cues[-1].end():] if cues else said) == option
    return names_answer(answer, text)


def _by_option_text(answer: str, options: Mapping[str, str], letters: str) -> str | None:
    """The letter of the one option whose text the answer names (``_names_option``), else None."""
    named = {k.upper(): normalise(str(v)) for k, v in options.items()
             if k.upper() in letters and _names_option(answer, str(v))}
    # "aspirin" inside a named "aspirin and clopidogrel" is not a second choice.
    kept = [k for k, t in named.items() if not any(t != o and f" {t} " in f" {o} " for o in named.values())]
    return kept[0] if len(kept) == 1 else None


def extract_choice(text: str, choices: str = "ABCDE", *,
                   options: Mapping[str, str] | None = None) -> str | None:
    """The one letter a free-form answer chooses (Chinese or English), or None if it cannot be read.

    ``choices`` are the allowed letters; ``options`` (letter → option text), when given, also let
    an answer that names an option's text instead of its letter count (by ``names_answer``'s rule),
    and keep a letter inside an option's text ("Rh(D) positive") from being read as a choice.
    The think block is ignored. Never raises, never guesses: no letter or two letters give None.
    """
    if not isinstance(text, str):
        return None
    letters = _letters(choices if not options else "".join(options))
    if not letters:
        return None
    answer = unicodedata.normalize("NFKC", split_think(text)[1])
    bare = re.sub(r"[\s*_()\[\]{}【】.。:：,，!！]", "", answer)
    if len(bare) == 1 and bare.upper() in letters:  # the whole reply is one letter
        return bare.upper()
    said = _letter_free(answer, options, letters) if options else answer
    final, statements = _cue_patterns(letters)
    finals = [letters_ for p in final for letters_, _ in _found(p, said)]
    if finals:  # a final answer overrides earlier reasoning; the last one counts
        return _single(finals[-1:])
    stated = [letters_ for p in statements for letters_, _ in _found(p, said)]
    if stated:
        return _single(stated)
    formatted = [found for p in _formatted_patterns(letters) for found in _found(p, said)]
    kept = [letters_ for letters_, end in formatted if not _negated_after(said, end)]
    if formatted:
        return _single(kept)
    return _by_option_text(answer, options, letters) if options else None


# --- whether an answer names the gold one -------------------------------------------------
# Open questions (medical-o1-verifiable-problem) have a short gold text: "Membranous GN,
# subepithelial deposits". An answer names it when the gold appears whole (never cut at its commas),
# as a phrase, in the sentence where the answer commits ("The most likely diagnosis is …", "…is the
# most likely cause", or a short first sentence), and that sentence neither hedges ("X or Y", a list of
# candidates, "possibly X") nor negates it ("not X", "X is unlikely").

# Common synonyms of gold answers that string matching would otherwise miss (keys are normalised).
ALIASES: dict[str, tuple[str, ...]] = {
    "epinephrine": ("adrenaline",),
    "n acetylcysteine": ("acetylcysteine", "nac"),
    "thiamine": ("vitamin b1",),
    "addison disease": ("primary adrenal insufficiency",),
    "respiratory syncytial virus": ("rsv",),
    "异位妊娠": ("宫外孕",),
    "维生素b1": ("硫胺素",),
    "呼吸道合胞病毒": ("rsv",),
}
MAX_EXTRA_WORDS = 8  # words a short answer may add around the gold without a cue: "X is the likely cause"
MAX_LEAD_WORDS = 3  # words between a cue and the gold: "the diagnosis is most likely acute X"
_HAN = "\u3400-\u9fff"
_GOLD = "\ue000"  # stands for the gold answer once it has been found (a private-use character)


def _fold(text: str) -> str:
    """Full-width to half-width, accents off, lower case; "%" kept as a word so "70%" is not "70 mg"."""
    text = unicodedata.normalize("NFKC", text)  # "Ａ１，" -> "A1,"
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))  # é -> e
    return text.casefold().replace("%", " percent ").replace(_GOLD, " ")


def normalise(text: str) -> str:
    """Text to compare: folded (``_fold``), punctuation and hyphens as spaces, no spaces in Chinese."""
    text = re.sub(r"[\W_]+", " ", _fold(text)).strip()
    return re.sub(rf"\s*([{_HAN}])\s*", r"\1", text)  # Chinese is written without spaces


@lru_cache(maxsize=4096)
def _phrase(gold: str) -> re.Pattern | None:
    """A pattern for the normalised ``gold`` inside folded text: whole words, any punctuation between."""
    tokens = re.findall(rf"[{_HAN}]|[^\W_{_HAN}]+", gold)
    if not tokens:
        return None
    parts = [re.escape(tokens[0])]
    for before, token in zip(tokens, tokens[1:], strict=False):
        latin = not re.match(rf"[{_HAN}]", before) and not re.match(rf"[{_HAN}]", token)
        parts.append((r"[\W_]+" if latin else r"[\W_]*") + re.escape(token))
    start = "" if re.match(rf"[{_HAN}]", tokens[0]) else rf"(?<![^\W_{_HAN}])"
    end = "" if re.match(rf"[{_HAN}]", tokens[-1]) else rf"(?![^\W_{_HAN}])"
    return re.compile(start + "".join(parts) + end)


def _words(text: str) -> int:
    """Words in ``text``: Latin words and numbers, plus one per two Chinese characters."""
    han = len(re.findall(rf"[{_HAN}]", text))
    return len(re.findall(rf"[^\W_{_HAN}]+", text)) + (han + 1) // 2 + text.count(_GOLD)


# The cue before a committed answer, and the one after it ("X is the most likely diagnosis").
_NOUNS = (r"(?:final\s+)?(?:answer|diagnosis|cause|treatment|management|drug|medication|choice|test|"
          r"investigation|step|organism|mechanism|condition|finding|option)")
_VERBS = r"(?:is|are|would\s+be|should\s+be|will\s+be|must\s+be|remains|seems\s+to\s+be|appears\s+to\s+be)"
_CUE = re.compile(
    rf"\b{_NOUNS}(?:\s+(?:here|then|therefore|thus|so|now|of\s+choice))?\s*(?:{_VERBS}\s*[:：]?|[:：=])|"
    r"\b(?:consistent\s+with|suggestive\s+of|indicative\s+of|diagnosed\s+with|most\s+likely|"
    r"i\s+(?:would\s+)?(?:choose|pick|go\s+with))\b|"
    r"(?:最终答案|答案|诊断|病因|治疗|首选药物|首选|选择)\s*(?:是|为|应为|应是|考虑为|考虑|可能是)?\s*[:：]?|"
    r"(?:考虑为|考虑是|符合)", re.IGNORECASE)
_CUE_AFTER = re.compile(
    r"^\s*(?:is|would\s+be|seems\s+to\s+be|appears\s+to\s+be|remains)\s+(?:the\s+)?(?:most\s+)?"
    r"(?:likely|probable|correct|right|best|final|definitive|underlying|answer|diagnosis)|"
    r"^\s*(?:是|为)?(?:最)?(?:可能|正确|首选|诊断|答案)", re.IGNORECASE)
_ANSWER_CUE = re.compile(r"\b(?:final\s+)?(?:answer|diagnosis)\b|答案|诊断")
MAX_ANSWER_CUES = 2  # more "the answer is …" sentences than this: listing candidates, not answering
# A sentence that offers alternatives or doubts its claim commits to nothing.
_HEDGE = re.compile(r"\b(?:or|either|versus|vs|and/or|possibl[ey]|perhaps|maybe|may\s+be|might|could\s+be|"
                    r"differentials?)\b|或者|或是|或|还是|鉴别|(?<!最)可能(?!性大)", re.IGNORECASE)
_NEGATED_BEFORE = re.compile(r"\b(?:not|no|never|unlikely|exclude[sd]?|rule[sd]?\s+out|ruled\s+out|"
                             r"rather\s+than|instead\s+of|against|without|than)\b[^\ue000,;，；]{0,30}$|"
                             r"(?:不是|不考虑|排除|而非|并非|非|无)[^\ue000,;，；]{0,6}$", re.IGNORECASE)
_NEGATED_AFTER = re.compile(r"^\s*(?:is|was|are|seems|appears)?\s*(?:not|unlikely|less\s+likely|ruled\s+out|"
                            r"excluded)\b|^\s*(?:不|可排除|被排除|可能性小|可能性不大)", re.IGNORECASE)
# What starts a clause that explains the answer rather than naming another candidate.
_EXPLAINS = re.compile(r"^\s*(?:a|an|the|which|who|that|given|as|because|since|due|with|without|based|"
                       r"likely|probably|caused|characteri[sz]ed|seen|treated|confirmed|typically|"
                       r"因为|由于|伴|考虑|是|为|其|表现)", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\n+|(?<=[.!?])\s+|[。！？]")
_CLAUSE = re.compile(r"[,，;；、/]")


def _lists_candidates(clause_parts: list[str]) -> bool:
    """Whether the parts around the gold (split at commas) list other candidates: two or more short
    noun phrases that do not start by explaining ("sarcoidosis, tuberculosis, lymphoma")."""
    others = [p for p in clause_parts if _GOLD not in p and re.search(r"\w", p)]
    short = [p for p in others if _words(p) <= 3 and not _EXPLAINS.match(p)]
    return len(short) >= 2


def _commits(sentence: str, first: bool) -> bool:
    """Whether this sentence (the gold marked) commits to the gold: after a cue, before one, or as a
    short first sentence; and neither hedged nor negated."""
    at = sentence.index(_GOLD)
    before, after = sentence[:at], sentence[at + 1:]
    if _HEDGE.search(sentence) or _NEGATED_BEFORE.search(before) or _NEGATED_AFTER.search(after):
        return False
    cues = [cue.end() for cue in _CUE.finditer(sentence, 0, at)]
    if cues:  # "the diagnosis is (most likely) X": the gold in the cue's own clause
        lead = sentence[cues[-1]:at]
        return (_words(lead) <= MAX_LEAD_WORDS and not _CLAUSE.search(lead)
                and not _lists_candidates(_CLAUSE.split(sentence[cues[-1]:])))
    if _CUE_AFTER.match(after):  # "(Given …,) X is the most likely diagnosis"
        return _words(_CLAUSE.split(before)[-1]) <= MAX_LEAD_WORDS
    short = _words(sentence) <= 1 + MAX_EXTRA_WORDS
    return first and short and not _lists_candidates(_CLAUSE.split(sentence))


def names_answer(answer: str, gold: str) -> bool:
    """Whether ``answer`` (the text after the think block) commits to the ``gold`` answer or an alias.

    The gold is matched whole, as a phrase of whole words, ignoring case, punctuation, width and
    accents. It must stand in a sentence where the answer commits: after a cue ("The most likely
    diagnosis is X", "答案：X", at most MAX_LEAD_WORDS words between them), before one ("X is the most
    likely cause"), or as a short first sentence ("Sarcoidosis."). A sentence that hedges ("X or Y",
    "possibly X", a list of candidates) or negates ("not X", "X is unlikely") names nothing, and so
    does an answer that gives more than MAX_ANSWER_CUES answers.
    """
    if not isinstance(answer, str) or not isinstance(gold, str):
        return False
    gold_n = normalise(gold)
    targets = dict.fromkeys((gold_n, *(normalise(a) for a in ALIASES.get(gold_n, ()))))
    text = _fold(answer)
    for pattern in filter(None, map(_phrase, targets)):
        text = pattern.sub(f" {_GOLD} ", text)
    if _GOLD not in text:
        return False
    if not re.sub(r"[\W_]+", "", text.replace(_GOLD, "")):  # the answer is the gold and nothing else
        return True
    sentences = [s for s in _SENTENCE_END.split(text) if re.search(r"\w", s)]
    if sum(bool(_ANSWER_CUE.search(s)) for s in sentences) > MAX_ANSWER_CUES:
        return False
    return any(_commits(s, i == 0) for i, s in enumerate(sentences) if _GOLD in s)


def is_correct(reply: str, gold: str, choices: str = "", options: Mapping[str, str] | None = None) -> bool:
    """Whether a reply answers right. An exam question has ``choices`` (its letters, "ABCD") and,
    when known, ``options`` (letter → text): the letter the reply chooses (``extract_choice``) must be
    the gold letter. An open question has neither: the reply must name the gold text (``names_answer``).
    The think block is ignored either way."""
    if not isinstance(reply, str) or not isinstance(gold, str) or not gold.strip():
        return False
    if choices or options:
        chosen = extract_choice(reply, choices or "".join(options), options=options or None)
        return chosen == gold.strip().upper()
    return names_answer(split_think(reply)[1], gold)
