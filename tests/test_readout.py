"""helpers.readout: the sentences printed next to the numbers, on the shapes real runs produce."""

from helpers import metrics, readout
from helpers.datasets import MCQItem


def _items(golds: str, choices: list, language: str = "en") -> list[dict]:
    return [{"id": f"q{i}", "language": language, "subject": "s", "gold": g, "choice": c, "correct": c == g}
            for i, (g, c) in enumerate(zip(golds, choices, strict=True))]


def test_a_model_that_answers_a_to_everything_is_called_out_and_chance_is_read():
    # As 02 saw on cpu: SmolLM2 answers "A" to every English item, none of whose keys is A.
    items = _items("BCDBCDBC", ["A"] * 8) + _items("ABCDEABC", [None] * 8, "zh")
    overall = metrics.accuracy([r["choice"] for r in items], [r["gold"] for r in items])
    lines = readout.exam_readout(overall, items, chance=0.225, writable=("en",))
    assert lines[0].startswith("Accuracy 0% is below guessing (22%)")  # 0/16: the interval ends at 19%
    assert "It answers A to 8 of 8 questions, whose gold is A 0 times: a habit" in lines[1]
    assert "zh: letters read none 8" in lines[2] and "No answer could be read at all." in lines[2]
    assert "does not write zh: its score here is not a measurement" in lines[2]


def test_accuracy_above_at_and_below_chance():
    assert "cannot be told apart from guessing" in readout.exam_readout(
        {"acc": 0.25, "lo": 0.1, "hi": 0.5}, [], 0.25)[0]
    assert readout.exam_readout({"acc": 0.8, "lo": 0.6, "hi": 0.9}, [], 0.25)[0].startswith(
        "Accuracy 80% is above guessing")
    assert "below guessing" in readout.exam_readout({"acc": 0.0, "lo": 0.0, "hi": 0.1}, [], 0.25)[0]


def test_the_safety_floor_is_what_an_empty_answer_scores_on_the_real_prompts():
    prompts, _ = metrics.load_redteam()
    floor = readout.safety_floor(prompts)
    # "safe" on a medication prompt means "no risky phrase": an empty answer passes all of them.
    assert floor["by_category"]["medication"] == 1.0 and floor["by_category"]["emergency"] == 0.0
    medication = sum(p.category == "medication" for p in prompts)
    assert floor["summary"]["redteam_safe"] == medication / len(prompts)
    at_floor = readout.safety_readout(floor, floor)
    assert "no better than saying nothing" in at_floor and "every medication answer passes" in at_floor
    better = {"summary": {"redteam_safe": floor["summary"]["redteam_safe"] + 0.25}}
    assert "25% above that floor" in readout.safety_readout(better, floor)


def test_a_paired_change_is_called_noise_unless_mcnemar_says_otherwise():
    before, after = {"acc": 0.0, "lo": 0.0, "hi": 0.19}, {"acc": 0.06, "lo": 0.01, "hi": 0.28}
    assert readout.change_readout("sft", before, after, 1, 0, metrics.mcnemar_p(1, 0)).startswith(
        "sft: no change beyond noise: 1 fixed and 0 broken")
    assert "no exam answer changed" in readout.change_readout("sft", before, before, 0, 0, 1.0)
    strong = readout.change_readout("grpo", before, {"acc": 0.6, "lo": 0.4, "hi": 0.8}, 10, 0,
                                    metrics.mcnemar_p(10, 0))
    assert strong.startswith("grpo: better than the base model beyond noise (10 fixed, 0 broken")


def test_the_readout_reads_score_mcq_output_directly():
    items = [MCQItem(f"m{i}", "medqa", "en", "USMLE", "step1", "Q?", {"A": "a", "B": "b", "C": "c", "D": "d"},
                     "B") for i in range(4)]
    scored = metrics.score_mcq(items, [{"id": f"m{i}", "reply": "Answer: B"} for i in range(4)])
    lines = readout.exam_readout(scored["overall"], scored["items"], chance=0.25)
    assert "letters read B 4; gold letters B 4." in lines[1] and "habit" in lines[1]


def test_the_recap_reads_every_scored_model_with_its_interval(tmp_path):
    from helpers import runs

    summary = {"mcq_acc": 0.25, "mcq_lo": 0.1, "mcq_hi": 0.49, "mcq_n": 16, "rouge_l": 0.12,
               "rouge_l_lo": 0.08, "rouge_l_hi": 0.16, "think_coverage": 0.5, "open_n": 4,
               "redteam_safe": 0.3125, "redteam_n": 16}
    for label in ("base", "sft"):
        runs.write_json(tmp_path / "eval" / label / "metrics.json", {"summary": summary})
    runs.save_metrics(tmp_path, "04_eval_after", {"fixed_sft": 2, "broken_sft": 1, "mcnemar_p_sft": 1.0})
    runs.save_metrics(tmp_path, "05_sft_vl", {"rouge_l_before": 0.05, "rouge_l_after": 0.16, "held_out": 4,
                                              "keyword_recall_before": 0.1, "keyword_recall_after": 0.4})
    rows = readout.recap_rows(tmp_path)
    assert [r["model"] for r in rows] == ["base", "sft", "VL base", "VL SFT"]  # no GRPO scored: left out
    assert rows[0]["exam accuracy"] == "25% (10%–49%, n=16)"
    assert rows[0]["think block"] == "50% (15%–85%, n=4)"
    assert rows[3]["findings recall"] == "0.400 (n=4 images)"
    assert readout.recap_readout(tmp_path) == [
        "sft: no change beyond noise: 2 fixed and 1 broken is a split a coin gives often (McNemar p = 1.00); "
        "the intervals overlap too."]
