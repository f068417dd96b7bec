"""The Gradio app of 07 (helpers.gradio_app), driven through its own API with gradio_client, on fakes."""

import importlib.util

import numpy as np
import pytest
from PIL import Image

from helpers import gradio_app
from helpers.demo import Answer


def test_without_gradio_the_cell_gets_one_line_saying_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gradio" else real(name, *a))
    assert gradio_app.missing() == ("Gradio is not installed (it is optional): pip install gradio, "
                                    "then run this cell again.")


def test_streamed_yields_each_text_then_the_result_and_raises_the_error():
    assert list(gradio_app.streamed(lambda on_text: (on_text("a"), on_text("ab"), "done")[-1])) == ["a", "ab",
                                                                                                    "done"]

    def failing(on_text):
        on_text("half")
        raise RuntimeError("mid-stream")

    stream = gradio_app.streamed(failing)
    assert next(stream) == "half"
    with pytest.raises(RuntimeError, match="mid-stream"):
        next(stream)


def _turn(history, message, label, max_new_tokens, on_text):
    if message == "boom":
        raise RuntimeError("the model failed mid-stream")
    on_text("…")
    messages = [*history, {"role": "user", "content": message}]
    reply = Answer(label, "", f"{label} heard {len(messages)} messages", 3, 1.0, ["advises urgent care"])
    return [*messages, {"role": "assistant", "content": reply.answer}], reply


def _findings(image, vl_label, tokens):
    return f"{vl_label}: {image.width}x{image.height}, no fracture"


def _advise(text, label, tokens, on_text):
    on_text("Rest")
    return Answer(label, "", f"Rest the knee ({text}).", 5, 1.0)


def _text(message: dict) -> str:
    """A chat message's text: Gradio hands content back as a list of parts."""
    content = message["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


@pytest.fixture
def client(tmp_path):
    import gradio_client  # the `app` extra, which `make setup` installs

    app = gradio_app.build(_turn, ["base", "sft"], findings_fn=_findings, advise_fn=_advise,
                           vl_labels=["vl-base", "vl-sft", "vl-grpo"], max_pixels=128 * 128,
                           max_new_tokens=16)
    url = gradio_app.launch(app)
    try:
        yield gradio_client.Client(url, verbose=False)
    finally:
        app.close()


def test_the_chat_keeps_its_history_per_session_and_a_failure_is_one_sentence(client):
    shown, _, status = client.predict("My knee hurts.", "sft", [], api_name="/chat")
    assert _text(shown[-1]).startswith("sft heard 1 messages") and "advises urgent care" in _text(shown[-1])
    shown, _, _ = client.predict("Since yesterday.", "base", shown, api_name="/chat")
    assert _text(shown[-1]).startswith("base heard 3 messages")  # the first turn was sent again
    shown, kept, status = client.predict("boom", "base", shown, api_name="/chat")
    assert "Could not generate: the model failed mid-stream (RuntimeError)." in _text(shown[-1])
    assert kept == "boom" and "as it was before" in status


def test_the_report_assistant_takes_an_image_and_refuses_what_is_not_one(client, tmp_path):
    from gradio_client import handle_file

    picture = tmp_path / "knee.png"
    Image.fromarray(np.full((300, 200, 3), 80, dtype=np.uint8)).save(picture)
    found, advice, seen = client.predict(handle_file(str(picture)), "vl-sft", "sft", api_name="/report")
    assert found.startswith("vl-sft: ") and "no fracture" in found
    assert Image.open(seen).width * Image.open(seen).height <= 128 * 128  # shrunk within the pixel budget
    assert advice.startswith("Rest the knee (vl-sft:") and "nothing flagged" in advice
    found, _, _ = client.predict(handle_file(str(picture)), "vl-grpo", "sft", api_name="/report")
    assert found.startswith("vl-grpo: ")  # 06's VL GRPO model is one of the choices
    notes = tmp_path / "notes.png"
    notes.write_bytes(b"this is not an image")
    found, advice, seen = client.predict(handle_file(str(notes)), "vl-sft", "sft", api_name="/report")
    assert found == "This file cannot be used: unreadable." and advice == "" and seen is None
