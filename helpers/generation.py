"""Generate chat replies in batches, greedy by default, and time them."""

from __future__ import annotations

import time
from dataclasses import dataclass

DISCLAIMER = ("For teaching only: model output is not medical advice. In an emergency call your "
              "local emergency number (120 in China, 911 in the US, 112 in Europe).")


@dataclass
class Reply:
    """One generated answer with how long it took and how many tokens it has."""

    question: str
    text: str
    new_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def chat_prompt(tokenizer, question: str, system: str | None = None, thinking: bool | None = None) -> str:
    """The question rendered with the model's own chat template, ready for generation."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    extra = {} if thinking is None else {"enable_thinking": thinking}  # Qwen3 templates read this
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)


def generate_replies(
    model,
    tokenizer,
    questions: list[str],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    system: str | None = None,
    thinking: bool | None = None,
    do_sample: bool = False,
) -> list[Reply]:
    """Replies to ``questions``, generated ``batch_size`` at a time with left padding."""
    import torch

    # Decoder-only models continue from the last token, so padding goes on the left.
    tokenizer.padding_side = "left"
    model.eval()
    replies: list[Reply] = []
    for start in range(0, len(questions), batch_size):
        batch = questions[start:start + batch_size]
        prompts = [chat_prompt(tokenizer, q, system, thinking) for q in batch]
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        inputs = inputs.to(model.device)
        began = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                    pad_token_id=tokenizer.pad_token_id)
        seconds = (time.perf_counter() - began) / len(batch)
        new = output[:, inputs["input_ids"].shape[1]:]
        for question, ids in zip(batch, new, strict=True):
            n_tokens = int((ids != tokenizer.pad_token_id).sum())
            text = tokenizer.decode(ids, skip_special_tokens=True).strip()
            replies.append(Reply(question, text, n_tokens, seconds))
    return replies
