"""helpers.answers: the think block, the chosen letter, and whether an answer names the gold one.

The strings are written the way real rows and real replies are: medical-o1 gold answers with commas and
semicolons, answers written as medical-o1's ``Response`` paragraphs, MedQA/CMB option texts such as
"ad", "70%", "None" and "Rh(D) positive", and Chinese-only answers.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.answers import (
    extract_choice,
    has_think_block,
    is_correct,
    names_answer,
    normalise,
    split_think,
)

OPTIONS = {"A": "Insulin", "B": "Metformin", "C": "Sulfonylurea", "D": "Aspirin and clopidogrel",
           "E": "Aspirin"}


@pytest.mark.parametrize("text, expected", [
    # a bare letter, however it is dressed
    ("B", "B"), ("B.", "B"), ("(C)", "C"), ("**D**", "D"), ("【A】", "A"), ("Ｅ", "E"), (" c ", "C"),
    # answer lines in English
    ("The answer is B.", "B"), ("Answer: C", "C"), ("**Answer:** (D)", "D"),
    ("The correct answer would be option A because insulin is needed.", "A"),
    ("I would choose E.", "E"), ("C is the best answer here.", "C"), ("The correct option is B", "B"),
    ("answer: b", "B"),
    # answer lines in Chinese (full-width punctuation too)
    ("答案：C", "C"), ("答案是D。", "D"), ("答案为 B", "B"), ("选B", "B"), ("应选择A。", "A"),
    ("本题选E", "E"), ("B项正确。", "B"), ("正确选项是C", "C"), ("答案：Ｂ", "B"),
    # a final answer overrides the reasoning before it
    ("Option A looks tempting. Option B fits better.\nFinal answer: B", "B"),
    ("先考虑A，再考虑C。最终答案：C", "C"), ("The answer is A. Wait, no.\nFinal Answer: D", "D"),
    ("Therefore \\boxed{C}", "C"),
    # formatted letters: line starts, bold, brackets, "option B", "B项"
    ("B. Metformin is the first-line drug.", "B"), ("I pick **C. Sulfonylurea**", "C"),
    ("Option D.", "D"), ("考虑C项。", "C"), ("(E) aspirin", "E"),
    ("Option C is correct, and option B is wrong.", "C"), ("A项错误，C选项符合题意。", "C"),
    # the think block is ignored, closed or missing its opening tag
    ("<think>Maybe A? No.</think>The answer is C.", "C"),
    ("It could be A, let me think.</think>\n答案：B", "B"),
])
def test_reads_the_chosen_letter(text, expected):
    assert extract_choice(text) == expected


@pytest.mark.parametrize("text", [
    "", "   ", "I am not sure.", "A patient like this needs urgent care.",  # "A" the article
    "the answer is a bit unclear",
    "The answer is A or B.", "答案：AB", "答案是A或C",  # more than one letter
    "The answer is A. Also, the answer is C.",  # two different answer lines
    "Option B is wrong.", "B项错误。",  # a negated letter is not a choice
    "<think>The answer is B.</think>", "<think>Answer: B, probably",  # only the reasoning chose
    "不选A",
])
def test_gives_none_rather_than_guessing(text):
    assert extract_choice(text) is None


def test_only_allowed_letters_count():
    assert extract_choice("The answer is E.", choices="ABCD") is None
    assert extract_choice("The answer is D.", choices="ABCD") == "D"
    assert extract_choice("B", choices="") is None


def test_quoted_option_text_counts_when_options_are_given():
    assert extract_choice("Metformin is the first-line drug.") is None  # no options: no guess
    assert extract_choice("Metformin is the first-line drug.", options=OPTIONS) == "B"
    assert extract_choice("metformin", options=OPTIONS) == "B"
    # the longer option wins over the one it contains
    assert extract_choice("Give aspirin and clopidogrel.", options=OPTIONS) == "D"
    assert extract_choice("Either insulin or metformin.", options=OPTIONS) is None
    assert extract_choice("首选二甲双胍。", options={"A": "胰岛素", "B": "二甲双胍"}) == "B"
    # a letter beats the quoted text
    assert extract_choice("A. Metformin", options=OPTIONS) == "A"


def test_split_think_keeps_reasoning_and_answer_apart():
    assert split_think("<think> why </think> B") == ("why", "B")
    assert split_think("why</think>B") == ("why", "B")  # the template opened the block
    assert split_think("<think>still thinking") == ("still thinking", "")
    assert split_think("plain answer") == ("", "plain answer")
    assert split_think("<think>x</think>\n\nAnswer: C")[1] == "Answer: C"
    assert has_think_block("<think>x</think>y") and not has_think_block("<think></think>y")
    assert not has_think_block("<think>unfinished") and not has_think_block("y")


# The strict reading, as 03's think-format check counts it: a closed, non-empty block at the start.
@pytest.mark.parametrize("text, expected", [
    ("<think>\nST elevation in II, III, aVF.\n</think>\n\nInferior STEMI.",
     ("ST elevation in II, III, aVF.", "Inferior STEMI.")),
    ("  <think>嗯，先排除危险信号。</think>多休息。", ("嗯，先排除危险信号。", "多休息。")),
    ("<think>reasoning cut off by the token limit</think>", ("reasoning cut off by the token limit", "")),
    ("<think>no closing tag, the token limit came first", None),
    ("<think>\n\n</think>\n\nAn answer with no reasoning.", None),
    ("<think>one <think>two</think> three", None),
    ("The answer first. <think>then reasoning</think>", None),
    ("reasoning</think>answer", None),  # no opening tag, and no prompt that opened it
    ("", None),
])
def test_a_think_block_opens_the_reply_closed_and_non_empty(text, expected):
    assert has_think_block(text) == (expected is not None)
    if expected is not None:
        assert split_think(text, strict=True) == expected


# The strict reading as 06's rewards take it: the prompt may have opened the block.
@pytest.mark.parametrize("text, expected", [
    ("<think>reason</think>answer", ("reason", "answer")),
    ("reason</think>answer", ("reason", "answer")),  # the opening tag was in the prompt
    ("  <think>\nreason\n</think>\n\nanswer ", ("reason", "answer")),
    ("<think>  </think>answer", ("", "answer")),  # empty, but well-formed: the caller decides
    ("no block at all", None),
    ("<think>never closed", None),
    ("<think>a</think>b</think>c", None),
    ("<think>a</think><think>b</think>c", None),
    ("preamble <think>a</think>b", None),
    ("<think>a</think>b <think>", None),
])
def test_strict_reading_of_a_completion_whose_prompt_opened_the_block(text, expected):
    assert split_think(text, strict=True, opened=True) == expected


@pytest.mark.parametrize("text, reasoning", [
    ("<think>嗯，先问清楚诱因。</think>", "嗯，先问清楚诱因。"),
    ("\nCheck the airway first.\n", "Check the airway first."),
    ("<think>\nLow MCV.</think>\n", "Low MCV."),
])
def test_a_reasoning_column_is_read_as_a_block_alone(text, reasoning):
    assert split_think(text, block_only=True) == (reasoning, "")


@settings(max_examples=400, deadline=None)
@given(st.text(), st.text(max_size=6))
def test_extract_choice_never_raises_and_returns_an_allowed_letter(text, choices):
    got = extract_choice(text, choices)
    assert got is None or (len(got) == 1 and got in choices.upper())


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_think_helpers_never_raise_and_never_leave_a_closing_tag(text):
    think, answer = split_think(text)
    assert "</think>" not in answer
    assert isinstance(has_think_block(text), bool)
    for opened in (False, True):
        found = split_think(text, strict=True, opened=opened)
        if found is not None:
            assert text.count("</think>") == 1 and "<think>" not in found[0] + found[1]
            assert opened or text.lstrip().startswith("<think>")
    assert "<think>" not in split_think(text, block_only=True)[0]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from("ABCDE"), st.text(alphabet=st.characters(blacklist_characters="<>"), max_size=80),
       st.sampled_from(["The answer is {}.", "答案：{}", "Final answer: {}", "{}", "**{}**", "选{}"]))
def test_a_think_block_never_changes_the_choice(letter, reasoning, template):
    answer = template.format(letter)
    assert extract_choice(answer) == letter
    assert extract_choice(f"<think>{reasoning}</think>\n{answer}") == letter


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=100), st.dictionaries(st.sampled_from("ABCDE"), st.text(max_size=20)))
def test_extract_choice_with_options_never_raises(text, options):
    got = extract_choice(text, options=options)
    assert got is None or got in "ABCDE"


# --- option texts as real exams write them ------------------------------------------------

REAL_OPTIONS = {"A": "ad", "B": "70%", "C": "None", "D": "Rh(D) positive", "E": "Vitamin B12 deficiency"}


@pytest.mark.parametrize("text, expected", [
    ("I would rather answer instead of guessing.", None),  # "ad" is not inside "instead"
    ("About 170% of normal.", None),  # "70%" is not inside "170%"
    ("None of these options fits the case.", None),  # "None" is not inside "none of"
    ("none of them", None),
    ("Her blood group is Rh(D) positive, so no anti-D is needed.", None),  # "(D)" is not the letter D
    ("Rh(D) positive, so no anti-D is needed.", "D"),
    ("The answer is Rh(D) positive.", "D"),
    ("The answer is vitamin B12 deficiency.", "E"),  # the "B" inside the option text is not the letter
    ("ad", "A"), ("70%", "B"), ("The answer is None.", "C"), ("Answer: 70%", "B"),
    ("Answer: D. Rh(D) positive", "D"),  # a letter and its own text
    ("The answer is ad or 70%.", None),  # two options named
])
def test_option_texts_are_matched_whole_and_only_as_the_answer(text, expected):
    assert extract_choice(text, options=REAL_OPTIONS) == expected


def test_a_letter_in_parentheses_inside_a_word_is_not_a_choice_even_without_options():
    assert extract_choice("The patient is Rh(D) positive.") is None
    assert extract_choice("The patient is (D) positive.") == "D"  # set apart, it is a letter


# --- free-text gold answers, as medical-o1-verifiable-problem writes them -------------------

RESPONSE = ("The most likely diagnosis is sarcoidosis, given the bilateral hilar lymphadenopathy, erythema "
            "nodosum and raised ACE level. Treatment is usually with corticosteroids when organs are at "
            "risk.")
IHD = "Ischemic heart disease; Aortic aneurysm"


@pytest.mark.parametrize("answer, gold, expected", [
    # golds with commas and semicolons, verbatim or after a cue
    ("Ischemic heart disease; Aortic aneurysm", IHD, True),
    ("The answer is ischemic heart disease; aortic aneurysm.", IHD, True),
    ("Membranous GN, subepithelial deposits", "Membranous GN, subepithelial deposits", True),
    ("Final answer: membranous GN, subepithelial deposits.", "Membranous GN, subepithelial deposits", True),
    ("The diagnosis is membranous GN.", "Membranous GN, subepithelial deposits", False),  # half the gold
    # answers written as a paragraph, the style 03 trains
    (RESPONSE, "Sarcoidosis", True),
    ("Based on the findings described, sarcoidosis is the most likely diagnosis.", "Sarcoidosis", True),
    ("These findings are most consistent with sarcoidosis.", "Sarcoidosis", True),
    ("The most likely diagnosis here is iron deficiency anemia", "Iron deficiency anemia", True),
    ("Iron-deficiency ANEMIA.", "Iron deficiency anemia", True),
    ("Guillain Barre syndrome", "Guillain-Barré syndrome", True),
    ("Ｎａｌｏｘｏｎｅ", "Naloxone", True),
    ("adrenaline", "Epinephrine", True),  # an alias
    ("Final answer: 6.5% or higher", "6.5% or higher", True),  # "or" inside the gold is not a hedge
    # hedges, lists, negations
    ("It could be sarcoidosis or tuberculosis.", "Sarcoidosis", False),
    ("Sarcoidosis, tuberculosis, lymphoma", "Sarcoidosis", False),
    ("The differential includes sarcoidosis.", "Sarcoidosis", False),
    ("This is not sarcoidosis; the answer is tuberculosis.", "Sarcoidosis", False),
    ("Sarcoidosis is unlikely. The answer is tuberculosis.", "Sarcoidosis", False),
    ("The answer is tuberculosis. Sarcoidosis was ruled out.", "Sarcoidosis", False),
    ("The answer is A. The answer is B. The answer is sarcoidosis.", "Sarcoidosis", False),  # spraying
    # wrong or partial answers
    ("Anemia", "Iron deficiency anemia", False),
    ("Naloxone", "Nalbuphine", False),
    ("16.5%", "6.5%", False),
    ("70 mg", "70%", False),
    ("a long answer that mentions naloxone somewhere among many many other words here", "Naloxone", False),
    ("", "Naloxone", False), ("Naloxone", "", False),
    # Chinese
    ("根据患者症状，最可能的诊断是结节病，因为双侧肺门淋巴结肿大。", "结节病", True),
    ("答案：缺铁性贫血。因为铁蛋白低。", "缺铁性贫血", True),
    ("考虑为缺铁性贫血", "缺铁性贫血", True),
    ("宫外孕", "异位妊娠", True),
    ("纳洛酮或氟马西尼", "纳洛酮", False),
    ("不考虑结节病，诊断为结核。", "结节病", False),
])
def test_names_answer(answer, gold, expected):
    assert names_answer(answer, gold) is expected


def test_normalise_folds_case_punctuation_width_and_accents():
    assert normalise("Guillain-Barré  Syndrome!") == "guillain barre syndrome"
    assert normalise("ＭＥＴＦＯＲＭＩＮ") == "metformin"
    assert normalise("缺铁 性 贫血。") == "缺铁性贫血"
    assert normalise("维生素Ｂ１") == "维生素b1"
    assert normalise("70%") == "70 percent"


_GOLD_TEXT = st.text(alphabet=st.characters(categories=("L", "N", "Zs"), include_characters=",;，；-'()"),
                     min_size=1, max_size=40).filter(lambda t: any(c.isalnum() for c in t))


@settings(max_examples=300, deadline=None)
@given(gold=_GOLD_TEXT, template=st.sampled_from(["{}", "{}.", "The answer is {}.", "Final answer: {}",
                                                  "答案：{}", "**{}**"]))
def test_a_gold_written_verbatim_or_after_a_cue_is_always_named(gold, template):
    assert names_answer(template.format(gold), gold)
    assert is_correct(f"<think>Reasoning here.</think>{template.format(gold)}", gold)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.text(max_size=40))
def test_names_answer_never_raises(answer, gold):
    assert isinstance(names_answer(answer, gold), bool)


# --- the exam scorer and the GRPO reward agree ----------------------------------------------

MCQ_ANSWERS = [
    "Answer: C", "C", "(C)", "The answer is C.", "答案：C", "选C", "A or C", "Option B is wrong, so C.",
    "The answer is vitamin B12 deficiency.", "Rh(D) positive", "None", "None of these fit.", "instead, 170%",
    "I would choose E.", "**B**", "B. 70%", "The answer is ad.", "不选A", "", "I am not sure.",
]


@settings(max_examples=300, deadline=None)
@given(answer=st.one_of(st.sampled_from(MCQ_ANSWERS), st.text(max_size=60)),
       gold=st.sampled_from("ABCDE"), reasoning=st.sampled_from(["", "Maybe A. ", "答案是B？"]))
def test_the_grpo_reward_and_the_exam_scorer_agree_on_every_mcq_answer(notebook_rewards, answer, gold,
                                                                       reasoning):
    from helpers.datasets import MCQItem
    from helpers.metrics import score_mcq

    item = MCQItem("q1", "medqa", "en", "USMLE", "step1", "Which?", dict(REAL_OPTIONS), gold)
    completion = f"<think>{reasoning}</think>{answer.replace('</think>', '').replace('<think>', '')}"
    [scored] = score_mcq([item], [{"id": "q1", "reply": completion}])["items"]
    [paid] = notebook_rewards["accuracy_reward"]([completion], answer=[gold], choices=["ABCDE"],
                                                 options=[list(REAL_OPTIONS.values())])
    assert paid == float(scored["correct"])
