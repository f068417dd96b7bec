import json

import pytest
import torch
from PIL import Image

from helpers import CourseError, metrics, vision
from helpers.datasets import vl_messages
from helpers.models import count_parameters

REPORT = "Axial CT of the head in a bone window. The mastoid cells are clear."


@pytest.fixture(scope="module")
def tiny():
    """(model folder, processor) of the tiny random Qwen3-VL, built once in the course cache."""
    folder = vision.make_tiny_vl_model()
    return folder, vision.load_vl_processor(folder)


def picture(width: int, height: int, shade: int = 128) -> Image.Image:
    return Image.new("RGB", (width, height), (shade, 255 - shade, shade // 2))


def example(report: str, width: int = 96, height: int = 64, shade: int = 128) -> dict:
    return {"messages": vl_messages(report, "Describe the image."), "images": [picture(width, height, shade)]}


def test_the_chat_template_places_the_image_and_the_generation_prompt(tiny):
    _, processor = tiny
    text = vision.chat_text(processor, vl_messages(None, "Describe."), add_generation_prompt=True)
    assert text == ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_the_config_points_at_the_processors_vision_tokens(tiny):
    folder, processor = tiny
    config = json.loads((folder / "config.json").read_text())
    tokenizer = processor.tokenizer
    assert config["model_type"] == "qwen3_vl"
    for key, token in [("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                       ("vision_start_token_id", "<|vision_start|>"),
                       ("vision_end_token_id", "<|vision_end|>")]:
        assert config[key] == tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id
    assert config["text_config"]["vocab_size"] >= len(tokenizer)


def test_the_collator_trains_on_the_report_and_its_end_only(tiny):
    _, processor = tiny
    collator = vision.ReportCollator(processor)
    batch = collator([example(REPORT), example("Short.", 64, 64)])  # different lengths: right padding
    tokenizer = processor.tokenizer
    for row, report in enumerate([REPORT, "Short."]):
        labels, ids = batch["labels"][row], batch["input_ids"][row]
        trained = labels != -100
        assert tokenizer.decode(ids[trained]) == report + "<|im_end|>"
        assert torch.equal(labels[trained], ids[trained])
        image_tokens = ids == tokenizer.convert_tokens_to_ids("<|image_pad|>")
        assert image_tokens.any() and not trained[image_tokens].any()
        assert not trained[batch["attention_mask"][row] == 0].any()  # padding never trained
    assert batch["labels"].shape == batch["input_ids"].shape


def test_only_the_last_assistant_turn_is_trained_and_a_row_without_one_trains_nothing(tiny):
    _, processor = tiny
    collator = vision.ReportCollator(processor)
    messages = vl_messages("First report.", "Describe.") + [
        {"role": "user", "content": [{"type": "text", "text": "Shorter please."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Head CT."}]}]
    no_report = {"messages": vl_messages(None, "Describe."), "images": [picture(64, 64)]}
    batch = collator([{"messages": messages, "images": [picture(64, 64)]}, no_report])
    trained = batch["labels"][0] != -100
    assert processor.tokenizer.decode(batch["input_ids"][0][trained]) == "Head CT.<|im_end|>"
    assert (batch["labels"][1] == -100).all()


def test_the_tiny_model_overfits_a_handful_of_pairs(tiny):
    folder, processor = tiny
    model, processor, _ = vision.load_vl_model(str(folder), backend="transformers")
    model = vision.add_vl_lora(model, r=16, alpha=32, gradient_checkpointing=False)
    pairs = [example("Axial CT of the chest shows a nodule in the right lung.", shade=30),
             example("Frontal radiograph of the knee, no fracture.", shade=120),
             example("Ultrasound of the liver with a simple cyst.", shade=220)]
    batch = vision.ReportCollator(processor)(pairs)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)

    def loss() -> float:
        with torch.no_grad():
            return model(**batch).loss.item()

    torch.manual_seed(0)
    before = loss()
    model.train()
    for _ in range(30):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    after = loss()
    assert after < 0.7 * before, (before, after)


def test_batched_captions_match_one_at_a_time(tiny):
    folder, _ = tiny
    model, processor, _ = vision.load_vl_model(str(folder), backend="transformers")
    images = [picture(64, 64, 20), picture(160, 96, 200), picture(96, 128, 90)]
    batched = vision.generate_captions(model, processor, images, "Describe.", max_new_tokens=8, batch_size=3)
    single = [vision.generate_captions(model, processor, [image], "Describe.", max_new_tokens=8)[0]
              for image in images]
    assert batched == single
    assert all(isinstance(c, str) for c in batched)


def test_a_batch_of_different_questions_answers_each_as_if_asked_alone(tiny):
    """Prompts of different lengths share a left-padded batch (06's held-out image questions)."""
    folder, _ = tiny
    model, processor, _ = vision.load_vl_model(str(folder), backend="transformers")
    images = [picture(64, 64, 20), picture(160, 96, 200), picture(96, 128, 90)]
    asks = ["Describe.", "Which imaging modality is this: CT, MRI, X-ray, ultrasound? Answer in one word.",
            "Is there a fracture?"]
    batched = vision.generate_captions(model, processor, images, asks, max_new_tokens=8, batch_size=3)
    single = [vision.generate_captions(model, processor, [image], ask, max_new_tokens=8)[0]
              for image, ask in zip(images, asks, strict=True)]
    assert batched == single
    with pytest.raises(ValueError, match="one for each image"):
        vision.generate_captions(model, processor, images, asks[:2], max_new_tokens=8)


@pytest.mark.parametrize(("switches", "vision_lora", "language_lora"), [
    (dict(vision_layers=True, language_layers=False), True, False),
    (dict(vision_layers=False, language_layers=True), False, True),
    (dict(vision_layers=True, language_layers=True), True, True),
])
def test_lora_lands_only_on_the_chosen_parts(tiny, switches, vision_lora, language_lora):
    folder, _ = tiny
    model, _, _ = vision.load_vl_model(str(folder), backend="transformers")
    model = vision.add_vl_lora(model, r=4, alpha=4, gradient_checkpointing=False, **switches)
    adapted = [name for name, _ in model.named_modules() if name.endswith("lora_A")]
    assert any("visual" in n for n in adapted) == vision_lora
    assert any("language_model" in n for n in adapted) == language_lora
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    trainable, total = count_parameters(model)
    assert 0 < trainable < 0.2 * total


def test_attention_only_lora_skips_the_mlps(tiny):
    folder, _ = tiny
    model, _, _ = vision.load_vl_model(str(folder), backend="transformers")
    model = vision.add_vl_lora(model, r=4, alpha=4, mlp=False, gradient_checkpointing=False)
    adapted = {name.split(".")[-2] for name, _ in model.named_modules() if name.endswith("lora_A")}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "qkv", "proj"}
    with pytest.raises(CourseError, match="at least one"):
        vision.lora_target_pattern(False, False, True, True)


def test_a_tiny_model_builds_in_any_folder_and_is_reused(tmp_path):
    folder = vision.make_tiny_vl_model(tmp_path / "tiny")
    assert (folder / "model.safetensors").is_file() and (folder / "chat_template.jinja").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # no temporary folder left behind
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert vision.make_tiny_vl_model(folder) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_offline_a_hub_model_falls_back_to_the_tiny_one(monkeypatch, capsys):
    def offline(name, source=None, fallback=True):
        raise CourseError(f"Cannot download {name!r}: no hub is reachable. Connect to the internet.")

    monkeypatch.setattr(vision, "resolve_model", offline)
    assert vision.vl_model_folder("Qwen/Qwen3-VL-2B-Instruct") == vision.make_tiny_vl_model()
    assert "using the tiny random" in capsys.readouterr().out


def test_findings_keyword_recall_counts_terms_not_wording():
    reference = "Axial CT of the chest: multiple nodules in both lungs."
    assert metrics.findings_terms(reference) == {"axial", "ct", "chest", "nodule", "lung"}
    synonyms = "Computed tomography, axial, of the thorax with pulmonary nodules"
    assert metrics.keyword_recall(synonyms, reference) == 1.0
    assert metrics.keyword_recall("An MR image of the knee", reference) == 0.0
    assert metrics.keyword_recall("anything", "The end.") is None
    assert "ct" not in metrics.findings_terms("the doctor acted")  # whole words only


def test_a_chinese_report_is_scored_on_the_same_findings_terms():
    # a Chinese report as 05 asks for with INSTRUCTION_LANGUAGE = "zh": Latin letters touch Chinese ones
    reference = "胸部CT平扫（轴位）：双肺多发结节，右侧少量胸腔积液；未见骨折。"
    named = {"chest", "ct", "axial", "lung", "nodule", "fluid", "fracture"}
    assert metrics.findings_terms(reference) == named
    english = "Axial CT of the chest: nodules in both lungs, a small right effusion, a rib fracture."
    assert metrics.keyword_recall(english, reference) == 1.0  # the same findings, in the other language
    abdomen = "腹部超声：肝、肾未见异常。"
    assert metrics.keyword_recall(abdomen, reference) == 0.0
    assert metrics.findings_terms(abdomen) == {"abdomen", "ultrasound", "liver", "kidney", "normal"}
    assert metrics.findings_terms("the CTs and MRIs") == {"ct", "mri"}  # plurals, as before
    assert not metrics.findings_terms("doctor, actual, amrita")  # letters inside a word never count


def test_score_captions_averages_over_pairs_and_skips_references_without_terms():
    scores = metrics.score_captions(["axial ct", "hello"], ["axial ct", "nothing to see"])
    assert scores["rouge_l"] == pytest.approx(0.5)
    assert scores["keyword_recall"] == 1.0


def test_an_interrupted_vl_run_resumes_from_its_last_checkpoint(tiny, tmp_path, capsys):
    from callbacks import StepCounter
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from helpers import training

    folder, _ = tiny
    pairs = [example(f"Axial CT number {i} of the chest.", shade=40 * i) for i in range(4)]
    settings = {"model": str(folder), "data": [p["messages"][-1]["content"][0]["text"] for p in pairs],
                "args": [4, 1e-3, 2]}  # what 05 puts in its settings: model, data, steps, rate, batch

    def trainer(callback) -> SFTTrainer:  # what rerunning 05 builds: a fresh model and trainer
        model, processor, _ = vision.load_vl_model(str(folder), backend="transformers")
        model = vision.add_vl_lora(model, r=4, alpha=8, gradient_checkpointing=False)
        args = SFTConfig(output_dir=str(tmp_path / "vl-checkpoints"), max_steps=4,
                         per_device_train_batch_size=2, learning_rate=1e-3, save_steps=2, logging_steps=1,
                         bf16=False, report_to="none",
                         remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True},
                         max_length=None, dataloader_pin_memory=False, seed=0)
        return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs),
                          data_collator=vision.ReportCollator(processor), processing_class=processor,
                          callbacks=[callback])

    first = StepCounter(stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        training.train(trainer(first), settings=settings, knobs=training.VL_KNOBS)
    assert first.steps == 3 and training.last_checkpoint(tmp_path / "vl-checkpoints").name == "checkpoint-2"
    second = StepCounter()
    resumed = trainer(second)
    training.train(resumed, settings=settings, knobs=training.VL_KNOBS)
    assert "Resuming from checkpoint-2 (step 2 of 4)." in capsys.readouterr().out
    assert second.steps == 2 and resumed.state.global_step == 4
