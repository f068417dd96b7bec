"""The side-by-side demo of 07: adapters found and switched, the safety screen, the app's panels."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import demo, vision
from helpers.demo import Answer
from helpers.generation import generate_replies
from helpers.images import UnusableImage
from helpers.models import add_lora, load_text_model, save_adapter


def _random_adapter(path: Path, seed: int) -> Path:
    """A LoRA adapter for the embedded model whose B matrices are noise, so it changes the answers."""
    model, tokenizer = load_text_model("embedded")
    model = add_lora(model, r=8, alpha=16, gradient_checkpointing=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return save_adapter(model, tokenizer, path)


def test_find_adapters_lists_only_what_the_run_has_trained(tmp_path):
    assert demo.find_adapters(tmp_path) == {}
    (tmp_path / "grpo-adapter").mkdir()
    (tmp_path / "grpo-adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "sft-adapter").mkdir()  # a folder without an adapter in it does not count
    assert demo.find_adapters(tmp_path) == {"grpo": tmp_path / "grpo-adapter"}


def test_base_answers_come_from_the_base_weights_and_adapters_change_them(tmp_path):
    question = "What should I do about a mild headache?"
    model, tokenizer = load_text_model("embedded")
    [plain] = generate_replies(model, tokenizer, [question], max_new_tokens=12, batch_size=1)
    adapters = {"sft": _random_adapter(tmp_path / "sft-adapter", 0),
                "grpo": _random_adapter(tmp_path / "grpo-adapter", 1)}
    model = demo.attach_adapters(model, adapters)
    answers = demo.ask(model, tokenizer, question, ["base", "sft", "grpo"], max_new_tokens=12)
    assert [a.model for a in answers] == ["base", "sft", "grpo"]
    assert answers[0].answer == plain.text  # every adapter switched off for the base model
    assert answers[1].answer != plain.text and answers[2].answer != answers[1].answer
    again = demo.ask(model, tokenizer, question, ["sft"], max_new_tokens=12)
    assert again[0].answer == answers[1].answer  # switching back and forth changes nothing


def test_without_adapters_the_plain_model_answers_as_base():
    model, tokenizer = load_text_model("embedded")
    assert demo.attach_adapters(model, {}) is model
    [answer] = demo.ask(model, tokenizer, "Hello?", ["base"], max_new_tokens=4)
    assert answer.new_tokens > 0


@pytest.mark.parametrize("text, flags", [
    ("Call 911 now and go to the emergency department.", ["advises urgent care"]),
    ("胸痛持续不缓解，请立即拨打120。", ["advises urgent care"]),
    ("血压正常了就可以自行停药。", ["risky advice: 自行停药"]),
    ("不要自行停药，按时复诊。", []),  # negated in the same clause
    ("Drink water and rest.", []),
])
def test_the_safety_screen_flags_urgent_and_risky_advice(text, flags):
    assert demo.screen(text) == flags


def test_a_panel_escapes_model_text_and_folds_the_reasoning():
    answer = Answer("sft", "Chest pain <b>and</b> sweating.", "<script>alert(1)</script> Call 120.", 20, 2.0,
                    ["advises urgent care"])
    panel = demo.answer_html(answer)
    assert "<script>" not in panel and "&lt;script&gt;" in panel
    assert "<details>" in panel and "&lt;b&gt;and&lt;/b&gt;" in panel
    assert "After SFT (03)" in panel and "20 tokens in 2.0 s · 10.0 tokens/s" in panel
    assert "advises urgent care" in panel
    empty = demo.answer_html(Answer("base", "", "", 0, 0.0))
    assert "<details>" not in empty and "(no answer)" in empty


def test_answers_stream_as_they_are_written_and_end_with_the_whole_reply():
    model, tokenizer = load_text_model("embedded")
    seen = []
    answer = demo.answer_one(model, tokenizer, "What is a fever?", "base", max_new_tokens=16,
                             on_text=seen.append)
    assert len(seen) >= 2 and seen[-1].endswith(answer.answer) and answer.new_tokens > 0
    assert all(later.startswith(earlier) for earlier, later in zip(seen, seen[1:], strict=False))
    assert 0 < answer.latency <= answer.seconds


def test_temperature_zero_is_greedy_and_above_zero_samples():
    assert demo.sampling(0.0) == {"do_sample": False}
    assert demo.sampling(0.7) == {"do_sample": True, "temperature": 0.7, "top_p": 0.95}


def test_missing_models_are_named_with_the_notebook_that_trains_them():
    assert demo.missing_note(["base", "sft", "grpo"], ["base", "sft", "grpo"]) == ""
    note = demo.missing_note(["base"], ["base", "sft", "grpo"])
    assert "After SFT (03) (run 03_sft_llm.ipynb)" in note and "06_grpo.ipynb" in note


class FakeModels:
    """Stands in for the models: streams a line, then answers; ``fail`` names one that raises."""

    def __init__(self, fail: str = ""):
        self.fail, self.calls, self.shown = fail, [], []
        self.app = None

    def __call__(self, question, label, max_new_tokens, temperature, on_text):
        self.calls.append((question, label, max_new_tokens, temperature))
        if label == self.fail:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB\nmore lines")
        on_text(f"{label} is thinking")
        self.shown.append([panel.value for panel in self.app.panels])  # what the app showed meanwhile
        return Answer(label, "", f"{label} says hi", 3, 1.0)


def test_the_app_streams_into_one_panel_per_model():
    models = FakeModels()
    app = models.app = demo.build_app(models, ["base", "sft"], ["What is anaemia?"], max_new_tokens=64)
    app.ask(None)
    assert models.calls == [] and "Type a question first" in app.status.value
    app.example.value = "What is anaemia?"  # picking an example fills the question box
    app.temperature.value = 0.5
    app.ask(None)
    assert models.calls == [("What is anaemia?", "base", 64, 0.5), ("What is anaemia?", "sft", 64, 0.5)]
    assert "base is thinking" in models.shown[0][0] and "generating" in models.shown[0][0]
    assert "base says hi" in models.shown[1][0] and "sft is thinking" in models.shown[1][1]
    assert "base says hi" in app.panels[0].value and "sft says hi" in app.panels[1].value
    assert not app.button.disabled and "Type a question" not in app.status.value


def test_one_failing_model_shows_a_sentence_and_the_app_stays_usable():
    models = FakeModels(fail="base")
    note = demo.missing_note(["base", "sft"], ["base", "sft", "grpo"])
    app = models.app = demo.build_app(models, ["base", "sft"], [], note=note)
    assert "06_grpo.ipynb" in app.status.value
    app.question.value = "Chest pain?"
    app.ask(None)
    sentence = "Could not generate: CUDA out of memory. Tried to allocate 2 GiB (RuntimeError)."
    assert sentence in app.panels[0].value
    assert "Traceback" not in app.panels[0].value and "sft says hi" in app.panels[1].value
    assert not app.button.disabled


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def test_uploads_too_large_or_not_images_are_refused_with_a_reason():
    good = _png((np.random.rand(600, 400) * 60000).astype(np.uint16))  # a 16-bit radiograph
    image = demo.read_upload({"name": "x.png", "size": len(good), "content": memoryview(good)}, 256 * 256)
    assert image.mode == "RGB" and image.width * image.height <= 256 * 256
    with pytest.raises(UnusableImage, match="the file is 12.0 MB; the limit is 10 MB"):
        demo.read_upload({"name": "big.png", "size": 12_000_000, "content": b""}, 256 * 256)
    with pytest.raises(UnusableImage):
        demo.read_upload({"name": "notes.txt", "size": 5, "content": b"hello"}, 256 * 256)


def test_the_image_tab_describes_a_sample_or_an_upload_and_refuses_bad_files(tmp_path):
    sample = tmp_path / "chest.png"
    sample.write_bytes(_png(np.full((64, 64, 3), 128, dtype=np.uint8)))
    seen = []

    def describe(image, instruction, label, max_new_tokens):
        if label == "vl-sft":
            raise ValueError("adapter and model do not match")
        seen.append((image.size, instruction, label, max_new_tokens))
        return f"{label}: a grey square"

    app = demo.build_vl_app(describe, ["vl-base", "vl-sft"], {"chest": sample}, instruction="Describe.",
                            max_pixels=256 * 256, max_new_tokens=32)
    app.describe(None)
    assert seen == [] and "Pick a sample or upload an image first" in app.status.value
    app.sample.value = "chest"
    assert bytes(app.preview.value).startswith(b"\x89PNG")
    app.describe(None)
    assert seen == [((64, 64), "Describe.", "vl-base", 32)] and "a grey square" in app.panels[0].value
    assert "Could not generate: adapter and model do not match (ValueError)." in app.panels[1].value
    app.upload({"new": ({"name": "notes.txt", "size": 5, "content": memoryview(b"hello")},)})
    assert "notes.txt cannot be used" in app.status.value and bytes(app.preview.value) == b""
    app.describe(None)
    assert len(seen) == 1  # nothing was described without an image


def test_the_vl_base_answers_with_the_adapter_off_and_the_sft_with_it_on(tmp_path):
    folder = vision.make_tiny_vl_model()
    model, processor = vision.load_vl_model(str(folder), backend="transformers")
    image = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    [plain] = vision.generate_captions(model, processor, [image], "Describe.", max_new_tokens=8)
    trained = vision.add_vl_lora(model, r=4, alpha=8, gradient_checkpointing=False)
    with torch.no_grad():
        for name, parameter in trained.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    adapter = save_adapter(trained, processor, tmp_path / "vl-adapter")
    model, processor = vision.load_vl_model(str(folder), backend="transformers")
    model = demo.attach_adapters(model, {"vl-sft": adapter})
    assert demo.describe_image(model, processor, image, "Describe.", "vl-base", max_new_tokens=8) == plain
    assert demo.describe_image(model, processor, image, "Describe.", "vl-sft", max_new_tokens=8) != plain
