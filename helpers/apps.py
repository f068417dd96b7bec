"""The apps of 07, in ipywidgets: compare the models, chat, describe an image, the report assistant.

Each app is wiring only: it calls functions the notebook defines (answer a question, take a chat turn,
describe an image, write findings, advise), so the logic a learner reads and edits lives in the
notebook, and the Gradio app of ``helpers.gradio_app`` calls the same functions. Whatever goes wrong
in one answer shows as one sentence in its panel; the app stays usable.
"""

from __future__ import annotations

import html
from pathlib import Path

from helpers.demo import TITLES, Answer, choices
from helpers.generation import DISCLAIMER
from helpers.images import UnusableImage, open_image, prepare_image

MAX_UPLOAD_MB = 10  # larger uploads are refused before they are opened


def read_upload(upload, max_pixels: int, max_mb: float = MAX_UPLOAD_MB):
    """The image in one FileUpload entry, ready for the model; ``UnusableImage`` says why not."""
    refuse_large(upload.get("size") or len(upload["content"]), max_mb)
    return prepare_image(bytes(upload["content"]), max_pixels)


def refuse_large(size: int, max_mb: float = MAX_UPLOAD_MB) -> None:
    """``UnusableImage`` for a file over ``max_mb``, before anything tries to open it."""
    if size > max_mb * 1e6:
        raise UnusableImage(f"the file is {size / 1e6:.1f} MB; the limit is {max_mb:g} MB")


# --- the app ----------------------------------------------------------------------------------

_TEXT = "white-space:pre-wrap"
_BADGE = "display:inline-block;margin:4px 4px 0 0;padding:1px 6px;border-radius:8px;color:white;font-size:85%"
_PANEL = "<div style='border:1px solid #ddd;border-radius:6px;padding:8px;line-height:1.45'>{}</div>"


def panel_html(label: str, body: str = "") -> str:
    """One model's column: its title over ``body`` (HTML, already escaped)."""
    title = f"<h4 style='margin:0 0 4px'>{html.escape(TITLES.get(label, label))}</h4>"
    return _PANEL.format(title + body)


def answer_html(answer: Answer) -> str:
    """One model's panel: title, speed, the reasoning folded away, the answer, the safety flags."""
    speed = (f"first token after {answer.latency:.1f} s · {answer.new_tokens} tokens in "
             f"{answer.seconds:.1f} s · {answer.tokens_per_second:.1f} tokens/s")
    parts = [f"<div style='color:#666;font-size:85%'>{speed}</div>"]
    if answer.think:
        reasoning = html.escape(answer.think)
        parts.append("<details><summary>reasoning (think block)</summary>"
                     f"<div style='{_TEXT};color:#444'>{reasoning}</div></details>")
    reply = html.escape(answer.shown)
    parts.append(f"<div style='{_TEXT};margin-top:6px'>{reply}</div>")
    for flag in answer.flags:
        colour = "#b00020" if flag.startswith("risky") else "#0b6e4f"
        parts.append(f"<span style='{_BADGE};background:{colour}'>{html.escape(flag)}</span>")
    return panel_html(answer.model, "".join(parts))


def partial_html(label: str, text: str) -> str:
    """A panel while its model is still writing: the text so far, reasoning included."""
    return panel_html(label, "<div style='color:#666;font-size:85%'>generating…</div>"
                             f"<div style='{_TEXT};margin-top:6px'>{html.escape(text)}</div>")


def message_html(label: str, text: str) -> str:
    """A panel holding one sentence instead of an answer (an error, or what to do first)."""
    return panel_html(label, f"<div style='color:#b00020'>{html.escape(text)}</div>")


def error_sentence(error: Exception) -> str:
    """A failure as one readable line, e.g. 'Could not generate: out of memory (OutOfMemoryError).'"""
    detail = str(error).strip().splitlines()[0] if str(error).strip() else "no details"
    return f"Could not generate: {detail[:200]} ({type(error).__name__})."


def _disclaimer():
    import ipywidgets as w

    return w.HTML(f"<p style='color:#8a6d3b'>⚠️ {html.escape(DISCLAIMER)}</p>")


def build_app(answer_fn, labels: list[str], examples: list[str], max_new_tokens: int = 256, note: str = ""):
    """The text tab: pick or type a question, press the button, read every model side by side.

    ``answer_fn(question, label, max_new_tokens, temperature, on_text)`` returns that model's
    ``Answer``, calling ``on_text`` with the text so far while it writes. ``note`` names what is
    missing (see ``missing_note``).
    """
    import ipywidgets as w

    layout = w.Layout(width="100%")
    example = w.Dropdown(options=[("(type your own question)", "")] + [(e[:90], e) for e in examples],
                         description="Example:", layout=layout)
    question = w.Textarea(placeholder="Ask a medical question…", rows=3, layout=layout)
    length = w.IntSlider(value=max_new_tokens, min=32, max=max(1024, max_new_tokens), step=32,
                         description="max tokens")
    temperature = w.FloatSlider(value=0.0, min=0.0, max=1.5, step=0.1, description="temperature",
                                tooltip="0 is greedy: the same question always gets the same answer",
                                style={"description_width": "initial"})
    button = w.Button(description="Compare", button_style="primary", icon="play")
    width = f"{100 / len(labels):.1f}%"
    panels = [w.HTML(panel_html(label), layout=w.Layout(width=width)) for label in labels]
    status = w.HTML(f"<i>{html.escape(note)}</i>" if note else "")

    def on_example(change) -> None:
        if change["new"]:
            question.value = change["new"]

    def on_ask(_) -> None:
        text = question.value.strip()
        if not text:
            status.value = "<b>Type a question first, or pick an example.</b>"
            return
        status.value = f"<i>{html.escape(note)}</i>" if note else ""
        button.disabled = True
        try:
            for panel, label in zip(panels, labels, strict=True):
                panel.value = partial_html(label, "")

                def show(so_far: str, panel=panel, label=label) -> None:
                    panel.value = partial_html(label, so_far)

                try:
                    answer = answer_fn(text, label, length.value, temperature.value, show)
                    panel.value = answer_html(answer)
                except Exception as error:  # one model failing leaves the others and the app usable
                    panel.value = message_html(label, error_sentence(error))
        finally:
            button.disabled = False

    example.observe(on_example, names="value")
    button.on_click(on_ask)
    controls = w.HBox([length, temperature, button])
    app = w.VBox([example, question, controls, status, w.HBox(panels), _disclaimer()])
    app.add_class("course-text-app")  # a handle for the browser test and for custom styles
    app.ask, app.question, app.panels, app.status = on_ask, question, panels, status  # for tests and scripts
    app.temperature, app.example, app.button = temperature, example, button
    return app


class ImagePicker:
    """A sample dropdown, an upload button and a preview; ``image`` is the picture ready for a model.

    A file that is too large or is not an image is refused with one sentence in ``status``, and the
    previous picture is dropped, so nothing unusable reaches a model.
    """

    def __init__(self, samples: dict[str, Path], max_pixels: int, status, note: str = "",
                 max_mb: float = MAX_UPLOAD_MB):
        import ipywidgets as w

        self.samples, self.max_pixels, self.max_mb = samples, max_pixels, max_mb
        self.status, self.note = status, note
        self.image = None
        self.sample = w.Dropdown(options=[("(upload your own image)", "")] + [(n, n) for n in samples],
                                 description="Sample:")
        self.upload = w.FileUpload(accept="image/*", multiple=False, description="Upload image")
        self.preview = w.Image(format="png", layout=w.Layout(max_width="256px", max_height="256px"))
        self.sample.observe(self.on_sample, names="value")
        self.upload.observe(self.on_upload, names="value")

    def show(self, image) -> None:
        import io

        self.image = image
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        self.preview.value = buffer.getvalue()
        self.status.value = f"<i>{html.escape(self.note)}</i>" if self.note else ""

    def on_sample(self, change) -> None:
        if change["new"]:
            self.show(prepare_image(open_image(self.samples[change["new"]]), self.max_pixels))

    def on_upload(self, change) -> None:
        if not change["new"]:
            return
        entry = change["new"][0]
        try:
            self.show(read_upload(entry, self.max_pixels, self.max_mb))
        except UnusableImage as error:
            self.image, self.preview.value = None, b""
            name = entry.get("name", "the upload")
            self.status.value = f"<b>{html.escape(f'{name} cannot be used: {error}.')}</b>"


def _status(note: str):
    import ipywidgets as w

    return w.HTML(f"<i>{html.escape(note)}</i>" if note else "")


def build_vl_app(describe_fn, labels: list[str], samples: dict[str, Path], *, instruction: str,
                 max_pixels: int, max_new_tokens: int = 64, note: str = "", max_mb: float = MAX_UPLOAD_MB):
    """The image tab: upload an image or pick a sample, press the button, read each model's report.

    ``describe_fn(image, instruction, label, max_new_tokens)`` returns that model's report.
    """
    import ipywidgets as w

    status = _status(note)
    picker = ImagePicker(samples, max_pixels, status, note, max_mb)
    question = w.Textarea(value=instruction, rows=2, layout=w.Layout(width="100%"))
    button = w.Button(description="Describe", button_style="primary", icon="play")
    width = f"{100 / len(labels):.1f}%"
    panels = [w.HTML(panel_html(label), layout=w.Layout(width=width)) for label in labels]

    def on_describe(_) -> None:
        if picker.image is None:
            status.value = "<b>Pick a sample or upload an image first.</b>"
            return
        button.disabled = True
        try:
            for panel, label in zip(panels, labels, strict=True):
                panel.value = partial_html(label, "")
                try:
                    report = describe_fn(picker.image, question.value.strip() or instruction, label,
                                         max_new_tokens)
                    panel.value = panel_html(label, report_html(report))
                except Exception as error:
                    panel.value = message_html(label, error_sentence(error))
        finally:
            button.disabled = False

    button.on_click(on_describe)
    app = w.VBox([w.HBox([picker.sample, picker.upload]), question, button, status,
                  w.HBox([picker.preview, *panels]), _disclaimer()])
    app.add_class("course-vl-app")
    app.describe, app.panels, app.status = on_describe, panels, status  # for tests and scripts
    app.sample, app.preview = picker.sample, picker.preview
    app.upload = picker.on_upload  # lets a test hand over an upload as FileUpload would
    return app


def report_html(report: str) -> str:
    """An image report in a panel (the class is a handle for the browser test)."""
    body = html.escape(report) or "<i>(empty report)</i>"
    return f"<div class='course-report' style='{_TEXT}'>{body}</div>"


def _labelled_dropdown(labels: list[str], description: str):
    import ipywidgets as w

    return w.Dropdown(options=choices(labels), value=labels[-1],
                      description=description, style={"description_width": "initial"})


def bubble_html(role: str, text: str, label: str = "") -> str:
    """One chat message: the user's on the right, a model's on the left under its name."""
    side = "margin-left:20%;background:#eef4ff" if role == "user" else "margin-right:20%;background:#f6f6f6"
    who = "You" if role == "user" else TITLES.get(label, label)
    return (f"<div class='course-bubble' style='{side};border-radius:8px;padding:6px 10px;margin:6px 0'>"
            f"<b style='font-size:85%'>{html.escape(who)}</b><div style='{_TEXT}'>{text}</div></div>")


def answer_bubble(answer: Answer) -> str:
    """A model's chat message: its answer, the reasoning folded away, the screen's flags."""
    parts = []
    if answer.think:
        parts.append("<details><summary>reasoning</summary>"
                     f"<div style='color:#444'>{html.escape(answer.think)}</div></details>")
    parts.append(html.escape(answer.shown))
    parts += [f"<span style='{_BADGE};background:{'#b00020' if f.startswith('risky') else '#0b6e4f'}'>"
              f"{html.escape(f)}</span>" for f in answer.flags]
    return bubble_html("assistant", "".join(parts), answer.model)


def build_chat_app(turn_fn, labels: list[str], *, max_new_tokens: int = 256, note: str = ""):
    """The chat tab: a conversation with one model at a time, which may change between turns.

    ``turn_fn(history, message, label, max_new_tokens, on_text)`` returns ``(history, answer)``: the
    conversation with the new user message and the model's reply appended, and that reply's
    ``Answer``. A turn that fails leaves the conversation as it was before it.
    """
    import ipywidgets as w

    model = _labelled_dropdown(labels, "Model:")
    message = w.Textarea(placeholder="Write a message…", rows=2, layout=w.Layout(width="100%"))
    send = w.Button(description="Send", button_style="primary", icon="paper-plane")
    clear = w.Button(description="New chat", icon="eraser")
    log = w.HTML()
    status = _status(note)
    state: dict = {"history": [], "bubbles": []}

    def show(*pending: str) -> None:
        log.value = "".join([*state["bubbles"], *pending])

    def on_send(_) -> None:
        text = message.value.strip()
        if not text:
            status.value = "<b>Write a message first.</b>"
            return
        mine = bubble_html("user", html.escape(text))
        show(mine, bubble_html("assistant", "<i>writing…</i>", model.value))
        send.disabled = True
        try:
            def partial(so_far: str) -> None:
                show(mine, bubble_html("assistant", html.escape(so_far), model.value))

            state["history"], answer = turn_fn(state["history"], text, model.value, max_new_tokens, partial)
            state["bubbles"] += [mine, answer_bubble(answer)]
            message.value = ""
            turns = sum(m["role"] == "user" for m in state["history"])
            status.value = (f"<i>{turns} turn{'s' * (turns > 1)}: the model re-read {answer.prompt_tokens} "
                            "tokens of conversation to write this reply.</i>")
            show()
        except Exception as error:  # the failed turn is not kept: the next one starts from the last good one
            sentence = f"{error_sentence(error)} The conversation is as it was before this message."
            show(mine, bubble_html("assistant", f"<span style='color:#b00020'>{html.escape(sentence)}</span>",
                                   model.value))
        finally:
            send.disabled = False

    def on_clear(_) -> None:
        state["history"], state["bubbles"] = [], []
        status.value = "<i>A new conversation: the model remembers nothing of the last one.</i>"
        show()

    send.on_click(on_send)
    clear.on_click(on_clear)
    app = w.VBox([model, log, message, w.HBox([send, clear]), status, _disclaimer()])
    app.add_class("course-chat-app")
    app.send, app.clear, app.message, app.model = on_send, on_clear, message, model
    app.conversation, app.status = log, status
    app.state = state  # for tests and scripts
    return app


def build_report_app(findings_fn, advise_fn, vl_labels: list[str], labels: list[str],
                     samples: dict[str, Path], *, max_pixels: int, max_new_tokens: int = 256,
                     findings_tokens: int = 96, note: str = "", max_mb: float = MAX_UPLOAD_MB):
    """The report assistant: an image → the VL model's findings → the text model's explanation and advice.

    ``findings_fn(image, vl_label, max_new_tokens)`` returns the findings; ``advise_fn(findings, label,
    max_new_tokens, on_text)`` returns the advice as an ``Answer``, streamed to ``on_text``.
    """
    import ipywidgets as w

    status = _status(note)
    picker = ImagePicker(samples, max_pixels, status, note, max_mb)
    vl_model = _labelled_dropdown(vl_labels, "Findings by:")
    text_model = _labelled_dropdown(labels, "Advice by:")
    button = w.Button(description="Write report", button_style="primary", icon="play")
    findings_panel = w.HTML(panel_html("Findings"), layout=w.Layout(width="40%"))
    advice_panel = w.HTML(panel_html("Advice"), layout=w.Layout(width="60%"))

    def on_report(_) -> None:
        if picker.image is None:
            status.value = "<b>Pick a sample or upload an image first.</b>"
            return
        button.disabled = True
        try:
            findings_panel.value = partial_html(vl_model.value, "")
            advice_panel.value = panel_html(text_model.value)
            try:
                findings = findings_fn(picker.image, vl_model.value, findings_tokens)
            except Exception as error:
                findings_panel.value = message_html(vl_model.value, error_sentence(error))
                advice_panel.value = message_html(text_model.value, "No advice without findings.")
                return
            findings_panel.value = panel_html(vl_model.value, report_html(findings))

            def show(so_far: str) -> None:
                advice_panel.value = partial_html(text_model.value, so_far)

            try:
                advice_panel.value = answer_html(advise_fn(findings, text_model.value, max_new_tokens, show))
            except Exception as error:
                advice_panel.value = message_html(text_model.value, error_sentence(error))
        finally:
            button.disabled = False

    button.on_click(on_report)
    app = w.VBox([w.HBox([picker.sample, picker.upload]), w.HBox([vl_model, text_model, button]), status,
                  w.HBox([picker.preview, findings_panel, advice_panel]), _disclaimer()])
    app.add_class("course-report-app")
    app.report, app.status, app.sample, app.upload = on_report, status, picker.sample, picker.on_upload
    app.vl_model, app.text_model = vl_model, text_model
    app.findings, app.advice = findings_panel, advice_panel
    return app


def build_demo(tabs: dict[str, object]):
    """The apps in tabs, by title; an app given as None (its model is missing) is left out."""
    import ipywidgets as w

    apps = {title: app for title, app in tabs.items() if app is not None}
    if len(apps) == 1:
        return next(iter(apps.values()))
    tab = w.Tab(children=list(apps.values()))
    for i, title in enumerate(apps):
        tab.set_title(i, title)
    return tab
