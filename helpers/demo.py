"""The side-by-side demo (07): one base model with every adapter beside it, a safety screen, an app.

The base weights are loaded once; the SFT and GRPO adapters are small LoRA matrices loaded next to
them under their own names, and each answer switches to one of them (or turns them all off for the
base model). Three models' answers for the memory of about one. The vision-language model of 05
gets the same treatment. The apps built on these functions are in ``helpers.apps``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from helpers.answers import split_think
from helpers.generation import chat_prompt
from helpers.grpo import GRPO_ADAPTER, SFT_ADAPTER
from helpers.metrics import SafetyLists, find_keywords
from helpers.vl_grpo import VL_GRPO_ADAPTER

ADAPTERS = {"sft": SFT_ADAPTER, "grpo": GRPO_ADAPTER}  # label: folder in the run dir
VL_ADAPTER = "vl-adapter"  # written by 05_sft_vl.ipynb
VL_ADAPTERS = {"vl-sft": VL_ADAPTER, "vl-grpo": VL_GRPO_ADAPTER}  # label: folder in the run dir
MADE_BY = {"sft": "03_sft_llm.ipynb", "grpo": "06_grpo.ipynb", "vl-sft": "05_sft_vl.ipynb",
           "vl-grpo": "06_grpo.ipynb"}
TITLES = {"base": "Base model", "sft": "After SFT (03)", "grpo": "After GRPO (06)",
          "vl-base": "Base VL model", "vl-sft": "After VL SFT (05)", "vl-grpo": "After VL GRPO (06)"}

OnText = Callable[[str], None]
SHOW_EVERY_S = 0.1  # a streamed answer is shown at most this often (a browser cannot draw faster anyway)


@dataclass
class Answer:
    """One model's reply to the question, split into reasoning and answer, with a safety screen."""

    model: str
    think: str
    answer: str
    new_tokens: int
    seconds: float
    flags: list[str] = field(default_factory=list)
    latency: float = 0.0  # seconds until the first words of the answer appear
    prompt_tokens: int = 0  # what the model read first: a chat re-reads the whole conversation each turn

    @property
    def shown(self) -> str:
        """The answer, or a note saying why there is none: the reply was all reasoning, or empty."""
        return self.answer or ("(no answer after its reasoning)" if self.think else "(no answer)")

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def choices(labels: list[str]) -> list[tuple[str, str]]:
    """(title, label) pairs for a model selector, in the order given."""
    return [(TITLES.get(label, label), label) for label in labels]


def find_adapters(run: Path, folders: dict[str, str] = ADAPTERS) -> dict[str, Path]:
    """The adapters this run has trained so far, by label, in course order: the text ones, ``sft`` (03)
    and ``grpo`` (06), or with ``folders=VL_ADAPTERS`` the VL ones, ``vl-sft`` (05) and ``vl-grpo`` (06)."""
    found = {label: Path(run) / folder for label, folder in folders.items()}
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

    (first, path), *rest = adapters.items()
    model = PeftModel.from_pretrained(model, path, adapter_name=first, is_trainable=False)
    for label, path in rest:
        model.load_adapter(path, adapter_name=label, is_trainable=False)
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

class StopFlag:
    """A stopping criterion for ``generate`` that a caller sets from another thread."""

    def __init__(self):
        self.stop = False

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.stop, dtype=torch.bool, device=input_ids.device)


def print_stream() -> OnText:
    """An ``on_text`` that prints a reply as it is written: each call prints what is new since the last."""
    shown = [""]

    def show(so_far: str) -> None:
        new = so_far[len(shown[0]):] if so_far.startswith(shown[0]) else "\n" + so_far  # a re-decoded prefix
        print(new, end="", flush=True)
        shown[0] = so_far

    return show


def sampling(temperature: float) -> dict:
    """``generate`` arguments: greedy at temperature 0 (the same answer every time), else sampled."""
    if temperature <= 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_p": 0.95}


def answer_one(model, tokenizer, question: str | list[dict], label: str, *, max_new_tokens: int = 256,
               temperature: float = 0.0, system: str | None = None, on_text: OnText | None = None,
               lists: SafetyLists | None = None) -> Answer:
    """``label``'s answer to ``question``, streamed to ``on_text`` as it is generated.

    ``question`` is one question, or a conversation ending with the user's turn (a chat's history).
    """
    import threading

    import torch
    from transformers import TextIteratorStreamer

    inputs = tokenizer([chat_prompt(tokenizer, question, system)], return_tensors="pt",
                       add_special_tokens=False).to(model.device)
    # generate() writes into the streamer from a thread of its own; this one reads the text as it comes.
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    stop = StopFlag()
    done: dict = {}

    def generate() -> None:
        try:
            with torch.inference_mode():  # per thread: it must be entered here
                done["ids"] = model.generate(**inputs, max_new_tokens=max_new_tokens, streamer=streamer,
                                             stopping_criteria=[stop], pad_token_id=tokenizer.pad_token_id,
                                             **sampling(temperature))
        except Exception as error:  # raised again below, in the caller's thread
            done["error"] = error
            streamer.end()  # ends the reading loop

    model.eval()
    began, first, text, shown_at = time.perf_counter(), None, "", 0.0
    with use_model(model, label):
        writer = threading.Thread(target=generate, daemon=True)
        writer.start()
        try:
            for piece in streamer:
                now = time.perf_counter()
                first, text = first or now, text + piece
                if on_text and now - shown_at >= SHOW_EVERY_S:
                    shown_at = now
                    on_text(text.strip())
        finally:  # interrupted (the stop button, or on_text failing): generate stops at its next token
            stop.stop = True
            writer.join()
    if "error" in done:
        raise done["error"]
    seconds = time.perf_counter() - began
    new_ids = done["ids"][0, inputs["input_ids"].shape[1]:].tolist()
    reply = tokenizer.decode(new_ids, skip_special_tokens=True).strip()
    if on_text:
        on_text(reply)
    eos = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    think, answer = split_think(reply)
    return Answer(label, think, answer, sum(token not in eos for token in new_ids), seconds,
                  screen(answer, lists), (first or began + seconds) - began, inputs["input_ids"].shape[1])


def ask(model, tokenizer, question: str, labels: list[str], *, max_new_tokens: int = 256,
        temperature: float = 0.0, system: str | None = None) -> list[Answer]:
    """Every model's answer to ``question``: same prompt, same decoding, one model after another."""
    lists = SafetyLists.load()
    return [answer_one(model, tokenizer, question, label, max_new_tokens=max_new_tokens,
                       temperature=temperature, system=system, lists=lists) for label in labels]


def describe_image(model, processor, image, instruction: str, label: str, *, max_new_tokens: int = 64) -> str:
    """``label``'s report on one image ("vl-base": every adapter off; "vl-sft", "vl-grpo": that one on)."""
    from helpers.vision import generate_captions

    with use_model(model, label):
        [caption] = generate_captions(model, processor, [image], instruction, max_new_tokens=max_new_tokens,
                                      batch_size=1)
    return caption
