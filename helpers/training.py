"""Supervised fine-tuning (03): think blocks, the loss mask, checkpoints and resume, tracking, memory.

The notebook builds the LoRA config, the ``SFTConfig`` and the ``SFTTrainer`` in plain sight; this
module holds what surrounds them: reading a think block out of generated text, showing which tokens
the loss sees, resuming from the last checkpoint, choosing SwanLab or no tracking, reading the loss
curve out of the log history, and what each way of fine-tuning costs in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from helpers.errors import CourseError
from helpers.runs import write_json

# --- think blocks -----------------------------------------------------------------------------

_THINK_BLOCK = re.compile(r"\s*<think>(?P<reasoning>.*?)</think>(?P<answer>.*)", re.DOTALL)


def split_think_block(text: str) -> tuple[str, str] | None:
    """(reasoning, answer) when ``text`` opens with a well-formed think block, else None.

    Well-formed: ``<think>`` first, non-empty reasoning with no second ``<think>`` inside, then
    ``</think>``. The answer after it may be empty (generation can stop at the token limit).
    """
    match = _THINK_BLOCK.match(text)
    if match is None:
        return None
    reasoning = match["reasoning"].strip()
    if not reasoning or "<think>" in reasoning:
        return None
    return reasoning, match["answer"].strip()


def think_format_rate(texts: list[str]) -> float:
    """The fraction of ``texts`` that open with a well-formed think block (0.0 for no texts)."""
    return sum(split_think_block(t) is not None for t in texts) / len(texts) if texts else 0.0


# --- the loss mask ----------------------------------------------------------------------------

@dataclass
class LossMask:
    """One tokenized training example split into the tokens the loss ignores and those it trains."""

    ignored: str  # decoded tokens whose label is -100 (the prompt)
    trained: str  # decoded tokens whose label is the token itself (the completion)
    n_ignored: int
    n_trained: int


def loss_mask(tokenizer, row: dict) -> LossMask:
    """What the trainer will and will not learn from one prepared row (``input_ids`` + ``labels``)."""
    ids, labels = row["input_ids"], row["labels"]
    if len(ids) != len(labels):
        raise CourseError("A row needs one label per input id: pass a row of trainer.train_dataset.")
    ignored = [i for i, label in zip(ids, labels, strict=True) if label == -100]
    trained = [i for i, label in zip(ids, labels, strict=True) if label != -100]
    first_trained = next((k for k, label in enumerate(labels) if label != -100), len(labels))
    if any(label == -100 for label in labels[first_trained:]):
        raise CourseError("The loss mask is not one prompt followed by one completion.")
    return LossMask(tokenizer.decode(ignored), tokenizer.decode(trained), len(ignored), len(trained))


# --- checkpoints and resume -------------------------------------------------------------------

SETTINGS_FILE = "course-settings.json"
# The trainer arguments that change what training computes; a checkpoint only resumes under the same ones.
_RESUME_ARGS = ("learning_rate", "max_steps", "num_train_epochs", "per_device_train_batch_size",
                "gradient_accumulation_steps", "lr_scheduler_type", "warmup_steps", "weight_decay",
                "seed", "max_length", "optim", "bf16", "fp16", "completion_only_loss", "padding_free")


def checkpoint_step(path: Path) -> int:
    """The step number of a ``checkpoint-<step>`` folder."""
    return int(path.name.rsplit("-", 1)[1])


def last_checkpoint(folder: Path) -> Path | None:
    """The latest complete checkpoint in ``folder`` (one interrupted while saving is passed over)."""
    complete = [p for p in Path(folder).glob("checkpoint-*")
                if p.name.rsplit("-", 1)[1].isdigit() and (p / "trainer_state.json").is_file()]
    return max(complete, key=checkpoint_step, default=None)


def _dataset_fingerprint(dataset) -> str:
    # A few evenly spaced rows and the length: cheap, and any change of data or tokenizer shows up.
    n = len(dataset)
    picks = sorted({round(k * (n - 1) / 31) for k in range(32)}) if n else []
    digest = hashlib.sha256(str(n).encode())
    for k in picks:
        digest.update(json.dumps(dataset[k]["input_ids"]).encode())
    return digest.hexdigest()[:16]


def training_settings(trainer) -> dict:
    """What decides the result of a training run: model, adapter, data and trainer arguments."""
    model = trainer.model
    peft = getattr(model, "peft_config", {}).get("default")
    adapter = "full" if peft is None else {
        "r": peft.r, "alpha": peft.lora_alpha, "dropout": peft.lora_dropout,
        "targets": sorted(peft.target_modules)}
    args = {name: str(getattr(trainer.args, name, None)) for name in _RESUME_ARGS}
    return {"model": str(getattr(model.config, "_name_or_path", "")), "adapter": adapter,
            "data": _dataset_fingerprint(trainer.train_dataset), "args": args}


def resume_point(folder: Path, settings: dict) -> Path | None:
    """The checkpoint to resume from, or None to start fresh.

    Checkpoints written under other settings (another model, data, LoRA rank, step count...) would
    resume the wrong run, so they are removed, with one line saying so.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    saved = folder / SETTINGS_FILE
    if saved.is_file() and json.loads(saved.read_text(encoding="utf-8")) != settings:
        stale = sorted(folder.glob("checkpoint-*"))
        if stale:
            print(f"The training settings changed since {folder} was written: "
                  f"removing its {len(stale)} checkpoint(s) and starting over.")
        for path in stale:
            shutil.rmtree(path)
    write_json(saved, settings)
    return last_checkpoint(folder)


def train(trainer):
    """``trainer.train()``, resuming from the last checkpoint of the same settings when there is one."""
    checkpoint = resume_point(Path(trainer.args.output_dir), training_settings(trainer))
    if checkpoint is None:
        print(f"Training from the start: {trainer.args.max_steps} steps.")
    else:
        step = checkpoint_step(checkpoint)
        print(f"Resuming from {checkpoint.name} (step {step} of {trainer.args.max_steps}).")
    return trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)


def fp32_adapters_for_fp16(trainer) -> int:
    """Give QLoRA adapters fp32 weights again when the trainer runs in fp16 (a T4); returns how many.

    TRL's trainers store the adapters of a 4-bit model in bf16, but fp16 training scales the loss
    and must unscale the gradients, which PyTorch cannot do for bf16 ones: the first step fails.
    fp32 adapters are the usual mixed-precision choice. unsloth arranges this itself, so it is left alone.
    """
    import torch

    model = trainer.model
    if not trainer.args.fp16 or getattr(model, "course_backend", None) == "unsloth":
        return 0
    cast = 0
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype == torch.bfloat16:
            parameter.data = parameter.data.float()
            cast += 1
    return cast


# --- the log history --------------------------------------------------------------------------

def loss_curve(log_history: list[dict]) -> list[tuple[int, float]]:
    """(step, training loss) pairs from ``trainer.state.log_history``, in step order."""
    points = {int(entry["step"]): float(entry["loss"]) for entry in log_history
              if "loss" in entry and "step" in entry}
    return sorted(points.items())


# --- tracking ---------------------------------------------------------------------------------

TRACKING = ("auto", "cloud", "local", "none")


def swanlab_key_saved() -> bool:
    """Whether SwanLab has an API key: in the environment or saved by ``swanlab login``."""
    if os.environ.get("SWANLAB_API_KEY"):
        return True
    homes = [Path.cwd() / ".swanlab", Path(os.environ.get("SWANLAB_ROOT", Path.home() / ".swanlab"))]
    return any((home / ".netrc").is_file() for home in homes)


def report_to(tracking: str, log_dir: Path | None = None, project: str = "medical-llm-course") -> str:
    """The trainer's ``report_to`` for a TRACKING choice: "swanlab" or "none".

    "auto" logs to SwanLab's cloud when a key is saved and stays off otherwise; "local" keeps the
    SwanLab logs in ``log_dir`` with no account. ``SWANLAB_MODE=disabled`` (set by the course runner
    and the tests) turns tracking off whatever the choice.
    """
    if tracking not in TRACKING:
        raise CourseError(f"Unknown TRACKING {tracking!r}: choose one of {', '.join(TRACKING)}.")
    if tracking == "none" or os.environ.get("SWANLAB_MODE") == "disabled":
        return "none"
    import importlib.util

    if importlib.util.find_spec("swanlab") is None:
        raise CourseError("SwanLab is not installed: run `pip install swanlab`, or set TRACKING = 'none'.")
    if tracking == "local":
        os.environ["SWANLAB_MODE"] = "local"
        if log_dir is not None:
            os.environ["SWANLAB_LOG_DIR"] = str(log_dir)
    elif not swanlab_key_saved():
        if tracking == "cloud":
            raise CourseError("No SwanLab key: run `swanlab login` (or set SWANLAB_API_KEY), "
                              "or set TRACKING = 'local' to keep the logs on this machine.")
        return "none"
    else:
        os.environ["SWANLAB_MODE"] = "cloud"
    os.environ.setdefault("SWANLAB_PROJECT", project)
    return "swanlab"


# --- what each way of fine-tuning costs in memory ---------------------------------------------

METHODS = ("full", "lora-16bit", "qlora-4bit")


@dataclass(frozen=True)
class ParameterCounts:
    """A model's parameters: in the decoder layers' linear weights (LoRA targets, 4-bit in QLoRA),
    everywhere else (embeddings, norms, output head: kept 16-bit), and in LoRA adapters of one rank."""

    linear: int
    other: int
    lora_per_rank: int

    @property
    def total(self) -> int:
        return self.linear + self.other


def count_parameter_kinds(model, targets: tuple[str, ...]) -> ParameterCounts:
    """Split a model's parameters into LoRA-targeted linear weights and the rest."""
    import torch

    linear = lora_per_rank = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            linear += module.weight.numel()
            lora_per_rank += module.in_features + module.out_features  # A is r × in, B is out × r
    total = sum(p.numel() for p in model.parameters())
    return ParameterCounts(linear, total - linear, lora_per_rank)


def qwen3_parameter_counts(model_id: str, targets: tuple[str, ...]) -> ParameterCounts:
    """ParameterCounts of a Qwen3 size, built on the meta device (no memory, no download)."""
    import torch
    from transformers import AutoModelForCausalLM

    from helpers.architectures import qwen3_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(qwen3_config(model_id))
    return count_parameter_kinds(model, targets)


# Bytes per parameter. Full fine-tuning with AdamW keeps a 16-bit weight, its 16-bit gradient and two
# 32-bit moments (2 + 2 + 8); a trainable LoRA parameter costs the same. Frozen weights cost 2 bytes in
# 16-bit, about 0.56 in 4-bit NF4 (4 bits plus the block scales).
_FULL, _FROZEN_16, _FROZEN_4 = 12.0, 2.0, 0.56


def training_memory_gb(counts: ParameterCounts, method: str, r: int) -> float:
    """GB of weights, gradients and optimizer state to train with ``method`` (activations come on top)."""
    adapters = counts.lora_per_rank * r * _FULL
    if method == "full":
        total = counts.total * _FULL
    elif method == "lora-16bit":
        total = counts.total * _FROZEN_16 + adapters
    elif method == "qlora-4bit":
        total = counts.linear * _FROZEN_4 + counts.other * _FROZEN_16 + adapters
    else:
        raise CourseError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")
    return total / 1024**3


def memory_table(models: dict[str, ParameterCounts], r: int) -> list[dict]:
    """One row per model: its size and the GB each method needs before activations."""
    return [{"model": name, "parameters (B)": round(c.total / 1e9, 2),
             **{method: round(training_memory_gb(c, method, r), 1) for method in METHODS}}
            for name, c in models.items()]


# --- a standalone model -----------------------------------------------------------------------

def save_merged(model, tokenizer, path: str | Path, *, base=None, adapter: Path | None = None):
    """Save a standalone 16-bit model (LoRA merged into the weights) that transformers and vLLM load as is.

    With unsloth its own merge is used. A 4-bit base cannot take the merge: ``base`` (a profile or
    model id) is reloaded in 16-bit and the saved ``adapter`` merged into it. Returns the merged
    model; the LoRA model passed in is consumed by the merge.
    """
    import torch

    from helpers.models import load_adapter, load_text_model

    path = Path(path)
    if getattr(model, "course_backend", "transformers") == "unsloth":
        model.save_pretrained_merged(str(path), tokenizer, save_method="merged_16bit")
        return model
    if getattr(model, "is_loaded_in_4bit", False):
        if base is None or adapter is None:
            raise CourseError("A 4-bit model cannot take the merge: pass base= and adapter= to reload it.")
        model, _ = load_text_model(base, load_in_4bit=False, backend="transformers")
        model = load_adapter(model, adapter)
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    if merged.dtype == torch.float32:  # the CPU trains in 32-bit; the saved model is 16-bit like the others
        merged = merged.to(torch.bfloat16)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return merged
