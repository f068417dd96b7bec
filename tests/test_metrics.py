import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.metrics import extract_choice, has_think_block, split_think, strip_think

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
    assert strip_think("<think>x</think>\n\nAnswer: C") == "Answer: C"
    assert has_think_block("<think>x</think>y") and not has_think_block("<think></think>y")
    assert not has_think_block("<think>unfinished") and not has_think_block("y")


@settings(max_examples=400, deadline=None)
@given(st.text(), st.text(max_size=6))
def test_extract_choice_never_raises_and_returns_an_allowed_letter(text, choices):
    got = extract_choice(text, choices)
    assert got is None or (len(got) == 1 and got in choices.upper())


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_think_helpers_never_raise_and_never_leave_a_closing_tag(text):
    think, answer = split_think(text)
    assert "</think>" not in answer and strip_think(text) == answer
    assert isinstance(has_think_block(text), bool)


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
