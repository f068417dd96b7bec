"""The side-by-side demo of 07: adapters found and switched, the safety screen, the app's panels."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import demo, vision
from helpers.generation import chat_prompt, generate_replies
from helpers.models import add_lora, load_text_model, save_adapter


def _random_adapter(path: Path, seed: int) -> Path:
    """A LoRA adapter for the embedded model whose B matrices are noise, so it changes the answers."""
    model, tokenizer, _ = load_text_model("embedded")
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
    model, tokenizer, _ = load_text_model("embedded")
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
    model, tokenizer, _ = load_text_model("embedded")
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


def test_answers_stream_as_they_are_written_and_end_with_the_whole_reply():
    model, tokenizer, _ = load_text_model("embedded")
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


def test_the_vl_base_answers_with_the_adapter_off_and_the_sft_with_it_on(tmp_path):
    folder = vision.make_tiny_vl_model()
    model, processor, _ = vision.load_vl_model(str(folder), backend="transformers")
    image = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    [plain] = vision.generate_captions(model, processor, [image], "Describe.", max_new_tokens=8)
    trained = vision.add_vl_lora(model, r=4, alpha=8, gradient_checkpointing=False)
    with torch.no_grad():
        for name, parameter in trained.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    adapter = save_adapter(trained, processor, tmp_path / "vl-adapter")
    model, processor, _ = vision.load_vl_model(str(folder), backend="transformers")
    model = demo.attach_adapters(model, {"vl-sft": adapter})
    assert demo.describe_image(model, processor, image, "Describe.", "vl-base", max_new_tokens=8) == plain
    assert demo.describe_image(model, processor, image, "Describe.", "vl-sft", max_new_tokens=8) != plain


def test_a_chat_turn_sends_the_whole_conversation_and_costs_more_each_turn():
    model, tokenizer, _ = load_text_model("embedded")
    opening = "I have had a headache for three days."
    first = demo.answer_one(model, tokenizer, opening, "base", max_new_tokens=8)
    history = [{"role": "user", "content": opening},
               {"role": "assistant", "content": first.answer},
               {"role": "user", "content": "Can I take ibuprofen?"}]
    second = demo.answer_one(model, tokenizer, history, "base", max_new_tokens=8)
    alone = demo.answer_one(model, tokenizer, "Can I take ibuprofen?", "base", max_new_tokens=8)
    assert second.prompt_tokens > first.prompt_tokens + alone.prompt_tokens // 2  # the first turn is re-read
    prompt = chat_prompt(tokenizer, history)
    assert prompt.index("three days") < prompt.index(first.answer[:20]) < prompt.index("ibuprofen")


def test_print_stream_prints_only_what_is_new(capsys):
    show = demo.print_stream()
    for so_far in ["The", "The knee", "The knee is swollen."]:
        show(so_far)
    assert capsys.readouterr().out == "The knee is swollen."


def test_an_answer_interrupted_while_streaming_stops_and_leaves_the_model_usable():
    model, tokenizer, _ = load_text_model("embedded")
    question = "Explain step by step how a fever develops, and what to do about it."
    whole = demo.answer_one(model, tokenizer, question, "base", max_new_tokens=60)
    written, generate = [], model.generate

    def counted(**kwargs):
        out = generate(**kwargs)
        written.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    def interrupt(so_far: str) -> None:
        raise KeyboardInterrupt  # as Jupyter's stop button does, in the thread that shows the text

    model.generate = counted
    with pytest.raises(KeyboardInterrupt):
        demo.answer_one(model, tokenizer, question, "base", max_new_tokens=60, on_text=interrupt)
    assert written[0] < 20 < whole.new_tokens  # generation stopped soon after the interruption
    again = demo.answer_one(model, tokenizer, question, "base", max_new_tokens=60)
    assert again.answer == whole.answer  # and nothing was left running in the background
