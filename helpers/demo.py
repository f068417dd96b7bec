"""The side-by-side demo (07): one base model with every adapter beside it, a safety screen, an app.

The base weights are loaded once; the SFT and GRPO adapters are small LoRA matrices loaded next to
them under their own names, and each answer switches to one of them (or turns them all off for the
base model). Three models' answers for the memory of about one.
"""

from __future__ import annotations

import html
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from helpers.generation import DISCLAIMER, generate_replies
from helpers.grpo import GRPO_ADAPTER, SFT_ADAPTER
from helpers.metrics import SafetyLists, find_keywords, split_think

ADAPTERS = {"sft": SFT_ADAPTER, "grpo": GRPO_ADAPTER}  # label: folder in the run dir
TITLES = {"base": "Base model", "sft": "After SFT (03)", "grpo": "After GRPO (06)"}


@dataclass
class Answer:
    """One model's reply to the question, split into reasoning and answer, with a safety screen."""

    model: str
    think: str
    answer: str
    new_tokens: int
    seconds: float
    flags: list[str] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def find_adapters(run: Path) -> dict[str, Path]:
    """The adapters this run has trained so far, by label: ``sft`` (03) and ``grpo`` (06)."""
    found = {label: Path(run) / folder for label, folder in ADAPTERS.items()}
    return {label: path for label, path in found.items() if (path / "adapter_config.json").is_file()}


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
    if label == "base":
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


def ask(model, tokenizer, question: str, labels: list[str], *, max_new_tokens: int = 256,
        system: str | None = None) -> list[Answer]:
    """Every model's answer to ``question``: same prompt, greedy decoding, one model after another."""
    lists = SafetyLists.load()
    answers = []
    for label in labels:
        with use_model(model, label):
            [reply] = generate_replies(model, tokenizer, [question], max_new_tokens=max_new_tokens,
                                       batch_size=1, system=system)
        think, answer = split_think(reply.text)
        answers.append(Answer(label, think, answer, reply.new_tokens, reply.seconds, screen(answer, lists)))
    return answers


# --- the app ----------------------------------------------------------------------------------

_TEXT = "white-space:pre-wrap"
_BADGE = "display:inline-block;margin:4px 4px 0 0;padding:1px 6px;border-radius:8px;color:white;font-size:85%"


def answer_html(answer: Answer) -> str:
    """One model's panel: title, speed, the reasoning folded away, the answer, the safety flags."""
    parts = [f"<h4 style='margin:0 0 4px'>{html.escape(TITLES.get(answer.model, answer.model))}</h4>",
             f"<div style='color:#666;font-size:85%'>{answer.new_tokens} tokens · "
             f"{answer.tokens_per_second:.1f} tokens/s</div>"]
    if answer.think:
        reasoning = html.escape(answer.think)
        parts.append("<details><summary>reasoning (think block)</summary>"
                     f"<div style='{_TEXT};color:#444'>{reasoning}</div></details>")
    reply = html.escape(answer.answer) or "<i>(no answer)</i>"
    parts.append(f"<div style='{_TEXT};margin-top:6px'>{reply}</div>")
    for flag in answer.flags:
        colour = "#b00020" if flag.startswith("risky") else "#0b6e4f"
        parts.append(f"<span style='{_BADGE};background:{colour}'>{html.escape(flag)}</span>")
    return "<div style='border:1px solid #ddd;border-radius:6px;padding:8px'>" + "".join(parts) + "</div>"


def build_app(ask_fn, labels: list[str], examples: list[str], max_new_tokens: int = 256):
    """The ipywidgets app: pick or type a question, press the button, read every model side by side.

    ``ask_fn(question, max_new_tokens)`` returns one ``Answer`` per label, in order.
    """
    import ipywidgets as w

    layout = w.Layout(width="100%")
    example = w.Dropdown(options=[("(type your own question)", "")] + [(e[:90], e) for e in examples],
                         description="Example:", layout=layout)
    question = w.Textarea(placeholder="Ask a medical question…", rows=3, layout=layout)
    length = w.IntSlider(value=max_new_tokens, min=32, max=max(1024, max_new_tokens), step=32,
                         description="max tokens")
    button = w.Button(description="Ask every model", button_style="primary", icon="play")
    panels = [w.HTML(layout=w.Layout(width=f"{100 / len(labels):.1f}%")) for _ in labels]
    disclaimer = w.HTML(f"<p style='color:#8a6d3b'>⚠️ {html.escape(DISCLAIMER)}</p>")

    def on_example(change) -> None:
        if change["new"]:
            question.value = change["new"]

    def on_ask(_) -> None:
        text = question.value.strip()
        if not text:
            panels[0].value = "<i>Type a question first.</i>"
            return
        button.disabled = True
        for panel in panels:
            panel.value = "<i>generating…</i>"
        try:
            for panel, answer in zip(panels, ask_fn(text, length.value), strict=True):
                panel.value = answer_html(answer)
        finally:
            button.disabled = False

    example.observe(on_example, names="value")
    button.on_click(on_ask)
    app = w.VBox([example, question, w.HBox([length, button]), w.HBox(panels), disclaimer])
    app.ask = on_ask  # lets a test (or a teacher's script) press the button
    app.question = question
    app.panels = panels
    return app
