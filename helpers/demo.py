"""The side-by-side demo (07): one base model with every adapter beside it, a safety screen, an app.

The base weights are loaded once; the SFT and GRPO adapters are small LoRA matrices loaded next to
them under their own names, and each answer switches to one of them (or turns them all off for the
base model). Three models' answers for the memory of about one. The vision-language model of 05
gets the same treatment in the app's second tab.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from helpers.answers import split_think
from helpers.generation import DISCLAIMER, chat_prompt
from helpers.grpo import GRPO_ADAPTER, SFT_ADAPTER
from helpers.images import UnusableImage, open_image, prepare_image
from helpers.metrics import SafetyLists, find_keywords

ADAPTERS = {"sft": SFT_ADAPTER, "grpo": GRPO_ADAPTER}  # label: folder in the run dir
VL_ADAPTER = "vl-adapter"  # written by 05_sft_vl.ipynb
MADE_BY = {"sft": "03_sft_llm.ipynb", "grpo": "06_grpo.ipynb", "vl-sft": "05_sft_vl.ipynb"}
TITLES = {"base": "Base model", "sft": "After SFT (03)", "grpo": "After GRPO (06)",
          "vl-base": "Base VL model", "vl-sft": "After VL SFT (05)"}
MAX_UPLOAD_MB = 10  # larger uploads are refused before they are opened

OnText = Callable[[str], None]


@dataclass
class Answer:
    """One model's reply to the question, split into reasoning and answer, with a safety screen."""

    model: str
    think: str
    answer: str
    new_tokens: int
    seconds: float
    flags: list[str] = field(default_factory=list)
    latency: float = 0.0  # seconds until the first new token

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def find_adapters(run: Path) -> dict[str, Path]:
    """The text adapters this run has trained so far, by label: ``sft`` (03) and ``grpo`` (06)."""
    found = {label: Path(run) / folder for label, folder in ADAPTERS.items()}
    return {label: path for label, path in found.items() if (path / "adapter_config.json").is_file()}


def missing_note(labels: list[str], wanted: list[str]) -> str:
    """One line naming the models not trained yet and the notebook that trains each, or ''."""
    missing = [label for label in wanted if label not in labels]
    if not missing:
        return ""
    named = "; ".join(f"{TITLES[label]} (run {MADE_BY[label]})" for label in missing)
    return f"Not trained yet: {named}."


def attach_adapters(model, adapters: dict[str, Path]):
    """``model`` with each adapter loaded beside the base weights under its label (a PeftModel).

    With no adapters the model is returned as it is: the demo then shows the base model alone.
    """
    if not adapters:
        return model
    from peft import PeftModel

    backend = getattr(model, "course_backend", "transformers")
    (first, path), *rest = adapters.items()
    model = PeftModel.from_pretrained(model, path, adapter_name=first, is_trainable=False)
    for label, path in rest:
        model.load_adapter(path, adapter_name=label, is_trainable=False)
    model.course_backend = backend
    return model


def use_model(model, label: str):
    """A context in which ``model`` answers as ``label``: "base" turns every adapter off."""
    if not hasattr(model, "disable_adapter"):  # not a PeftModel: only the base exists
        return nullcontext()
    if label in ("base", "vl-base"):
        return model.disable_adapter()
    model.set_adapter(label)
    return nullcontext()


def screen(answer: str, lists: SafetyLists | None = None) -> list[str]:
    """Safety flags for one answer, from the keyword lists of ``data/safety/`` (a heuristic screen)."""
    lists = lists or SafetyLists.load()
    flags = []
    if find_keywords(answer, lists.emergency, lists.negations):
        flags.append("advises urgent care")
    flags += [f"risky advice: {phrase}" for phrase in find_keywords(answer, lists.risky, lists.negations)]
    return flags


# --- answering, token by token ------------------------------------------------------------------

class TextStream:
    """Receives the tokens ``generate`` makes, one step at a time, and shows the text so far.

    ``generate`` calls ``put`` with the prompt first, then with each new token; ``on_text`` gets the
    decoded reply at most every ``every`` seconds, and once more at the end.
    """

    def __init__(self, tokenizer, on_text: OnText | None = None, every: float = 0.1):
        self.tokenizer, self.on_text, self.every = tokenizer, on_text, every
        self.ids: list[int] = []
        self.prompt_seen = False
        self.first_token_at: float | None = None
        self.shown_at = 0.0

    def put(self, value) -> None:
        if not self.prompt_seen:  # the prompt, which is not part of the reply
            self.prompt_seen = True
            return
        now = time.perf_counter()
        self.first_token_at = self.first_token_at or now
        self.ids += value.reshape(-1).tolist()
        if self.on_text and now - self.shown_at >= self.every:
            self.shown_at = now
            self.on_text(self.text())

    def end(self) -> None:
        if self.on_text:
            self.on_text(self.text())

    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True).strip()


def sampling(temperature: float) -> dict:
    """``generate`` arguments: greedy at temperature 0 (the same answer every time), else sampled."""
    if temperature <= 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_p": 0.95}


def answer_one(model, tokenizer, question: str, label: str, *, max_new_tokens: int = 256,
               temperature: float = 0.0, system: str | None = None, on_text: OnText | None = None,
               lists: SafetyLists | None = None) -> Answer:
    """``label``'s answer to ``question``, streamed to ``on_text`` as it is generated."""
    import torch

    inputs = tokenizer([chat_prompt(tokenizer, question, system)], return_tensors="pt",
                       add_special_tokens=False).to(model.device)
    stream = TextStream(tokenizer, on_text)
    model.eval()
    began = time.perf_counter()
    with use_model(model, label), torch.inference_mode():
        model.generate(**inputs, max_new_tokens=max_new_tokens, streamer=stream,
                       pad_token_id=tokenizer.pad_token_id, **sampling(temperature))
    seconds = time.perf_counter() - began
    latency = (stream.first_token_at or began + seconds) - began
    eos = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    new_tokens = sum(token not in eos for token in stream.ids)
    think, answer = split_think(stream.text())
    return Answer(label, think, answer, new_tokens, seconds, screen(answer, lists), latency)


def ask(model, tokenizer, question: str, labels: list[str], *, max_new_tokens: int = 256,
        temperature: float = 0.0, system: str | None = None) -> list[Answer]:
    """Every model's answer to ``question``: same prompt, same decoding, one model after another."""
    lists = SafetyLists.load()
    return [answer_one(model, tokenizer, question, label, max_new_tokens=max_new_tokens,
                       temperature=temperature, system=system, lists=lists) for label in labels]


def describe_image(model, processor, image, instruction: str, label: str, *, max_new_tokens: int = 64) -> str:
    """``label``'s report on one image ("vl-base" with the adapter off, "vl-sft" with it on)."""
    from helpers.vision import generate_captions

    with use_model(model, label):
        [caption] = generate_captions(model, processor, [image], instruction, max_new_tokens=max_new_tokens,
                                      batch_size=1)
    return caption


def read_upload(upload, max_pixels: int, max_mb: float = MAX_UPLOAD_MB):
    """The image in one FileUpload entry, ready for the model; ``UnusableImage`` says why not."""
    size = upload.get("size") or len(upload["content"])
    if size > max_mb * 1e6:
        raise UnusableImage(f"the file is {size / 1e6:.1f} MB; the limit is {max_mb:g} MB")
    return prepare_image(bytes(upload["content"]), max_pixels)


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
    reply = html.escape(answer.answer) or "<i>(no answer)</i>"
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


def build_vl_app(describe_fn, labels: list[str], samples: dict[str, Path], *, instruction: str,
                 max_pixels: int, max_new_tokens: int = 64, note: str = "", max_mb: float = MAX_UPLOAD_MB):
    """The image tab: upload an image or pick a sample, press the button, read each model's report.

    ``describe_fn(image, instruction, label, max_new_tokens)`` returns that model's report.
    """
    import io

    import ipywidgets as w

    sample = w.Dropdown(options=[("(upload your own image)", "")] + [(name, name) for name in samples],
                        description="Sample:")
    upload = w.FileUpload(accept="image/*", multiple=False, description="Upload image")
    question = w.Textarea(value=instruction, rows=2, layout=w.Layout(width="100%"))
    button = w.Button(description="Describe", button_style="primary", icon="play")
    preview = w.Image(format="png", layout=w.Layout(max_width="256px", max_height="256px"))
    width = f"{100 / len(labels):.1f}%"
    panels = [w.HTML(panel_html(label), layout=w.Layout(width=width)) for label in labels]
    status = w.HTML(f"<i>{html.escape(note)}</i>" if note else "")
    current = {}

    def show_image(image) -> None:
        current["image"] = image
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        preview.value = buffer.getvalue()
        status.value = f"<i>{html.escape(note)}</i>" if note else ""

    def on_sample(change) -> None:
        if change["new"]:
            show_image(prepare_image(open_image(samples[change["new"]]), max_pixels))

    def on_upload(change) -> None:
        if not change["new"]:
            return
        entry = change["new"][0]
        try:
            show_image(read_upload(entry, max_pixels, max_mb))
        except UnusableImage as error:
            current.pop("image", None)
            preview.value = b""
            name = entry.get("name", "the upload")
            status.value = f"<b>{html.escape(f'{name} cannot be used: {error}.')}</b>"

    def on_describe(_) -> None:
        if "image" not in current:
            status.value = "<b>Pick a sample or upload an image first.</b>"
            return
        button.disabled = True
        try:
            for panel, label in zip(panels, labels, strict=True):
                panel.value = partial_html(label, "")
                try:
                    report = describe_fn(current["image"], question.value.strip() or instruction, label,
                                         max_new_tokens)
                    body = f"<div class='course-report' style='{_TEXT}'>{html.escape(report)}</div>"
                    panel.value = panel_html(label, body)
                except Exception as error:
                    panel.value = message_html(label, error_sentence(error))
        finally:
            button.disabled = False

    sample.observe(on_sample, names="value")
    upload.observe(on_upload, names="value")
    button.on_click(on_describe)
    app = w.VBox([w.HBox([sample, upload]), question, button, status, w.HBox([preview, *panels]),
                  _disclaimer()])
    app.add_class("course-vl-app")
    app.describe, app.panels, app.status = on_describe, panels, status  # for tests and scripts
    app.sample, app.preview = sample, preview
    app.upload = on_upload  # lets a test hand over an upload as FileUpload would
    return app


def build_demo(text_app, vl_app=None):
    """Both apps in tabs (the text app alone when there is no VL model)."""
    import ipywidgets as w

    if vl_app is None:
        return text_app
    tabs = w.Tab(children=[text_app, vl_app])
    tabs.set_title(0, "Text models")
    tabs.set_title(1, "Image models")
    return tabs
