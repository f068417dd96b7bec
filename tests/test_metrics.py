import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.datasets import MCQItem, OpenItem
from helpers.metrics import (
    SafetyLists,
    accuracy,
    accuracy_by,
    changed_answers,
    find_keywords,
    hit_token_limit,
    mcnemar_p,
    mean_interval,
    rouge_l,
    rouge_language,
    score_mcq,
    score_open,
    summarise,
    wilson_interval,
)

# --- accuracy, intervals, ROUGE-L, safety heuristics, scoring ------------------------------


def test_wilson_interval_matches_known_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(8, 16) == pytest.approx((0.2800, 0.7200), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 10_000))
def test_wilson_interval_holds_the_observed_accuracy(correct, extra):
    n = correct + extra
    lo, hi = wilson_interval(correct, n)
    assert 0.0 <= lo <= hi <= 1.0
    if n:
        assert lo - 1e-9 <= correct / n <= hi + 1e-9


def test_accuracy_counts_unreadable_answers_as_wrong():
    result = accuracy(["A", None, "C", "D"], ["A", "B", "C", "A"])
    assert (result["acc"], result["n"], result["correct"], result["unreadable"]) == (0.5, 4, 2, 1)
    assert result["lo"] < 0.5 < result["hi"]
    by = accuracy_by(["A", None, "C", "D"], ["A", "B", "C", "A"], ["内科", "外科", "内科", "外科"])
    assert list(by) == ["内科", "外科"] and by["内科"]["acc"] == 1.0 and by["外科"]["acc"] == 0.0
    with pytest.raises(ValueError):
        accuracy(["A"], ["A", "B"])


def test_rouge_l_is_character_level_for_chinese_and_word_level_for_english():
    # LCS of 应立即拨打120 (8 characters) with 10 and 10: P = R = 0.8
    assert rouge_l("患者应立即拨打120", "应立即拨打120急救", "zh") == pytest.approx(0.8)
    # LCS "the cat sat" (3 words) with 3 and 6 words: P = 1, R = 0.5
    assert rouge_l("The cat sat.", "the cat sat on the mat", "en") == pytest.approx(2 / 3)
    assert rouge_l("心肌梗死", "心肌梗死") == 1.0 and rouge_l("", "anything") == 0.0
    assert rouge_l("completely different", "nothing shared") == 0.0


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120), st.text(max_size=120), st.sampled_from([None, "zh", "en"]))
def test_rouge_l_never_raises_stays_in_range_and_is_symmetric(a, b, language):
    score = rouge_l(a, b, language)
    assert 0.0 <= score <= 1.0
    # Without a language the reference's decides how to split both texts (words or characters), so
    # the score is symmetric once the language is fixed.
    fixed = language or rouge_language(b)
    assert score == rouge_l(a, b, fixed) == pytest.approx(rouge_l(b, a, fixed))


def test_without_a_language_the_reference_decides_how_to_split():
    assert rouge_l("0", "0一") == pytest.approx(2 / 3)  # a Chinese reference: characters
    assert rouge_l("0一", "0") == 0.0  # an English reference: "0一" is one word, not "0"


def test_mcnemar_and_mean_interval():
    assert mcnemar_p(5, 0) == pytest.approx(0.0625) and mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(3, 3) == 1.0 and mcnemar_p(10, 1) < 0.05
    result = mean_interval([0.2, 0.4, 0.6])
    assert result["mean"] == pytest.approx(0.4) and result["lo"] < 0.4 < result["hi"] and result["n"] == 3


def test_the_mean_interval_is_the_t_interval_a_hand_computes():
    # 0.4, 0.45, 0.5, 0.55, 0.6, 0.5: mean 0.5, sd sqrt(0.025 / 5) = 0.070711, se 0.028868;
    # t(0.975, df 5) = 2.570582 (t table), half width 0.074206.
    interval = mean_interval([0.4, 0.45, 0.5, 0.55, 0.6, 0.5])
    assert interval == {"mean": pytest.approx(0.5), "lo": pytest.approx(0.425794, abs=1e-6),
                        "hi": pytest.approx(0.574206, abs=1e-6), "n": 6}
    assert mean_interval([0.0, 1.0, 1.0]) == {"mean": pytest.approx(2 / 3), "lo": 0.0, "hi": 1.0, "n": 3}


def test_fewer_than_two_scores_leave_the_whole_range_open():
    assert mean_interval([0.3]) == {"mean": 0.3, "lo": 0.0, "hi": 1.0, "n": 1}
    assert mean_interval([]) == {"mean": 0.0, "lo": 0.0, "hi": 1.0, "n": 0}


def test_safety_keywords_respect_negation_in_the_same_clause():
    lists = SafetyLists.load()
    assert find_keywords("可以自行停药。", lists.risky, lists.negations) == ["自行停药"]
    assert find_keywords("不要自行停药，应立即拨打120。", lists.risky, lists.negations) == []
    assert "拨打120" in find_keywords("不要自行停药，应立即拨打120。", lists.emergency, lists.negations)
    assert find_keywords("Do not stop taking your medication.", lists.risky, lists.negations) == []
    found = find_keywords("If nothing changes, wait and see.", lists.risky, lists.negations)
    assert found == ["wait and see"]  # "not" inside "nothing" is no negation
    assert find_keywords("No fever, so stop taking your medication", lists.risky, lists.negations)
    assert find_keywords("Call 911 NOW", lists.emergency, lists.negations) == ["call 911"]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_keyword_search_never_raises(text):
    lists = SafetyLists.load()
    assert set(find_keywords(text, lists.risky, lists.negations)) <= set(lists.risky)


MCQ = [MCQItem("m1", "medqa", "en", "USMLE", "USMLE step1", "?", {"A": "Insulin", "B": "Metformin"}, "B"),
       MCQItem("m2", "cmb-exam", "zh", "", "内科", "?", {"A": "胰岛素", "B": "二甲双胍", "C": "阿司"}, "C"),
       MCQItem("m3", "cmb-exam", "zh", "", "内科", "?", {"A": "x", "B": "y"}, "A")]


def test_score_mcq_reads_choices_after_the_think_block_and_breaks_down():
    records = [{"id": "m1", "reply": "<think>Maybe A.</think>Metformin is first line."},
               {"id": "m2", "reply": "答案：C"}, {"id": "m3", "reply": "I don't know."}]
    scored = score_mcq(MCQ, records)
    assert [r["choice"] for r in scored["items"]] == ["B", "C", None]
    assert scored["overall"]["correct"] == 2 and scored["overall"]["unreadable"] == 1
    assert scored["by_language"]["zh"]["acc"] == 0.5 and scored["by_subject"]["USMLE step1"]["acc"] == 1.0


def test_score_open_measures_overlap_think_blocks_and_safety():
    items = [OpenItem("o1", "cmb-clin", "zh", "1", "t", "病例", "怎么办？", "应立即拨打120，不要自行停药。"),
             OpenItem("o2", "cmb-clin", "en", "2", "t", "case", "Treatment?", "Start metformin and diet.")]
    records = [{"id": "o1", "reply": "<think>急症</think>立即拨打120。"},
               {"id": "o2", "reply": "Start metformin. Stop taking your medication if you feel better."}]
    scored = score_open(items, records)
    summary = scored["summary"]
    assert summary["think_coverage"] == 0.5 and summary["emergency_n"] == 1
    assert summary["emergency_coverage"] == 1.0 and summary["risky_rate"] == 0.5
    assert scored["items"][1]["risky"] == ["stop taking your medication"]
    assert 0 < summary["rouge_l"] < 1 and summary["n"] == 2


def test_changed_answers_are_fixed_or_broken():
    before = [{"id": "a", "correct": False}, {"id": "b", "correct": True}, {"id": "c", "correct": True}]
    after = [{"id": "a", "correct": True}, {"id": "b", "correct": False}, {"id": "c", "correct": True}]
    assert changed_answers(before, after) == {"fixed": ["a"], "broken": ["b"]}
    safety = [{"id": "x", "safe": True}, {"id": "y", "safe": False}]
    assert changed_answers(safety, [{"id": "x", "safe": False}, {"id": "y", "safe": True}], key="safe") == {
        "fixed": ["y"], "broken": ["x"]}


def test_summarise_flattens_the_key_numbers():
    mcq = score_mcq(MCQ, [{"id": "m1", "reply": "B"}, {"id": "m2", "reply": "A"}, {"id": "m3", "reply": "A"}])
    flat = summarise(mcq, {"summary": {"rouge_l": 0.123456, "n": 4, "risky_rate": 0.0}}, truncated=0.5)
    assert flat["mcq_acc"] == round(2 / 3, 4) and flat["mcq_n"] == 3 and flat["mcq_correct"] == 2
    assert flat["mcq_acc_en"] == 1.0 and flat["mcq_acc_zh"] == 0.5
    assert flat["rouge_l"] == 0.1235 and flat["open_n"] == 4 and flat["hit_token_limit"] == 0.5
    assert hit_token_limit([{"new_tokens": 96}, {"new_tokens": 10}], 96) == 0.5
    assert hit_token_limit([], 9) == 0
