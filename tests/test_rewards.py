import functools
import math

import pytest
from conftest import SCORES
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import rewards
from helpers.rewards import (
    completion_text,
    mix_weights,
    parse_grade,
    reasoning_steps,
    reward,
    reward_name,
    score_completions,
    teacher_reward,
)

GOOD = ("<think>Heavy periods cause iron loss. The MCV is low and ferritin is very low. "
        "That pattern means iron stores are empty.</think>\nIron deficiency anemia")


def chat(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


# The four rule rewards are defined by 06 itself (its cells tagged "rewards"); `notebook_rewards`
# (conftest.py) is that namespace, loaded once for this module with MAX_COMPLETION_LENGTH = 48.

@pytest.fixture(scope="module")
def format_reward(notebook_rewards):
    return notebook_rewards["format_reward"]


@pytest.fixture(scope="module")
def reasoning_steps_reward(notebook_rewards):
    return notebook_rewards["reasoning_steps_reward"]


@pytest.fixture(scope="module")
def accuracy_reward(notebook_rewards):
    return notebook_rewards["accuracy_reward"]


@pytest.fixture(scope="module")
def length_reward(notebook_rewards):
    return notebook_rewards["length_reward"]


def limit(monkeypatch, notebook_rewards, tokens: int) -> None:
    """Set 06's MAX_COMPLETION_LENGTH for one test: the length reward reads it from the namespace."""
    monkeypatch.setitem(notebook_rewards, "MAX_COMPLETION_LENGTH", tokens)


# --- the reward decorator -----------------------------------------------------------------

def test_the_reward_decorator_clamps_catches_and_keeps_the_name_bounds_and_score():
    @reward(low=-1.0, high=1.0, fallback=0.25)
    def shaky(text, **row):
        """Reads the completion as a number."""
        if text == "nan":
            return math.nan
        return float(text)  # "raise" raises ValueError

    scores = shaky(["0.5", "5", "-3", "raise", "nan", "inf", "-inf"])
    assert scores == [0.5, 1.0, -1.0, 0.25, 0.25, 0.25, 0.25]  # clamped; a failure or NaN: the fallback
    assert shaky([chat("0.5")]) == [0.5] and shaky([]) == []
    assert shaky.__name__ == "shaky" and reward_name(shaky) == "shaky"  # TRL logs rewards by __name__
    assert shaky.__doc__ == "Reads the completion as a number."
    assert shaky.bounds == (-1.0, 1.0)
    assert shaky.score("5") == 5.0  # the one-answer function itself, unclamped

    @reward(low=0.0, high=1.0)
    def echo(text, answer=None, **row):
        return {"yes": 1.0, "too much": 2.0, "oops": None}[answer]

    # Each completion gets its own row of every column; a scalar column is every row's; a short column
    # gives None; the default fallback is 0, and a score is clamped even when it comes from the fallback.
    assert echo(["a", "b", "c", "d"], answer=["yes", "too much", "oops"]) == [1.0, 1.0, 0.0, 0.0]
    assert echo(["a", "b"], answer="yes") == [1.0, 1.0]
    assert reward(0.5, 1.0, fallback=-3.0)(lambda text, **row: 1 / 0)(["a"]) == [0.5]


# --- reading completions ------------------------------------------------------------------

def test_completion_text_reads_strings_and_conversations():
    assert completion_text("plain") == "plain"
    assert completion_text(chat("from chat")) == "from chat"
    assert completion_text({"role": "assistant", "content": "one message"}) == "one message"
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert completion_text(parts) == "ab"
    assert completion_text([{"role": "user", "content": "not the model's"}]) == ""
    assert completion_text(None) == "" and completion_text(42) == ""


def test_every_reward_scores_conversations_like_strings(format_reward, reasoning_steps_reward,
                                                       accuracy_reward, length_reward, notebook_rewards,
                                                       monkeypatch):
    limit(monkeypatch, notebook_rewards, 64)
    for fn in (format_reward, reasoning_steps_reward, length_reward):
        assert fn([chat(GOOD)]) == fn([GOOD])
    assert accuracy_reward([chat(GOOD)], answer=["Iron deficiency anemia"]) == [1.0]


# --- format -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    (GOOD, 1.0),
    ("The patient has anemia.</think>Iron deficiency anemia", 1.0),  # opened in the prompt
    ("<think>Low ferritin.</think>", 0.5),  # closed the block but never answered
    ("<think>Low ferritin.</think>  ...  ", 0.5),  # punctuation is not an answer
    ("<think>   </think>Iron deficiency anemia", 0.0),  # an empty block is not reasoning
    ("Iron deficiency anemia", 0.0),
    ("<think>Low ferritin, heavy periods, low MCV and", 0.0),  # cut off while reasoning
    ("<think>a</think>b<think>c</think>d", 0.0),
    ("", 0.0),
])
def test_format_reward(format_reward, text, expected):
    assert format_reward([text]) == [expected]


# --- reasoning steps ----------------------------------------------------------------------

def test_steps_are_sentences_or_lines_with_enough_words_and_counted_once():
    think = ("Step 1: check the blood count. Step 2: check the blood count.\n"
             "Then ferritin is very low here. OK. Yes.\n首先考虑缺铁性贫血。")
    assert reasoning_steps(think) == ["Step 1: check the blood count.", "Then ferritin is very low here.",
                                      "首先考虑缺铁性贫血。"]
    assert reasoning_steps("The dose is 6.5 mg per kg today") == ["The dose is 6.5 mg per kg today"]


def test_reasoning_steps_reward_grows_with_steps_and_is_capped(reasoning_steps_reward, notebook_rewards,
                                                               monkeypatch):
    def block(n: int) -> str:
        words = ("one", "two", "three", "four", "five")
        sentences = [f"Finding number {w} points somewhere new." for w in words]
        return "<think>" + " ".join(sentences[:n]) + "</think>Answer"

    assert notebook_rewards["MAX_STEPS"] == 3
    scores = [reasoning_steps_reward([block(n)])[0] for n in range(6)]
    assert scores == pytest.approx([0, 1 / 3, 2 / 3, 1, 1, 1])
    monkeypatch.setitem(notebook_rewards, "MAX_STEPS", 2)  # the notebook's constant sets the cap
    scores = [reasoning_steps_reward([block(n)])[0] for n in range(6)]
    assert scores == pytest.approx([0, 1 / 2, 1, 1, 1, 1])


def test_padding_with_repeated_steps_does_not_pay(reasoning_steps_reward):
    padded = "<think>" + "Consider the heart rate here. " * 20 + "</think>Answer"
    assert reasoning_steps_reward([padded]) == pytest.approx([1 / 3])
    assert reasoning_steps_reward(["<think>1. 2. 3. 4. 5. 6.</think>Answer"]) == [0.0]


def test_unfinished_reasoning_earns_no_steps(reasoning_steps_reward):
    assert reasoning_steps_reward(["<think>First step is long enough. Second step is long enough."]) == [0.0]


# --- accuracy -----------------------------------------------------------------------------

def test_accuracy_reward_on_open_and_multiple_choice_rows(accuracy_reward):
    completions = [
        "<think>Pinpoint pupils and slow breathing after heroin.</think>Naloxone",
        "<think>Opioid overdose.</think>Flumazenil",
        "<think>想了想。</think>答案：C",
        "<think>Thinking about option C.</think>The answer is B.",
        "<think>I'd pick C first.</think>B",
    ]
    scores = accuracy_reward(completions, answer=["Naloxone", "Naloxone", "C", "C", "B"],
                             choices=["", "", "ABCDE", "ABCD", "ABCD"])
    assert scores == [1.0, 0.0, 1.0, 0.0, 1.0]


def test_accuracy_pays_real_golds_with_commas_and_answers_written_as_a_paragraph(accuracy_reward):
    think = "<think>Spikes on silver stain and subepithelial deposits on electron microscopy.</think>"
    mgn = "Membranous GN, subepithelial deposits"
    golds = [mgn, "Ischemic heart disease; Aortic aneurysm", "Sarcoidosis", "Sarcoidosis", mgn]
    answers = ["Membranous GN, subepithelial deposits",
               "The answer is ischemic heart disease; aortic aneurysm.",
               "The most likely diagnosis is sarcoidosis, given the bilateral hilar lymphadenopathy. "
               "Corticosteroids are the usual treatment.",
               "Sarcoidosis or tuberculosis.",  # a hedge earns nothing
               "Membranous GN"]  # half of the gold earns nothing
    assert accuracy_reward([think + a for a in answers], answer=golds) == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_accuracy_pays_an_exam_answer_that_gives_only_the_option_text(accuracy_reward):
    options = ["ad", "70%", "None", "Rh(D) positive"]
    completions = ["<think>x y z w.</think>The answer is Rh(D) positive.", "<think>x.</think>instead",
                   "<think>x.</think>Rh(D) matters here, none of these fit."]
    scores = accuracy_reward(completions, answer=["D", "A", "D"], choices=["ABCD"] * 3, options=[options] * 3)
    assert scores == [1.0, 0.0, 0.0]


def test_accuracy_reads_the_letter_after_the_think_block_only(accuracy_reward):
    assert accuracy_reward(["<think>The answer is C.</think>"], answer=["C"], choices=["ABCD"]) == [0.0]


def test_accuracy_without_a_gold_answer_is_zero(accuracy_reward):
    assert accuracy_reward([GOOD, GOOD, GOOD], answer=[None, "", 3]) == [0.0, 0.0, 0.0]
    assert accuracy_reward([GOOD]) == [0.0]
    assert accuracy_reward([GOOD, GOOD], answer=["Iron deficiency anemia"]) == [1.0, 0.0]  # short column


# --- length -------------------------------------------------------------------------------

def test_length_reward_uses_token_ids_when_given(length_reward, notebook_rewards, monkeypatch):
    limit(monkeypatch, notebook_rewards, 64)
    ids = [[1] * 3, [1] * 20, [1] * 63, [1] * 64]  # the floor is max(4, 64 // 16) = 4
    assert length_reward(["x"] * 4, completion_ids=ids) == [-0.5, 0.0, 0.0, -1.0]
    assert length_reward(["word " * 70], completion_ids=[[1] * 5]) == [0.0]  # the ids, not the words
    limit(monkeypatch, notebook_rewards, 128)  # the floor is a sixteenth of the limit: 8
    assert length_reward(["x"] * 2, completion_ids=[[1] * 7, [1] * 8]) == [-0.5, 0.0]
    limit(monkeypatch, notebook_rewards, 32)  # ... and never below 4
    assert length_reward(["x"] * 2, completion_ids=[[1] * 3, [1] * 4]) == [-0.5, 0.0]


def test_length_reward_counts_words_and_chinese_characters_without_ids(length_reward, notebook_rewards,
                                                                       monkeypatch):
    assert rewards.count_tokens("Iron deficiency anemia, 缺铁性贫血") == 8
    limit(monkeypatch, notebook_rewards, 48)
    assert length_reward(["one two", "word " * 10, "word " * 48]) == [-0.5, 0.0, -1.0]


def test_length_reward_follows_the_notebook_limit_and_keeps_its_name(length_reward, notebook_rewards,
                                                                     monkeypatch):
    assert length_reward.__name__ == reward_name(length_reward) == "length_reward"  # TRL logs it so
    assert length_reward.bounds == (-1.0, 0.0)
    limit(monkeypatch, notebook_rewards, 8)  # what the trainer's max_completion_length is set from
    assert length_reward(["a b c d e f g h i"]) == [-1.0]
    limit(monkeypatch, notebook_rewards, 64)
    assert length_reward(["a b c d e f g h i"]) == [0.0]


# --- teacher ------------------------------------------------------------------------------

@pytest.mark.parametrize("reply, expected", [
    ("8", 0.8), ("Score: 10", 1.0), ("0", 0.0), ("7.5/10", 0.75), ("eleven", None), ("42", None),
    ("", None), (None, None),
])
def test_parse_grade(reply, expected):
    assert parse_grade(reply) == (pytest.approx(expected) if expected is not None else None)


def test_teacher_reward_asks_the_judge_with_question_reference_and_reply():
    asked = []

    def judge(prompt: str) -> str:
        asked.append(prompt)
        return "9" if "Naloxone" in prompt.split("Reply to grade:")[1] else "2"

    scores = teacher_reward(["</think>Naloxone", "</think>Aspirin"], answer=["Naloxone"] * 2,
                            question=["Which drug reverses heroin overdose?"] * 2, ask=judge)
    assert scores == pytest.approx([0.9, 0.2])
    assert "Which drug reverses heroin overdose?" in asked[0] and "Reference answer: Naloxone" in asked[0]


def test_teacher_reward_survives_a_failing_judge():
    replies = iter(["8", "no idea", "4"])

    def flaky(prompt: str) -> str:
        reply = next(replies)
        if reply == "4":
            raise TimeoutError("endpoint down")
        return reply

    # The unparsable and the failed grade get the mean of the others: neither rewarded nor punished.
    assert teacher_reward(["a", "b", "c"], answer=["x"] * 3, ask=flaky) == pytest.approx([0.8, 0.8, 0.8])
    assert teacher_reward(["a"], ask=lambda p: 1 / 0) == [0.0]


def test_teacher_reward_without_a_judge_changes_nothing(monkeypatch):
    monkeypatch.setattr(rewards, "_default_ask", lambda: None)
    assert teacher_reward(["a", "b"], answer=["x", "y"]) == [0.0, 0.0]


def test_teacher_reward_falls_back_to_the_prompt_when_there_is_no_question_column():
    asked = []
    teacher_reward(["</think>B"], prompts=["Which organ pumps blood?"], ask=lambda p: asked.append(p) or "5")
    assert "Question: Which organ pumps blood?" in asked[0]


# --- combining ----------------------------------------------------------------------------

def test_mix_weights_splits_rules_and_teacher():
    weights = mix_weights({"format_reward": 1, "accuracy_reward": 3}, teacher_share=0.4)
    assert weights == pytest.approx({"format_reward": 0.15, "accuracy_reward": 0.45, "teacher_reward": 0.4})
    assert mix_weights({"format_reward": 1, "accuracy_reward": 1}) == {"format_reward": 0.5,
                                                                         "accuracy_reward": 0.5}
    with pytest.raises(ValueError):
        mix_weights({"format_reward": 0})


def test_score_completions_gives_each_reward_and_the_weighted_total(format_reward, accuracy_reward,
                                                                    length_reward, notebook_rewards,
                                                                    monkeypatch):
    limit(monkeypatch, notebook_rewards, 100)
    funcs = [format_reward, accuracy_reward, length_reward]
    weights = {"format_reward": 0.25, "accuracy_reward": 0.5, "length_reward": 0.25}
    rows = score_completions([GOOD, "Anemia"], funcs, weights, answer=["Iron deficiency anemia"] * 2)
    assert rows[0] == {"format_reward": 1.0, "accuracy_reward": 1.0, "length_reward": 0.0, "total": 0.75}
    assert rows[1] == {"format_reward": 0.0, "accuracy_reward": 0.0, "length_reward": -0.5, "total": -0.125}


# --- properties: any input, one bounded finite float per completion, no exceptions ----------

PIECES = st.sampled_from(["<think>", "</think>", "\n", " ", ".", "。", "Answer: ", "答案：", "B", "or",
                          "Naloxone", "缺铁性贫血", "Step 1: look at the labs", "６.５％", "\u0301"])
TEXT = st.lists(st.one_of(PIECES, st.text(max_size=30)), max_size=12).map("".join)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["assistant", "user", "system"]),
                                 "content": st.one_of(TEXT, st.none(), st.integers(),
                                                      st.lists(st.dictionaries(st.text(max_size=5), TEXT,
                                                                               max_size=2), max_size=2))})
COMPLETION = st.one_of(TEXT, st.lists(MESSAGE, max_size=3), st.none(), st.integers(), st.floats(),
                       st.dictionaries(st.text(max_size=5), TEXT, max_size=2))
COLUMN = st.one_of(st.none(), TEXT, st.lists(st.one_of(TEXT, st.none(), st.integers()), max_size=6))
BOUNDS = {  # what each reward promises, as the notebook and the teacher declare it
    "format_reward": (0.0, 1.0),
    "reasoning_steps_reward": (0.0, 1.0),
    "accuracy_reward": (0.0, 1.0),
    "length_reward": (-1.0, 0.0),
    "teacher_reward": (0.0, 1.0),
}


def _reward_named(notebook_rewards: dict, name: str):
    """(the reward, its bounds): 06's rule rewards, and the teacher with a judge that cannot be trusted."""
    if name == "teacher_reward":
        return functools.partial(teacher_reward, ask=lambda prompt: prompt[-3:]), teacher_reward.bounds
    return notebook_rewards[name], notebook_rewards[name].bounds


@pytest.mark.parametrize("name", BOUNDS)
def test_each_reward_declares_its_bounds(name, notebook_rewards):
    assert _reward_named(notebook_rewards, name)[1] == BOUNDS[name]


@pytest.mark.parametrize("name", BOUNDS)
@settings(max_examples=150, deadline=None)
@given(completions=st.lists(COMPLETION, max_size=6), answer=COLUMN, choices=COLUMN, ids=COLUMN)
def test_every_reward_gives_one_bounded_finite_float_per_completion(notebook_rewards, name, completions,
                                                                    answer, choices, ids):
    fn, (low, high) = _reward_named(notebook_rewards, name)
    scores = fn(completions, answer=answer, choices=choices, completion_ids=ids,
                prompts=answer, question=choices, trainer_state=None)
    assert len(scores) == len(completions)
    assert all(isinstance(s, float) and math.isfinite(s) and low <= s <= high for s in scores)


@pytest.mark.parametrize("name", BOUNDS)
@settings(max_examples=30, deadline=None)
@given(completions=st.one_of(st.none(), st.integers(), TEXT, st.dictionaries(st.text(max_size=3), TEXT)))
def test_every_reward_survives_completions_that_are_not_a_list(notebook_rewards, name, completions):
    fn, _ = _reward_named(notebook_rewards, name)
    scores = fn(completions)
    assert all(isinstance(s, float) and math.isfinite(s) for s in scores)


@settings(max_examples=100, deadline=None)
@given(think=TEXT, answer=TEXT)
def test_a_wellformed_block_always_earns_format_credit(format_reward, think, answer):
    clean = lambda s: s.replace("<think>", "").replace("</think>", "")  # noqa: E731
    think, answer = clean(think), clean(answer)
    score = format_reward([f"<think>{think}</think>{answer}"])[0]
    if any(c.isalnum() for c in think):
        assert score == (1.0 if any(c.isalnum() for c in answer) else 0.5)
    else:
        assert score == 0.0


@settings(max_examples=100, deadline=None)
@given(steps=st.lists(st.text(min_size=1, max_size=40), max_size=30))
def test_steps_reward_never_exceeds_the_cap_however_many_steps(reasoning_steps_reward, notebook_rewards,
                                                               steps):
    cap = notebook_rewards["MAX_STEPS"]
    text = "<think>" + "\n".join(steps).replace("</think>", "") + "</think>answer"
    [score] = reasoning_steps_reward([text])
    assert 0.0 <= score <= 1.0
    assert score * cap == pytest.approx(min(len(reasoning_steps(text[7:].split("</think>")[0])), cap))


def test_teacher_reward_uses_the_course_judge_client_and_its_cache(chat_endpoint, monkeypatch, tmp_path):
    monkeypatch.setenv("JUDGE_API_KEY", "test-key")
    monkeypatch.setenv("JUDGE_BASE_URL", chat_endpoint.url)
    monkeypatch.setenv("JUDGE_CACHE", str(tmp_path))

    def grade(body):
        graded = body["messages"][-1]["content"].split("Reply to grade:")[1]
        return 200, {**SCORES, "choices": [{**SCORES["choices"][0], "message": {
            "role": "assistant", "content": "7" if "Naloxone" in graded else "1"}}]}

    chat_endpoint.respond = grade
    assert rewards.teacher_available()
    completions = ["</think>Naloxone", "</think>Aspirin"]
    first = teacher_reward(completions, answer=["Naloxone"] * 2, question=["Which antidote?"] * 2)
    again = teacher_reward(completions, answer=["Naloxone"] * 2, question=["Which antidote?"] * 2)
    assert first == again == pytest.approx([0.7, 0.1])
    assert len(chat_endpoint.calls) == 2  # the second batch came from the disk cache
    monkeypatch.delenv("JUDGE_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert not rewards.teacher_available()
