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


SUMMARY = {"mcq_acc": 0.25, "mcq_lo": 0.1, "mcq_hi": 0.49, "mcq_n": 16, "rouge_l": 0.12,
           "rouge_l_lo": 0.08, "rouge_l_hi": 0.16, "think_coverage": 0.5, "open_n": 4,
           "redteam_safe": 0.3125, "redteam_n": 16}


def test_the_recap_reads_every_scored_model_with_its_interval(tmp_path):
    from helpers import runs

    for label in ("base", "sft"):
        runs.write_json(tmp_path / "eval" / label / "metrics.json", {"summary": SUMMARY})
    runs.save_metrics(tmp_path, "04_eval_after", {"fixed_sft": 2, "broken_sft": 1, "mcnemar_p_sft": 1.0})
    per_image = [{"id": f"course_vl_test_{i:03d}", "rouge_l_before": b, "rouge_l_after": a,
                  "keyword_recall_before": 0.0, "keyword_recall_after": k}
                 for i, (b, a, k) in enumerate([(0.0, 0.1, 0.5), (0.1, 0.2, None), (0.0, 0.3, 1.0),
                                                (0.1, 0.4, 0.0)], 1)]
    runs.save_metrics(tmp_path, "05_sft_vl", {"rouge_l_before": 0.05, "rouge_l_after": 0.25, "held_out": 4,
                                              "keyword_recall_before": 0.0, "keyword_recall_after": 0.5,
                                              "per_image": per_image})
    rows = readout.recap_rows(tmp_path)
    assert [r["model"] for r in rows] == ["base", "sft", "VL base", "VL SFT"]  # no GRPO scored: left out
    assert rows[0]["exam accuracy"] == "25% (10%–49%, n=16)"
    assert rows[0]["think block"] == "50% (15%–85%, n=4)"
    # By hand: ROUGE-L after 0.1, 0.2, 0.3, 0.4: mean 0.25, sd 0.1291, se 0.06455; t(0.975, df 3) = 3.182446
    # from a t table, so 0.25 ± 0.2054 (a normal interval, ± 0.1265, would read 0.123–0.377).
    assert rows[3]["image report ROUGE-L"] == "0.250 (0.045–0.455, n=4 images)"
    # Recall: the image whose report names no findings term (None) is left out; 0.5 ± 1.24 is clipped.
    assert rows[3]["findings recall"] == "0.500 (0.000–1.000, n=3 images)"
    assert rows[2]["findings recall"] == "0.000 (0.000–0.000, n=4 images)"  # no spread, no width
    assert readout.recap_readout(tmp_path) == [
        "sft: no change beyond noise: 2 fixed and 1 broken is a split a coin gives often (McNemar p = 1.00); "
        "the intervals overlap too."]


def test_vl_rows_without_per_image_scores_or_with_one_image_say_there_is_no_interval(tmp_path):
    from helpers import runs

    runs.save_metrics(tmp_path, "05_sft_vl", {"rouge_l_before": 0.05, "rouge_l_after": 0.16, "held_out": 4,
                                              "keyword_recall_before": 0.1, "keyword_recall_after": 0.4})
    recall = readout.recap_rows(tmp_path)[1]["findings recall"]
    assert recall == "0.400 (n=4 images; rerun 05 for an interval)"  # a 05 from before per-image scores
    one = {"rouge_l_before": 0.05, "rouge_l_after": 0.16,
           "keyword_recall_before": 0.1, "keyword_recall_after": 0.4}
    runs.save_metrics(tmp_path, "05_sft_vl", {**one, "held_out": 1, "per_image": [{"id": "x", **one}]})
    assert readout.recap_rows(tmp_path)[1]["image report ROUGE-L"] == "0.160 (n=1 image: no interval)"




def _redteam_run(tmp_path, replies: dict[str, dict[str, str]]):
    """A run dir with eval/<label>/metrics.json as 02 (base) and 04 (adapters) write them."""
    from helpers import runs

    prompts, _ = metrics.load_redteam()
    for label, changed in replies.items():
        records = [{"id": p.id, "reply": changed.get(p.id, "This is an emergency: call 911 or 急救 now.")}
                   for p in prompts]
        runs.write_json(tmp_path / "eval" / label / "metrics.json",
                        {"summary": SUMMARY, "redteam": metrics.score_redteam(prompts, records)})
    return {p.id: p.category for p in prompts}


def test_the_recap_names_the_red_team_answers_that_became_unsafe_by_id_and_category(tmp_path):
    category = _redteam_run(tmp_path, {
        "base": {"rt-en-02": "Sleep it off."},  # unsafe already with the base model: cannot become unsafe
        "sft": {"rt-en-02": "Sleep it off.", "rt-en-03": "You feel fine, so wait.",
                "rt-zh-05": "多休息。", "rt-en-07": "Just stop taking your medication."},
        "grpo": {}})
    assert (category["rt-en-03"], category["rt-zh-05"], category["rt-en-07"]) == (
        "overdose", "self-harm", "medication")
    lines = readout.recap_readout(tmp_path)  # 04 saved no exam counts here: red-team lines only
    assert lines == [
        "sft: 3 of the 15 red-team answers that were safe with the base model became unsafe: rt-en-03 "
        "(overdose), rt-en-07 (medication), rt-zh-05 (self-harm). Read them in 04's red-team cell.",
        "grpo: every red-team answer that was safe with the base model is still safe."]


def test_a_base_model_with_no_safe_answer_has_none_to_lose():
    unsafe = [{"id": "rt-en-01", "category": "emergency", "safe": False}]
    assert "answered no red-team prompt safely" in readout.redteam_change_readout("sft", unsafe, unsafe)
