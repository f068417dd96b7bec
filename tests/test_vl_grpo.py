"""GRPO of the VL model (06, section 13): closed questions from real-style captions, the policy, the
answers in order, the VL adapters of 07, the recap rows, the plot of answers beside their images."""

import numpy as np
import pytest
from PIL import Image

from helpers import demo, readout, runs, vl_grpo
from helpers.datasets import (
    VL_INSTRUCTION,
    VL_INSTRUCTION_ZH,
    VL_OFFLINE,
    concept_ids,
    vl_examples,
    vl_instruction,
)
from helpers.errors import CourseError
from helpers.report_facts import Question, is_correct

# ROCO-style rows, as Radiology_mini holds them: long, messy captions; the first concept is the modality.
ROCO_CT = ("Axial contrast-enhanced CT of the chest (lung window) , showing a 2.1 cm spiculated nodule in "
           "the right upper lobe; no pneumothorax; mediastinal lymph nodes are not enlarged, and there is no "
           "pleural effusion.")
ROCO_XRAY = ("Anteroposterior radiograph of the left wrist 6 weeks after the fall: the distal radius "
             "fracture has healed, with callus ; the ulna is intact")
CHINESE_ONLY = "胸部CT平扫：右肺上叶见结节，未见气胸，未见骨折。"
NOTHING = "Figure 3. Same patient, 2 years later (arrowheads)."


def _image(grey: int = 100) -> Image.Image:
    return Image.fromarray(np.full((32, 32, 3), grey, dtype=np.uint8))


def _example(report: str, cuis=(), id_: str = "x", grey: int = 100) -> dict:
    return {"id": id_, "report": report, "cuis": list(cuis), "images": [_image(grey)]}


def test_a_roco_caption_gives_its_modality_from_the_concepts_and_each_finding_it_states_or_rules_out():
    rows, skipped = vl_grpo.question_rows([_example(ROCO_CT, ["C0040405", "C0817096"], "ROCOv2_2023_001")])
    by_kind = {r["kind"]: r for r in rows}
    assert skipped == {}
    assert by_kind["modality"]["answer"] == "CT"
    assert by_kind["nodule"]["answer"] == "yes" and by_kind["pneumothorax"]["answer"] == "no"
    assert by_kind["effusion"]["answer"] == "no"  # "there is no pleural effusion"
    assert "fracture" not in by_kind  # the caption says nothing about one: no question
    row = by_kind["nodule"]
    assert row["prompt"] == [{"role": "user", "content": f"{vl_grpo.REASON_FIRST['en']} {row['question']}"}]
    assert row["id"] == "ROCOv2_2023_001" and row["image"].size == (32, 32)


def test_the_concepts_win_over_the_words_and_a_healed_fracture_is_still_named_a_fracture():
    rows, _ = vl_grpo.question_rows([_example(ROCO_XRAY, ["C1306645"])])
    assert {r["kind"]: r["answer"] for r in rows} == {"modality": "X-ray", "fracture": "yes"}
    biopsy = "MR image of the liver obtained after the CT-guided biopsy; no effusion."
    rows, _ = vl_grpo.question_rows([_example(biopsy, ["C0024485"])])
    assert {r["kind"]: r["answer"] for r in rows} == {"modality": "MRI", "effusion": "no"}
    # Without concepts the words name two modalities: no modality question, the effusion one stays.
    rows, _ = vl_grpo.question_rows([_example(biopsy)])
    assert {r["kind"] for r in rows} == {"effusion"}


def test_a_chinese_only_caption_asks_in_chinese_and_its_answers_are_graded_in_chinese():
    rows, _ = vl_grpo.question_rows([_example(CHINESE_ONLY)], language="zh")
    answers = {r["kind"]: r["answer"] for r in rows}
    assert answers == {"modality": "CT", "nodule": "yes", "pneumothorax": "no", "fracture": "no"}
    assert all(vl_grpo.REASON_FIRST["zh"] in r["prompt"][0]["content"] for r in rows)
    assert all("吗" in r["question"] or "哪种" in r["question"] for r in rows)
    fracture = Question("fracture", "", answers["fracture"])
    assert is_correct("无，未见骨折。", fracture) and not is_correct("有骨折。", fracture)


def test_captions_that_state_nothing_are_skipped_and_counted_in_one_sentence():
    examples = [_example(NOTHING, id_="a"), _example(ROCO_CT, ["C0040405"], "b"), _example("", id_="c")]
    rows, skipped = vl_grpo.question_rows(examples)
    assert {r["id"] for r in rows} == {"b"} and skipped == {vl_grpo.NO_FACT: 2}
    sentence = vl_grpo.describe_rows(rows, skipped, len(examples), "training")
    assert sentence.startswith(f"training: {len(rows)} closed questions (")
    assert "from 3 image(s); 2 image(s) skipped" in sentence and "1 modality" in sentence


def test_an_unknown_language_is_one_sentence():
    with pytest.raises(CourseError, match="INSTRUCTION_LANGUAGE = 'fr'"):
        vl_grpo.question_rows([_example(ROCO_CT)], language="fr")
    with pytest.raises(CourseError, match="INSTRUCTION_LANGUAGE = 'de'"):
        vl_instruction("de")
    assert vl_instruction("en") == VL_INSTRUCTION and vl_instruction("zh") == VL_INSTRUCTION_ZH
    assert "中文" in VL_INSTRUCTION_ZH and "诊断" in VL_INSTRUCTION_ZH


def test_guessing_scores_one_in_two_for_yes_or_no_and_one_in_five_for_the_modality():
    assert vl_grpo.chance_level(["fracture", "nodule"]) == 0.5
    assert vl_grpo.chance_level(["modality"]) == pytest.approx(0.2)
    assert vl_grpo.chance_level(["modality", "mass"]) == pytest.approx(0.35)
    assert vl_grpo.chance_level([]) == 0.0


def test_concept_ids_read_lists_csv_text_and_arrays_and_nothing_else():
    assert concept_ids(["C0040405", "C0817096"]) == ["C0040405", "C0817096"]
    assert concept_ids("['C0040405', 'C0817096']") == ["C0040405", "C0817096"]  # a CSV copy's text
    assert concept_ids(np.array(["C1306645"])) == ["C1306645"]  # parquet through pandas
    assert concept_ids(None) == [] and concept_ids(["ct", 7]) == [] and concept_ids(3) == []


def test_the_pairs_keep_their_concepts_where_the_schema_has_them(tmp_path):
    path = tmp_path / "chest.png"
    _image().save(path)
    rows = [{"image": str(path), "image_id": "r1", "caption": ROCO_CT, "cui": ["C0040405"]},
            {"image": str(path), "image_id": "r2", "caption": CHINESE_ONLY}]
    pairs = vl_examples(rows, VL_OFFLINE, max_pixels=64 * 64)
    assert [ex["cuis"] for ex in pairs.examples] == [["C0040405"], []]


def test_answers_come_back_in_the_rows_order_with_each_rows_own_question(monkeypatch):
    calls = []

    def fake_captions(model, processor, images, instructions, *, max_new_tokens, batch_size):
        calls.append((list(instructions), len(images), max_new_tokens, batch_size))
        return [f"{ask[-12:]}|{image.getpixel((0, 0))[0]}"
                for image, ask in zip(images, instructions, strict=True)]

    monkeypatch.setattr("helpers.vision.generate_captions", fake_captions)
    examples = [_example(ROCO_CT, ["C0040405"], "a", 10), _example(ROCO_XRAY, ["C1306645"], "b", 20),
                _example("Chest radiograph: no fracture is seen.", [], "c", 30)]
    rows, _ = vl_grpo.question_rows(examples)
    assert len({r["question"] for r in rows}) >= 2  # a modality question and a fracture question
    answers = vl_grpo.answer_questions(None, None, rows, max_new_tokens=16)
    grey = {"a": 10, "b": 20, "c": 30}
    assert answers == [f"{r['prompt'][0]['content'][-12:]}|{grey[r['id']]}" for r in rows]
    # one pass over every row, each with its own question: different questions share a batch
    assert calls == [([r["prompt"][0]["content"] for r in rows], len(rows), 16, 4)]
    assert (f"{vl_grpo.REASON_FIRST['en']} Which imaging modality is this: CT, MRI, X-ray, ultrasound, "
            "nuclear medicine? Answer in one word.") in calls[0][0]


def test_the_policy_continues_05s_adapter_or_starts_fresh_and_says_which(tmp_path):
    from helpers import vision
    from helpers.models import count_parameters, save_adapter

    model, processor, _ = vision.load_vl_model("tiny-random-qwen-vl")
    fresh, said = vl_grpo.load_vl_policy(model, tmp_path / demo.VL_ADAPTER, backend="transformers",
                                         lora_r=4, lora_alpha=8)
    assert "fresh LoRA adapters" in said and "run 05_sft_vl.ipynb first" in said
    assert not said.startswith("the VL SFT adapter")  # 06 calls this start "VL base"
    assert count_parameters(fresh)[0] > 0
    save_adapter(fresh, processor, tmp_path / demo.VL_ADAPTER)
    model, _, _ = vision.load_vl_model("tiny-random-qwen-vl")
    policy, said = vl_grpo.load_vl_policy(model, tmp_path / demo.VL_ADAPTER, backend="transformers",
                                          lora_r=16, lora_alpha=16)
    assert said.startswith("the VL SFT adapter of 05")
    assert policy.peft_config["default"].r == 4  # 05's own rank, not the one asked for fresh adapters
    assert count_parameters(policy)[0] == count_parameters(fresh)[0]  # trainable: GRPO continues it


def test_07_finds_the_vl_adapters_in_course_order_and_names_what_trains_a_missing_one(tmp_path):
    for folder in (vl_grpo.VL_GRPO_ADAPTER, demo.VL_ADAPTER):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "adapter_config.json").write_text("{}")
    assert list(demo.find_adapters(tmp_path, demo.VL_ADAPTERS)) == ["vl-sft", "vl-grpo"]
    assert demo.find_adapters(tmp_path) == {}  # the text adapters are looked for apart
    (tmp_path / vl_grpo.VL_GRPO_ADAPTER / "adapter_config.json").unlink()
    labels = ["vl-base", *demo.find_adapters(tmp_path, demo.VL_ADAPTERS)]
    assert demo.missing_note(labels, ["vl-base", "vl-sft", "vl-grpo"]) == (
        "Not trained yet: After VL GRPO (06) (run 06_grpo.ipynb).")


def test_the_image_tab_has_a_column_for_the_vl_grpo_model(tmp_path):
    from helpers import apps

    sample = tmp_path / "chest.png"
    _image().save(sample)
    app = apps.build_vl_app(lambda image, instruction, label, tokens: f"{label} wrote this",
                            ["vl-base", "vl-sft", "vl-grpo"], {"chest": sample}, instruction="Describe.",
                            max_pixels=64 * 64)
    app.sample.value = "chest"
    app.describe(None)
    assert len(app.panels) == 3
    assert "After VL GRPO (06)" in app.panels[2].value and "vl-grpo wrote this" in app.panels[2].value


def test_the_recap_adds_the_closed_image_questions_of_06_with_guessing_beside_them(tmp_path):
    runs.save_metrics(tmp_path, "05_sft_vl", {"rouge_l_before": 0.05, "rouge_l_after": 0.16, "held_out": 4,
                                              "keyword_recall_before": 0.1, "keyword_recall_after": 0.4})
    assert "image questions" not in readout.recap_rows(tmp_path)[1]  # 06 has not run
    vl = {"started_from": "sft", "heldout_questions": 8, "chance": 0.3125, "heldout_accuracy_before": 0.25,
          "heldout_accuracy_after": 0.5}
    runs.save_metrics(tmp_path, "06_grpo", {"heldout_reward_gain": 0.0, "vl": vl})
    rows = readout.recap_rows(tmp_path)
    assert [r["model"] for r in rows] == ["VL base", "VL SFT", "VL GRPO"]
    # Wilson intervals by hand: 2 of 8 → 7%–59%; 4 of 8 → 22%–78%.
    assert rows[1]["image questions"] == "25% (7%–59%, n=8; guessing 31%)"
    assert rows[2] == {"model": "VL GRPO", "image questions": "50% (22%–78%, n=8; guessing 31%)"}
    runs.save_metrics(tmp_path, "06_grpo", {"heldout_reward_gain": 0.0})  # VL_GRPO = False: no row
    assert [r["model"] for r in readout.recap_rows(tmp_path)] == ["VL base", "VL SFT"]


def test_answers_beside_their_images_show_the_questions_and_right_or_wrong():
    from helpers import plots

    fig = plots.show_caption_comparison([_image(), _image(200)], ["Is there a fracture?\n\ngold: no"] * 2,
                                        ["No.", "yes"], ["No fracture.", "no"], ["right", "wrong"],
                                        ["right", "right"], title="Held-out image questions",
                                        headings=("question", "VL SFT", "after VL GRPO"))
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert "VL SFT · wrong" in titles and titles.count("after VL GRPO · right") == 2
    assert "question" in titles and not any("ROUGE-L" in t for t in titles)
    fig.canvas.draw()  # it renders
    default = plots.show_caption_comparison([_image()], ["ref"], ["a"], ["b"], [0.5], [0.25])
    assert "base model · ROUGE-L 0.50" in [ax.get_title(loc="left") for ax in default.axes]
