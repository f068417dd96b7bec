"""The apps of 07 (helpers.apps): panels, the compare, image, chat and report-assistant tabs, with fakes."""

import io

import numpy as np
import pytest
from PIL import Image

from helpers import apps, demo
from helpers.demo import Answer
from helpers.images import UnusableImage


def test_a_panel_escapes_model_text_and_folds_the_reasoning():
    answer = Answer("sft", "Chest pain <b>and</b> sweating.", "<script>alert(1)</script> Call 120.", 20, 2.0,
                    ["advises urgent care"])
    panel = apps.answer_html(answer)
    assert "<script>" not in panel and "&lt;script&gt;" in panel
    assert "<details>" in panel and "&lt;b&gt;and&lt;/b&gt;" in panel
    assert "After SFT (03)" in panel and "20 tokens in 2.0 s · 10.0 tokens/s" in panel
    assert "advises urgent care" in panel
    empty = apps.answer_html(Answer("base", "", "", 0, 0.0))
    assert "<details>" not in empty and "(no answer)" in empty
    thought = apps.answer_html(Answer("grpo", "Chest pain and sweating: think of", "", 160, 8.0))
    assert "(no answer after its reasoning)" in thought  # all reasoning: no claim about why it stopped


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
    app = models.app = apps.build_app(models, ["base", "sft"], ["What is anaemia?"], max_new_tokens=64)
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
    app = models.app = apps.build_app(models, ["base", "sft"], [], note=note)
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
    image = apps.read_upload({"name": "x.png", "size": len(good), "content": memoryview(good)}, 256 * 256)
    assert image.mode == "RGB" and image.width * image.height <= 256 * 256
    with pytest.raises(UnusableImage, match="the file is 12.0 MB; the limit is 10 MB"):
        apps.read_upload({"name": "big.png", "size": 12_000_000, "content": b""}, 256 * 256)
    with pytest.raises(UnusableImage):
        apps.read_upload({"name": "notes.txt", "size": 5, "content": b"hello"}, 256 * 256)


def test_the_image_tab_describes_a_sample_or_an_upload_and_refuses_bad_files(tmp_path):
    sample = tmp_path / "chest.png"
    sample.write_bytes(_png(np.full((64, 64, 3), 128, dtype=np.uint8)))
    seen = []

    def describe(image, instruction, label, max_new_tokens):
        if label == "vl-sft":
            raise ValueError("adapter and model do not match")
        seen.append((image.size, instruction, label, max_new_tokens))
        return f"{label}: a grey square"

    app = apps.build_vl_app(describe, ["vl-base", "vl-sft"], {"chest": sample}, instruction="Describe.",
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




class FakeChat:
    """Stands in for chat_turn: records the history each turn is given, streams, then replies."""

    def __init__(self, fail_on: str = ""):
        self.fail_on, self.seen = fail_on, []

    def __call__(self, history, message, label, max_new_tokens, on_text):
        self.seen.append((list(history), message, label))
        if message == self.fail_on:
            raise RuntimeError("the server went away mid-stream")
        on_text("partial")
        messages = [*history, {"role": "user", "content": message}]
        reply = Answer(label, "", f"{label} replies to {message}", 4, 1.0, prompt_tokens=10 * len(messages))
        return [*messages, {"role": "assistant", "content": reply.answer}], reply


def test_the_chat_sends_the_history_back_each_turn_and_a_failed_turn_is_not_kept():
    chat = FakeChat(fail_on="boom")
    app = apps.build_chat_app(chat, ["base", "sft"], max_new_tokens=32)
    assert app.model.value == "sft"  # the most trained model is picked first
    app.send(None)
    assert chat.seen == [] and "Write a message first" in app.status.value
    app.message.value = "I have a headache."
    app.send(None)
    app.model.value = "base"  # models may change between turns: the history stays
    app.message.value = "Can I take ibuprofen?"
    app.send(None)
    assert chat.seen[1][0] == [{"role": "user", "content": "I have a headache."},
                               {"role": "assistant", "content": "sft replies to I have a headache."}]
    assert "2 turns" in app.status.value and "re-read 30 tokens" in app.status.value
    assert app.conversation.value.count("course-bubble") == 4 and "After SFT (03)" in app.conversation.value
    app.message.value = "boom"
    app.send(None)
    assert "Could not generate: the server went away mid-stream (RuntimeError)." in app.conversation.value
    assert len(app.state["history"]) == 4 and app.message.value == "boom"  # nothing half-kept, text kept
    app.clear(None)
    assert app.state["history"] == [] and "course-bubble" not in app.conversation.value


def test_the_report_assistant_hands_the_findings_to_the_advice_and_reports_each_failure(tmp_path):
    sample = tmp_path / "knee.png"
    sample.write_bytes(_png(np.full((64, 64, 3), 90, dtype=np.uint8)))
    calls, fail = [], {}

    def findings(image, vl_label, tokens):
        calls.append(("findings", image.size, vl_label, tokens))
        if fail.get("findings"):
            raise ValueError("no image tokens")
        return "Joint effusion; no fracture."

    def advise(text, label, tokens, on_text):
        calls.append(("advise", text, label, tokens))
        if fail.get("advise"):
            raise RuntimeError("out of memory")
        on_text("Your knee")
        return Answer(label, "", "See a doctor this week.", 6, 1.0, ["advises urgent care"])

    app = apps.build_report_app(findings, advise, ["vl-base", "vl-sft"], ["base", "sft"], {"knee": sample},
                                max_pixels=256 * 256, max_new_tokens=40, findings_tokens=20)
    app.report(None)
    assert calls == [] and "Pick a sample or upload an image first" in app.status.value
    app.sample.value = "knee"
    app.report(None)
    assert calls == [("findings", (64, 64), "vl-sft", 20),
                     ("advise", "Joint effusion; no fracture.", "sft", 40)]
    assert "Joint effusion" in app.findings.value and "See a doctor this week." in app.advice.value
    assert "advises urgent care" in app.advice.value
    fail["findings"] = True
    app.report(None)
    assert "no image tokens (ValueError)" in app.findings.value
    assert "No advice without findings" in app.advice.value
    fail.update(findings=False, advise=True)
    app.report(None)
    assert "Joint effusion" in app.findings.value and "out of memory (RuntimeError)" in app.advice.value
    app.upload({"new": ({"name": "scan.dcm.txt", "size": 20_000_000, "content": memoryview(b"")},)})
    assert "scan.dcm.txt cannot be used: the file is 20.0 MB" in app.status.value
    calls.clear()
    app.report(None)
    assert calls == []  # the refused upload replaced the picture: nothing unusable reaches a model


def test_the_demo_puts_the_apps_in_tabs_and_leaves_out_a_missing_one():
    import ipywidgets as w

    one, two = w.HTML("a"), w.HTML("b")
    assert apps.build_demo({"Compare": one, "Images": None}) is one
    tabs = apps.build_demo({"Compare": one, "Chat": two, "Images": None})
    assert list(tabs.children) == [one, two] and tabs.get_title(1) == "Chat"
