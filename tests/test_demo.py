"""The side-by-side demo of 07: adapters found and switched, the safety screen, the app's panels."""

from pathlib import Path

import pytest
import torch

from helpers import demo
from helpers.demo import Answer
from helpers.generation import generate_replies
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
    assert "After SFT (03)" in panel and "10.0 tokens/s" in panel and "advises urgent care" in panel
    empty = demo.answer_html(Answer("base", "", "", 0, 0.0))
    assert "<details>" not in empty and "(no answer)" in empty


def test_the_app_fills_one_panel_per_model_when_asked():
    asked = []

    def fake_ask(question: str, max_new_tokens: int) -> list[Answer]:
        asked.append((question, max_new_tokens))
        return [Answer(label, "", f"{label} says hi", 3, 1.0) for label in ("base", "sft")]

    app = demo.build_app(fake_ask, ["base", "sft"], ["What is anaemia?"], max_new_tokens=64)
    app.ask(None)
    assert asked == [] and "Type a question first" in app.panels[0].value
    app.question.value = "Is a fever of 38 °C dangerous?"
    app.ask(None)
    assert asked == [("Is a fever of 38 °C dangerous?", 64)]
    assert "base says hi" in app.panels[0].value and "sft says hi" in app.panels[1].value
