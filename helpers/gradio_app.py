"""The shareable app of 07, in Gradio: a chat with a model selector and the report assistant.

It is an optional extra (``pip install gradio``; Colab has it). It calls the functions the notebook
defines, the same ones the ipywidgets apps of ``helpers.apps`` call: nothing here answers, it only
wires boxes to those functions and streams what they write. A failed step shows one sentence and the
app stays usable.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import threading
from collections.abc import Callable, Iterator

from helpers.apps import MAX_UPLOAD_MB, error_sentence, refuse_large
from helpers.demo import TITLES, Answer, choices
from helpers.generation import DISCLAIMER
from helpers.images import UnusableImage, prepare_image

SHARE_WARNING = ("A share link is public: anyone who has it can use this app, and your GPU, while it runs. "
                 "Put no patient data in it.")


def missing() -> str:
    """One line saying how to get Gradio when it is not installed, else ''."""
    if importlib.util.find_spec("gradio") is None:
        return "Gradio is not installed (it is optional): pip install gradio, then run this cell again."
    return ""


def streamed(work: Callable[[Callable[[str], None]], object]) -> Iterator[str | object]:
    """Run ``work(on_text)`` in a thread and yield each text it reports, then its result (or raise its error).

    A model writes through a callback; a Gradio handler streams by yielding: this joins the two.
    """
    texts: queue.Queue = queue.Queue()
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = work(texts.put)
        except Exception as error:  # raised again in the caller's thread below
            outcome["error"] = error
        finally:
            texts.put(None)

    threading.Thread(target=run, daemon=True).start()
    while (text := texts.get()) is not None:
        yield text
    if "error" in outcome:
        raise outcome["error"]
    yield outcome["result"]


def shown_answer(answer: Answer) -> str:
    """A model's reply as the chat shows it: the answer, then the screen's flags."""
    flags = ", ".join(answer.flags) or "nothing flagged"
    return f"{answer.shown}\n\n*screen: {flags}*"


def _chat_tab(gr, turn_fn, labels: list[str], max_new_tokens: int) -> None:
    model = gr.Dropdown(choices=choices(labels), value=labels[-1], label="Model")
    chatbot = gr.Chatbot(label="Conversation", elem_id="course-chat")
    history = gr.State([])  # what the model reads each turn; the chatbot also shows the screen
    message = gr.Textbox(label="Message", placeholder="Write a message…")
    status = gr.Markdown()
    with gr.Row():
        send, clear = gr.Button("Send", variant="primary"), gr.Button("New chat")

    def respond(text: str, label: str, past: list, shown: list):
        if not text.strip():
            yield shown, past, text, "**Write a message first.**"
            return
        shown = [*shown, {"role": "user", "content": text}, {"role": "assistant", "content": "…"}]
        try:
            def turn(on_text, before=past):
                return turn_fn(before, text, label, max_new_tokens, on_text)

            for item in streamed(turn):
                if isinstance(item, str):
                    shown[-1] = {"role": "assistant", "content": item}
                    yield shown, past, "", ""
                else:
                    past, answer = item
                    shown[-1] = {"role": "assistant", "content": shown_answer(answer)}
                    yield shown, past, "", f"*{TITLES.get(label, label)} answered.*"
        except Exception as error:  # the failed turn is not kept in what the model reads next
            shown[-1] = {"role": "assistant", "content": error_sentence(error)}
            yield shown, past, text, "*The conversation is as it was before this message.*"

    outputs = [chatbot, history, message, status]
    send.click(respond, [message, model, history, chatbot], outputs, api_name="chat")
    message.submit(respond, [message, model, history, chatbot], outputs)
    clear.click(lambda: ([], [], "", "*A new conversation.*"), None, outputs, api_name="new_chat")


def _report_tab(gr, findings_fn, advise_fn, vl_labels: list[str], labels: list[str], *, max_pixels: int,
                max_new_tokens: int, findings_tokens: int, max_mb: float) -> None:
    with gr.Row():
        # A file box, not gr.Image: what is not an image then gets our sentence, not Gradio's error.
        upload = gr.File(label=f"An image (PNG or JPEG, up to {max_mb:g} MB)", file_types=["image"],
                         type="filepath")
        preview = gr.Image(label="What the model sees", interactive=False, height=256)
        with gr.Column():
            vl_model = gr.Dropdown(choices=choices(vl_labels), value=vl_labels[-1], label="Findings by")
            text_model = gr.Dropdown(choices=choices(labels), value=labels[-1], label="Advice by")
            button = gr.Button("Write report", variant="primary")
    findings_box = gr.Textbox(label="Findings (vision-language model)", lines=4)
    advice_box = gr.Textbox(label="Explanation and advice (text model)", lines=8)

    def report(path: str | None, vl_label: str, label: str):
        if not path:
            yield "Upload an image first.", "", None
            return
        try:
            refuse_large(os.path.getsize(path), max_mb)
            picture = prepare_image(path, max_pixels)
        except (UnusableImage, OSError) as error:
            yield f"This file cannot be used: {error}.", "", None
            return
        yield "writing…", "", picture
        try:
            findings = findings_fn(picture, vl_label, findings_tokens)
        except Exception as error:
            yield error_sentence(error), "No advice without findings.", picture
            return
        try:
            for item in streamed(lambda on_text: advise_fn(findings, label, max_new_tokens, on_text)):
                yield findings, item if isinstance(item, str) else shown_answer(item), picture
        except Exception as error:
            yield findings, error_sentence(error), picture

    button.click(report, [upload, vl_model, text_model], [findings_box, advice_box, preview],
                 api_name="report")


def build(turn_fn, labels: list[str], *, findings_fn=None, advise_fn=None, vl_labels: list[str] | None = None,
          max_pixels: int = 256 * 256, max_new_tokens: int = 256, findings_tokens: int = 96,
          max_mb: float = MAX_UPLOAD_MB):
    """The Gradio app: a chat tab over ``turn_fn``, and the report assistant when there is a VL model.

    The functions are those of ``helpers.apps.build_chat_app`` and ``build_report_app``.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a class machine
    import gradio as gr

    with gr.Blocks(title="Medical LLM course: demo") as app:
        gr.Markdown(f"### Medical LLM course: chat and report assistant\n⚠️ {DISCLAIMER}")
        with gr.Tab("Chat"):
            _chat_tab(gr, turn_fn, labels, max_new_tokens)
        if vl_labels and findings_fn and advise_fn:
            with gr.Tab("Report assistant"):
                _report_tab(gr, findings_fn, advise_fn, vl_labels, labels, max_pixels=max_pixels,
                            max_new_tokens=max_new_tokens, findings_tokens=findings_tokens, max_mb=max_mb)
    return app


def launch(app, *, share: bool = False, host: str = "127.0.0.1", port: int | None = None) -> str:
    """Start the app without blocking the notebook and return its address (the public one with ``share``)."""
    # The app must be reachable from this machine without the internet's proxy in the way.
    os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"]))
    _, local_url, share_url = app.launch(share=share, server_name=host, server_port=port,
                                         prevent_thread_lock=True, quiet=True,
                                         max_file_size=f"{MAX_UPLOAD_MB}mb")
    return share_url or local_url
