import functools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import rewards
from helpers.rewards import (
    accuracy_reward,
    completion_text,
    final_answer,
    format_reward,
    length_reward,
    matches_answer,
    mix_weights,
    normalise,
    parse_grade,
    reasoning_steps,
    reasoning_steps_reward,
    reward_name,
    score_completions,
    split_completion,
    teacher_reward,
)

GOOD = ("<think>Heavy periods cause iron loss. The MCV is low and ferritin is very low. "
        "That pattern means iron stores are empty.</think>\nIron deficiency anemia")


def chat(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


# --- reading completions ------------------------------------------------------------------

def test_completion_text_reads_strings_and_conversations():
    assert completion_text("plain") == "plain"
    assert completion_text(chat("from chat")) == "from chat"
    assert completion_text({"role": "assistant", "content": "one message"}) == "one message"
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert completion_text(parts) == "ab"
    assert completion_text([{"role": "user", "content": "not the model's"}]) == ""
    assert completion_text(None) == "" and completion_text(42) == ""


def test_every_reward_scores_conversations_like_strings():
    for fn in (format_reward, reasoning_steps_reward, functools.partial(length_reward, max_tokens=64)):
        assert fn([chat(GOOD)]) == fn([GOOD])
    assert accuracy_reward([chat(GOOD)], answer=["Iron deficiency anemia"]) == [1.0]


@pytest.mark.parametrize("text, expected", [
    ("<think>reason</think>answer", ("reason", "answer")),
    ("reason</think>answer", ("reason", "answer")),  # the opening tag was in the prompt
    ("  <think>\nreason\n</think>\n\nanswer ", ("reason", "answer")),
    ("no block at all", None),
    ("<think>never closed", None),
    ("<think>a</think>b</think>c", None),
    ("<think>a</think><think>b</think>c", None),
    ("preamble <think>a</think>b", None),
    ("<think>a</think>b <think>", None),
])
def test_split_completion(text, expected):
    assert split_completion(text) == expected


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
def test_format_reward(text, expected):
    assert format_reward([text]) == [expected]


# --- reasoning steps ----------------------------------------------------------------------

def test_steps_are_sentences_or_lines_with_enough_words_and_counted_once():
    think = ("Step 1: check the blood count. Step 2: check the blood count.\n"
             "Then ferritin is very low here. OK. Yes.\n首先考虑缺铁性贫血。")
    assert reasoning_steps(think) == ["Step 1: check the blood count.", "Then ferritin is very low here.",
                                      "首先考虑缺铁性贫血。"]
    assert reasoning_steps("The dose is 6.5 mg per kg today") == ["The dose is 6.5 mg per kg today"]


def test_reasoning_steps_reward_grows_with_steps_and_is_capped():
    def block(n: int) -> str:
        words = ("one", "two", "three", "four", "five")
        sentences = [f"Finding number {w} points somewhere new." for w in words]
        return "<think>" + " ".join(sentences[:n]) + "</think>Answer"

    scores = [reasoning_steps_reward([block(n)])[0] for n in range(6)]
    assert scores == pytest.approx([0, 1 / 3, 2 / 3, 1, 1, 1])


def test_padding_with_repeated_steps_does_not_pay():
    padded = "<think>" + "Consider the heart rate here. " * 20 + "</think>Answer"
    assert reasoning_steps_reward([padded]) == pytest.approx([1 / 3])
    assert reasoning_steps_reward(["<think>1. 2. 3. 4. 5. 6.</think>Answer"]) == [0.0]


def test_unfinished_reasoning_earns_no_steps():
    assert reasoning_steps_reward(["<think>First step is long enough. Second step is long enough."]) == [0.0]


# --- accuracy -----------------------------------------------------------------------------

def test_normalise_folds_case_punctuation_width_and_accents():
    assert normalise("Guillain-Barré  Syndrome!") == "guillain barre syndrome"
    assert normalise("ＭＥＴＦＯＲＭＩＮ") == "metformin"
    assert normalise("缺铁 性 贫血。") == "缺铁性贫血"
    assert normalise("维生素Ｂ１") == "维生素b1"


@pytest.mark.parametrize("text, expected", [
    ("<think>...</think>Metformin", "Metformin"),
    ("<think>x</think>The answer is: Metformin, because it is first line.", "Metformin"),
    ("<think>x</think>Final answer: 6.5% or higher", "6.5% or higher"),
    ("<think>x</think>答案：缺铁性贫血。因为铁蛋白低。", "缺铁性贫血"),
    ("No think block. Metformin", "No think block"),
    ("<think>never closed", "<think>never closed"),
])
def test_final_answer_is_the_first_clause_after_the_cue(text, expected):
    assert final_answer(text) == expected


@pytest.mark.parametrize("said, gold, expected", [
    ("Iron deficiency anemia", "Iron deficiency anemia", True),
    ("iron-deficiency ANEMIA", "Iron deficiency anemia", True),
    ("The most likely diagnosis here is iron deficiency anemia", "Iron deficiency anemia", True),
    ("Guillain Barre syndrome", "Guillain-Barré syndrome", True),
    ("Ｎａｌｏｘｏｎｅ", "Naloxone", True),
    ("adrenaline", "Epinephrine", True),  # an alias
    ("宫外孕", "异位妊娠", True),
    ("考虑为缺铁性贫血", "缺铁性贫血", True),
    ("6.5%", "6.5%", True),
    ("Naloxone or flumazenil", "Naloxone", False),  # hedging does not pay
    ("纳洛酮或氟马西尼", "纳洛酮", False),
    ("Anemia", "Iron deficiency anemia", False),
    ("Naloxone", "Nalbuphine", False),
    ("a long answer that mentions naloxone somewhere among many many other words here", "Naloxone", False),
    ("", "Naloxone", False),
    ("Naloxone", "", False),
])
def test_matches_answer(said, gold, expected):
    assert matches_answer(said, gold) is expected


def test_accuracy_reward_on_open_and_multiple_choice_rows():
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


def test_accuracy_reads_the_letter_after_the_think_block_only():
    assert accuracy_reward(["<think>The answer is C.</think>"], answer=["C"], choices=["ABCD"]) == [0.0]


def test_accuracy_without_a_gold_answer_is_zero():
    assert accuracy_reward([GOOD, GOOD, GOOD], answer=[None, "", 3]) == [0.0, 0.0, 0.0]
    assert accuracy_reward([GOOD]) == [0.0]
    assert accuracy_reward([GOOD, GOOD], answer=["Iron deficiency anemia"]) == [1.0, 0.0]  # short column


# --- length -------------------------------------------------------------------------------

def test_length_reward_uses_token_ids_when_given():
    ids = [[1] * 3, [1] * 20, [1] * 63, [1] * 64]  # the floor is max(4, 64 // 16) = 4
    assert length_reward(["x"] * 4, completion_ids=ids, max_tokens=64) == [-0.5, 0.0, 0.0, -1.0]
    assert length_reward(["x"], completion_ids=[[1] * 5], max_tokens=64, min_tokens=2) == [0.0]


def test_length_reward_counts_words_and_chinese_characters_without_ids():
    assert rewards.count_tokens("Iron deficiency anemia, 缺铁性贫血") == 8
    assert length_reward(["one two", "word " * 10, "word " * 48], max_tokens=48) == [-0.5, 0.0, -1.0]


def test_length_reward_binds_to_the_trainer_limit_and_keeps_its_name():
    bound = functools.partial(length_reward, max_tokens=8)
    assert reward_name(bound) == "length_reward"
    assert bound(["a b c d e f g h i"]) == [-1.0]


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


def test_score_completions_gives_each_reward_and_the_weighted_total():
    funcs = [format_reward, accuracy_reward, functools.partial(length_reward, max_tokens=100)]
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
REWARDS = {
    "format_reward": format_reward,
    "reasoning_steps_reward": reasoning_steps_reward,
    "accuracy_reward": accuracy_reward,
    "length_reward": length_reward,
    "teacher_reward": functools.partial(teacher_reward, ask=lambda prompt: prompt[-3:]),
}


@pytest.mark.parametrize("name", REWARDS)
@settings(max_examples=150, deadline=None)
@given(completions=st.lists(COMPLETION, max_size=6), answer=COLUMN, choices=COLUMN, ids=COLUMN)
def test_every_reward_gives_one_bounded_finite_float_per_completion(name, completions, answer, choices, ids):
    low, high = rewards.BOUNDS[name]
    scores = REWARDS[name](completions, answer=answer, choices=choices, completion_ids=ids,
                           prompts=answer, question=choices, trainer_state=None)
    assert len(scores) == len(completions)
    assert all(isinstance(s, float) and math.isfinite(s) and low <= s <= high for s in scores)


@pytest.mark.parametrize("name", REWARDS)
@settings(max_examples=30, deadline=None)
@given(completions=st.one_of(st.none(), st.integers(), TEXT, st.dictionaries(st.text(max_size=3), TEXT)))
def test_every_reward_survives_completions_that_are_not_a_list(name, completions):
    scores = REWARDS[name](completions)
    assert all(isinstance(s, float) and math.isfinite(s) for s in scores)


@settings(max_examples=100, deadline=None)
@given(think=TEXT, answer=TEXT)
def test_a_wellformed_block_always_earns_format_credit(think, answer):
    clean = lambda s: s.replace("<think>", "").replace("</think>", "")  # noqa: E731
    think, answer = clean(think), clean(answer)
    score = format_reward([f"<think>{think}</think>{answer}"])[0]
    if any(c.isalnum() for c in think):
        assert score == (1.0 if any(c.isalnum() for c in answer) else 0.5)
    else:
        assert score == 0.0


@settings(max_examples=100, deadline=None)
@given(steps=st.lists(st.text(min_size=1, max_size=40), max_size=30))
def test_steps_reward_never_exceeds_the_cap_however_many_steps(steps):
    text = "<think>" + "\n".join(steps).replace("</think>", "") + "</think>answer"
    [score] = reasoning_steps_reward([text])
    assert 0.0 <= score <= 1.0
    assert score * rewards.MAX_STEPS == pytest.approx(min(len(reasoning_steps(text[7:].split("</think>")[0])),
                                                          rewards.MAX_STEPS))


def _plain_gold(text: str) -> bool:
    """A gold answer with content and none of the characters that end a clause or hedge."""
    return (any(c.isalnum() for c in normalise(text)) and not rewards._HEDGE.search(text)
            and not any(c in text for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029。；;，,！？!?.<>:："))


@settings(max_examples=150, deadline=None)
@given(gold=st.text(min_size=1, max_size=20).filter(_plain_gold))
def test_the_gold_answer_itself_is_always_correct(gold):
    assert accuracy_reward([f"<think>Reasoning here.</think>{gold}"], answer=[gold]) == [1.0]
    assert accuracy_reward([f"<think>Reasoning here.</think>{gold}"], answer=[gold + " x"]) == [0.0]


def test_teacher_reward_uses_the_course_judge_client_and_its_cache(monkeypatch, tmp_path):
    from helpers import judge

    monkeypatch.setenv("JUDGE_API_KEY", "test-key")
    monkeypatch.setenv("JUDGE_CACHE", str(tmp_path))
    posted = []

    def fake_post(url, payload, api_key, timeout):
        posted.append(payload)
        graded = payload["messages"][-1]["content"].split("Reply to grade:")[1]
        return {"choices": [{"message": {"content": "7" if "Naloxone" in graded else "1"}}]}

    monkeypatch.setattr(judge, "_post", fake_post)
    assert rewards.teacher_available()
    completions = ["</think>Naloxone", "</think>Aspirin"]
    first = teacher_reward(completions, answer=["Naloxone"] * 2, question=["Which antidote?"] * 2)
    again = teacher_reward(completions, answer=["Naloxone"] * 2, question=["Which antidote?"] * 2)
    assert first == again == pytest.approx([0.7, 0.1])
    assert len(posted) == 2  # the second batch came from the disk cache
    monkeypatch.delenv("JUDGE_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert not rewards.teacher_available()
