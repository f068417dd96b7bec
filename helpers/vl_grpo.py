"""GRPO of the vision-language model (06, its last section): closed questions about images, the policy.

A free report cannot be graded by a rule, but a closed question about the image can, when the image's
own caption (or its ROCO concepts) states the answer: the modality, or whether a fracture is there
(``helpers.report_facts``). This module turns 05's image + report pairs into such questions, as rows
in the form TRL's ``GRPOTrainer`` reads for a vision-language model (a conversational prompt and an
``image`` column, which TRL puts into the user turn), loads the policy (05's adapter, trainable, or
fresh LoRA), and answers held-out questions greedily for the before/after check. The rewards, the
``GRPOConfig`` and the trainer are cells of 06.
"""

from __future__ import annotations

from pathlib import Path

from helpers.errors import CourseError
from helpers.report_facts import MODALITIES, closed_questions
from helpers.runs import shown

VL_GRPO_ADAPTER = "vl-grpo-adapter"  # read by 07_demo.ipynb, beside 05's vl-adapter
# Before the question: reason first, as the text model of 06 does, then answer in a word.
REASON_FIRST = {"en": "Reason step by step inside <think> </think>, then give only the answer.",
                "zh": "请先在 <think> </think> 中逐步推理，然后只给出答案。"}
NO_FACT = "the caption states no modality or finding plainly"  # the reason a pair gives no question


def question_rows(examples: list[dict], language: str = "en") -> tuple[list[dict], dict[str, int]]:
    """(one GRPO row per closed question a pair's caption answers, the pairs skipped by reason).

    A row holds ``prompt`` (the user turn: ``REASON_FIRST``, then the question), ``image`` and the
    columns the rewards read: ``kind`` ("modality" or a finding), ``answer`` and ``question``.
    """
    if language not in REASON_FIRST:
        raise CourseError(f"INSTRUCTION_LANGUAGE = {language!r}: choose one of "
                          f"{', '.join(map(repr, REASON_FIRST))}.")
    rows, skipped = [], {}
    for example in examples:
        asked = closed_questions(example.get("report", ""), example.get("cuis", ()), language)
        if not asked or not example.get("images"):
            skipped[NO_FACT] = skipped.get(NO_FACT, 0) + 1
            continue
        for question in asked:
            text = f"{REASON_FIRST[language]} {question.question}"  # the question last: logs show its end
            rows.append({"prompt": [{"role": "user", "content": text}], "image": example["images"][0],
                         "kind": question.kind, "answer": question.answer, "question": question.question,
                         "id": example.get("id", "")})
    return rows, skipped


def describe_rows(rows: list[dict], skipped: dict[str, int], pairs: int, what: str) -> str:
    """One sentence: how many questions of which kinds came from how many pairs, and what was skipped."""
    kinds: dict[str, int] = {}
    for row in rows:
        kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
    named = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "none"
    left = sum(skipped.values())
    return (f"{what}: {len(rows)} closed questions ({named}) from {pairs} image(s)"
            + (f"; {left} image(s) skipped ({NO_FACT})" if left else ""))


def chance_level(kinds: list[str]) -> float:
    """The accuracy of guessing: 1 in 2 for a yes/no question, 1 in 5 for the modality; their mean."""
    if not kinds:
        return 0.0
    return sum(1 / len(MODALITIES) if kind == "modality" else 0.5 for kind in kinds) / len(kinds)


def load_vl_policy(model, adapter: Path, *, backend: str, lora_r: int, lora_alpha: int,
                   gradient_checkpointing: bool = False):
    """(model with trainable LoRA adapters, where it started): 05's adapter in ``adapter`` when there is
    one, loaded trainable so GRPO continues it; else fresh adapters on every part of the base model."""
    from helpers.models import prepare_for_lora
    from helpers.vision import add_vl_lora

    if not (Path(adapter) / "adapter_config.json").is_file():
        model = add_vl_lora(model, r=lora_r, alpha=lora_alpha, backend=backend,
                            gradient_checkpointing=gradient_checkpointing)
        where = shown(Path(adapter).parent)
        return model, (f"the base VL model with fresh LoRA adapters (no VL adapter in {where}: run "
                       "05_sft_vl.ipynb first to start from it)")
    from peft import PeftModel

    if backend != "unsloth":  # unsloth prepared its model when it loaded it
        model = prepare_for_lora(model, gradient_checkpointing=gradient_checkpointing)
    model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
    if backend == "unsloth":
        from unsloth import FastVisionModel

        FastVisionModel.for_training(model)
    return model, f"the VL SFT adapter of 05 ({shown(adapter)})"


def answer_questions(model, processor, rows: list[dict], max_new_tokens: int,
                     batch_size: int = 4) -> list[str]:
    """Greedy answers to each row's question about its image, in the rows' order: the prompt of
    training, written by ``vision.generate_captions``. Rows of different questions share a batch: a GPU
    decodes a batch for far less than its rows one call each (docs/benchmarks.md, table 10)."""
    from helpers.vision import generate_captions

    return generate_captions(model, processor, [row["image"] for row in rows],
                             [row["prompt"][-1]["content"] for row in rows], max_new_tokens=max_new_tokens,
                             batch_size=batch_size)
