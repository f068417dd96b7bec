"""Bad input, mixed with good: every bad row is skipped and counted with a reason, no good row is lost.

Good rows come from the course's own samples in data/. Each test shuffles them with damaged copies
(missing and wrong-typed fields, empty strings, 1 MB strings, rows that are not objects) and with
harmless oddities that must be kept (extra fields, control characters, mixed scripts), then checks
the counts: kept == good, skipped == bad, and nothing raises.
"""

import copy
import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import answers, datasets
from helpers.data_files import read_records
from helpers.datasets import DATA_DIR

MB = "病" * 1_000_000
ODD = " \x00\x07\x1b[31m\u202e混合 mixed текст ✓"  # control characters and three scripts: still a good row
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _items_of(name: str, row: dict) -> int:
    return len(row["QA_pairs"]) if name == "cmb-clin" else 1


# --- evaluation sets (01) --------------------------------------------------------------------

EVAL_FILES = {"cmb-exam": "eval/cmb_exam.json", "medqa": "eval/medqa_4options.jsonl",
              "cmb-clin": "eval/cmb_clin.json"}
EVAL_TEXT = {"cmb-exam": ("question", "answer", "option"), "medqa": ("question", "answer_idx", "options"),
             "cmb-clin": ("description", "QA_pairs")}


def _good_eval_rows(name: str, n: int = 6) -> list[dict]:
    """Sample rows that map cleanly on their own and are not duplicates of each other."""
    good, seen = [], set()
    for row in read_records(DATA_DIR / EVAL_FILES[name]):
        items, report = datasets.clean_eval_rows(name, [row])
        questions = {getattr(i, "question", "") + getattr(i, "description", "") for i in items}
        if items and not report.skipped and not questions & seen and not report.masked:
            seen |= questions
            good.append(row)
    return good[:n]


def _damage(name: str, row: dict, how: str) -> tuple[object, int]:
    """A damaged copy of ``row`` and how many items it would have made (each one is skipped)."""
    row, field = copy.deepcopy(row), EVAL_TEXT[name][0]
    if how == "missing field":
        del row[EVAL_TEXT[name][-1]]
    elif how == "empty string":
        row[field] = "   "
    elif how == "wrong type":
        row[EVAL_TEXT[name][-1]] = {"x": 1} if name != "cmb-clin" else "not a list"
    elif how == "1 MB string":
        return {**row, field: MB}, _items_of(name, row)  # too long to ask: skipped as overlong
    elif how == "not an object":
        return [row], 1
    return row, 1


def _keep(name: str, row: dict, how: str) -> dict:
    row = copy.deepcopy(row)
    if how == "extra field":
        row["unexpected"] = {"nested": [None, 1.5]}
    elif how == "odd characters":
        row[EVAL_TEXT[name][0]] += ODD
    return row


DAMAGE = ("missing field", "empty string", "wrong type", "1 MB string", "not an object")
HARMLESS = ("as is", "extra field", "odd characters")


@pytest.mark.parametrize("name", list(EVAL_FILES))
@SETTINGS
@given(data=st.data())
def test_eval_rows_bad_ones_are_counted_and_good_ones_all_kept(name, data):
    good = _good_eval_rows(name)
    assert len(good) >= 3
    rows, kept_items, skipped_items = [], 0, 0
    for row in good:
        rows.append(_keep(name, row, data.draw(st.sampled_from(HARMLESS))))
        kept_items += _items_of(name, row)
        if data.draw(st.booleans()):
            damaged, items = _damage(name, row, data.draw(st.sampled_from(DAMAGE)))
            rows.append(damaged)
            skipped_items += items
    rows = data.draw(st.permutations(rows))
    items, report = datasets.clean_eval_rows(name, rows)
    assert len(items) == report.kept == kept_items
    assert sum(report.skipped.values()) == skipped_items
    assert set(report.skipped) <= set(datasets.EVAL_SKIP_REASONS)


# --- SFT data (03) ---------------------------------------------------------------------------

SFT_FILES = {"medical-o1-reasoning-SFT": ("sft/medical_o1_sft.json", "en"),
             "delicate_medical_r1_data": ("sft/r1_data_example.jsonl", "zh")}


@pytest.mark.parametrize("source", list(SFT_FILES))
@SETTINGS
@given(data=st.data())
def test_sft_rows_bad_ones_are_counted_and_good_ones_all_kept(source, data):
    path, language = SFT_FILES[source]
    question, reasoning, answer = datasets.SFT_SOURCES[source].columns
    good = datasets.map_sft_rows(read_records(DATA_DIR / path), source, language)[0][:6]
    rows, n_bad = [], 0
    for example in good:
        row = {question: example.question, reasoning: example.reasoning, answer: example.answer}
        harmless = data.draw(st.sampled_from(("as is", "extra field", "odd characters", "1 MB reasoning")))
        if harmless == "extra field":
            row["system_prompt"] = ["unexpected", 3]
        elif harmless == "odd characters":
            row[answer] += ODD
        elif harmless == "1 MB reasoning":
            row[reasoning] = MB  # kept here; 03 drops it by token count, and counts it
        rows.append(row)
        damage = data.draw(st.sampled_from(("none", "missing", "empty", "number", "not an object")))
        if damage != "none":
            bad = {k: v for k, v in row.items() if not (damage == "missing" and k == reasoning)}
            bad = {**bad, question: "" if damage == "empty" else 17} if damage in ("empty", "number") else bad
            rows.append(bad if damage != "not an object" else "a string where a row should be")
            n_bad += 1
    rows = data.draw(st.permutations(rows))
    examples, skipped = datasets.map_sft_rows(rows, source, language)
    assert len(examples) == len(good) and sum(skipped.values()) == n_bad


def test_an_overlong_sft_example_is_dropped_by_token_count_and_counted():
    rows = [{"prompt": "short", "completion": "fine"}, {"prompt": "long", "completion": MB[:5000]}]
    kept, dropped = datasets.drop_overlong(rows, [10, 5000], max_tokens=512)
    assert kept == rows[:1] and dropped == 1


# --- GRPO questions (06) -----------------------------------------------------------------------

@SETTINGS
@given(row=st.one_of(
    st.none(), st.integers(), st.text(max_size=20), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.sampled_from(["Open-ended Verifiable Question", "Ground-True Answer", "extra"]),
                    st.one_of(st.none(), st.integers(), st.text(max_size=30),
                              st.lists(st.text(), max_size=2)))))
def test_a_grpo_row_maps_or_is_skipped_with_a_reason(row):
    try:
        item = datasets.map_verifiable_problem(row)
    except datasets.Skip as skip:
        assert str(skip) in ("malformed", "empty")
    else:
        assert item.question and item.answer


# --- images (05) ---------------------------------------------------------------------------------

def _png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_vl_rows_bad_images_and_reports_are_counted_and_good_ones_kept(tmp_path):
    source = datasets.VL_SOURCES["unsloth/Radiology_mini"]
    good = datasets.read_offline_vl_rows("train")[:4]
    grey16 = Image.fromarray((np.random.default_rng(0).random((300, 200)) * 65535).astype(np.uint16))
    cmyk = Image.new("CMYK", (120, 80), (0, 128, 255, 10))
    odd = [{"image": {"bytes": _png(grey16)}, "caption": "A 16-bit radiograph." + ODD, "image_id": "g16"},
           {"image": {"bytes": _png(cmyk, "JPEG")}, "caption": "A CMYK scan.", "image_id": "cmyk"},
           {**good[0], "image_id": "extra", "unexpected": [1, None]}]
    (tmp_path / "notes.txt").write_text("not an image")
    truncated = _png(Image.new("RGB", (400, 400), (200, 10, 10)))[:300]
    bad = [{**good[1], "caption": ""}, {**good[1], "caption": None}, {"image": str(good[2]["image"])},
           {**good[2], "image": None}, {**good[2], "image": str(tmp_path / "notes.txt")},
           {**good[3], "image": {"bytes": truncated}}, {**good[3], "image": 42},
           {**good[3], "image": {"bytes": _png(Image.new("L", (1, 3000)))}}]
    result = datasets.vl_examples(good + odd + bad, source, max_pixels=256 * 256)
    assert len(result.examples) == len(good) + len(odd)
    assert sum(result.skipped.values()) == len(bad) and "no report" in result.skipped
    assert all(e["images"][0].mode == "RGB" for e in result.examples)


# --- metric extractors and rewards on huge and odd text ------------------------------------------

@pytest.mark.parametrize("text", [MB, ODD * 1000, "\x00" * 10_000, "答案：" + "B" * 100_000, ""])
def test_extractors_and_rewards_take_huge_and_odd_text_without_raising(text, notebook_rewards):
    assert answers.extract_choice(text) in (None, *"ABCDE")
    assert all(isinstance(part, str) for part in answers.split_think(text))
    completions = [[{"role": "assistant", "content": text}]]
    for name in ("format_reward", "reasoning_steps_reward", "length_reward"):  # 06's own rewards
        [score] = notebook_rewards[name](completions)
        assert isinstance(score, float)
    [score] = notebook_rewards["accuracy_reward"](completions, answer=["B"], choices=["ABCD"])
    assert isinstance(score, float)


def test_the_redteam_file_and_the_eval_samples_are_valid_json_lines():
    for path in (DATA_DIR / "safety" / "redteam.jsonl", DATA_DIR / "eval" / "medqa_4options.jsonl"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        assert rows and all(isinstance(r, dict) for r in rows)
