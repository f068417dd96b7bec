"""What surrounds the trainers of 03, 05 and 06: processes, checkpoints and resume, saving, tracking.

The notebooks build the LoRA config, the ``SFTConfig``/``GRPOConfig`` and the trainers in their own
cells; this module holds the plumbing around them: how many processes train and which one saves,
reading a think block out of generated text, showing which tokens the loss sees, resuming from the
last checkpoint, saving what trained, choosing SwanLab or no tracking, reading the loss curves out of
the log history, and what each way of fine-tuning costs in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from helpers.answers import has_think_block
from helpers.errors import CourseError, OutOfMemory, free_gpu_memory, is_out_of_memory
from helpers.files import atomic_path
from helpers.runs import shown, write_json
from helpers.secrets import read_secret

# --- processes ------------------------------------------------------------------------------

def world_size() -> int:
    """How many processes train together (``accelerate launch`` and ``torchrun`` set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True in the one process that prints and saves (rank 0), and when there is only one."""
    return int(os.environ.get("RANK", "0")) == 0


def optimizer_name(on_gpu: bool) -> str:
    """AdamW with 8-bit moments on a GPU (a quarter of the memory); plain AdamW on a CPU and under FSDP,
    which shards the optimizer itself and cannot gather bitsandbytes' 8-bit state into a checkpoint."""
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    return "adamw_8bit" if on_gpu and not fsdp else "adamw_torch"


def launch_command(lesson: str, knobs: Path) -> str:
    """The ``accelerate launch`` line that trains a knob file on this machine's GPUs, or, with fewer than
    two here, on a machine with two."""
    import torch

    gpus = torch.cuda.device_count()
    where = f"this machine's {gpus} GPUs" if gpus > 1 else f"a machine with 2 GPUs (this one has {gpus})"
    return (f"From a terminal in the course folder, on {where}:\n"
            f"  accelerate launch --num_processes {max(gpus, 2)} -m helpers.train {lesson} "
            f"--config {shown(knobs)}")


def save_trained(trainer, tokenizer, path: str | Path) -> Path:
    """Save what the trainer trained (the adapter, or the whole model after full fine-tuning) to ``path``.

    One process saves; under FSDP the weights are sharded across the processes, so every process
    takes part in gathering them (a save on the first process alone would wait for the others forever).
    """
    from helpers.models import save_adapter

    path = Path(path)
    if trainer.is_fsdp_enabled:
        trainer.save_model(str(path))  # with FULL_STATE_DICT (configs/accelerate/fsdp.yaml): one whole copy
        if trainer.accelerator.is_main_process:
            tokenizer.save_pretrained(path)
    elif trainer.accelerator.is_main_process:
        model = trainer.model
        if "ref" in getattr(model, "peft_config", {}):  # TRL's frozen KL reference: not part of the result
            model.delete_adapter("ref")
        save_adapter(model, tokenizer, path)
    trainer.accelerator.wait_for_everyone()
    return path


# --- think blocks -----------------------------------------------------------------------------

def think_format_rate(texts: list[str]) -> float:
    """The fraction of ``texts`` that open with a closed, non-empty think block (0.0 for no texts)."""
    return sum(has_think_block(t) for t in texts) / len(texts) if texts else 0.0


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
# The batch counts as one number, rows per optimizer step: halving the batch on out-of-memory and
# doubling the accumulation changes how a step is computed, not what it learns.
_RESUME_ARGS = ("learning_rate", "max_steps", "num_train_epochs", "lr_scheduler_type", "warmup_steps",
                "weight_decay", "seed", "max_length", "optim", "bf16", "fp16", "completion_only_loss",
                "padding_free", "num_generations", "max_completion_length", "temperature", "beta",
                "reward_weights")


def checkpoint_step(path: Path) -> int:
    """The step number of a ``checkpoint-<step>`` folder."""
    return int(path.name.rsplit("-", 1)[1])


def last_checkpoint(folder: Path) -> Path | None:
    """The latest complete checkpoint in ``folder`` (one interrupted while saving is passed over).

    Not ``transformers.trainer_utils.get_last_checkpoint``: it takes the highest ``checkpoint-N`` folder
    even when the kernel died while writing it, and resuming from that one fails."""
    complete = [p for p in Path(folder).glob("checkpoint-*")
                if p.name.rsplit("-", 1)[1].isdigit() and (p / "trainer_state.json").is_file()]
    return max(complete, key=checkpoint_step, default=None)


def _dataset_fingerprint(dataset) -> str:
    # A few evenly spaced rows and the length: cheap, and any change of data or tokenizer shows up.
    n = len(dataset)
    picks = sorted({round(k * (n - 1) / 31) for k in range(32)}) if n else []
    digest = hashlib.sha256(str(n).encode())
    for k in picks:
        row = dataset[k]  # tokenized (SFT) or prompts (GRPO)
        digest.update(json.dumps(row["input_ids"] if "input_ids" in row else row, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def training_settings(trainer) -> dict:
    """What decides the result of a training run: model, adapter, data and trainer arguments."""
    model = trainer.model
    peft = getattr(model, "peft_config", {}).get("default")
    adapter = "full" if peft is None else {
        "r": peft.r, "alpha": peft.lora_alpha, "dropout": peft.lora_dropout,
        "targets": sorted(peft.target_modules)}
    args = {name: str(getattr(trainer.args, name, None)) for name in _RESUME_ARGS}
    args["rows_per_step"] = str(effective_batch(trainer.args))
    return {"model": str(getattr(model.config, "_name_or_path", "")), "adapter": adapter,
            "data": _dataset_fingerprint(trainer.train_dataset), "args": args}


def clear_stale_checkpoints(folder: Path, settings: dict) -> None:
    """Remove the checkpoints in ``folder`` written under other settings, and record ``settings``.

    Checkpoints of another model, data, LoRA rank, step count... would resume the wrong run, so they
    are removed, with one line saying so.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    saved = folder / SETTINGS_FILE
    if saved.is_file() and json.loads(saved.read_text(encoding="utf-8")) != settings:
        stale = sorted(folder.glob("checkpoint-*"))
        if stale:
            print(f"The training settings changed since {shown(folder)} was written: "
                  f"removing its {len(stale)} checkpoint(s) and starting over.")
        for path in stale:
            shutil.rmtree(path)
    write_json(saved, settings)


def effective_batch(args) -> int:
    """Rows per optimizer step (on one device): the batch times the gradient accumulation."""
    return args.per_device_train_batch_size * args.gradient_accumulation_steps


# What to turn when each kind of training runs out of GPU memory, in the notebooks' own knob names.
SFT_KNOBS = ("lower the batch size or MAX_SEQ_LENGTH, load the model in 4-bit (a smaller profile does), "
             "or set HALVE_BATCH_ON_OOM = True to retry with half the batch")
VL_KNOBS = ("lower MAX_PIXELS (fewer image tokens) or the batch size, set FINETUNE_VISION_LAYERS = False, "
            "or set HALVE_BATCH_ON_OOM = True to retry with half the batch")
GRPO_KNOBS = ("lower NUM_GENERATIONS or MAX_COMPLETION_LENGTH, or load the model in 4-bit (a smaller "
              "profile does)")


def halve_batch(trainer) -> bool:
    """Halve the trainer's batch and double its accumulation (same rows per step); False at batch 1."""
    args = trainer.args
    if args.per_device_train_batch_size < 2 or args.per_device_train_batch_size % 2:
        return False
    args.per_device_train_batch_size //= 2
    args.gradient_accumulation_steps *= 2
    trainer._train_batch_size = args.train_batch_size  # the trainer read the batch size when it was built
    return True


def _trainable_weights(model) -> dict | None:
    """A CPU copy of the weights that train, when they are adapter-sized (under 5% of the model)."""
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    total = sum(p.numel() for p in model.parameters())
    if sum(p.numel() for p in trainable.values()) > 0.05 * total:
        return None  # full fine-tuning: a copy would cost as much memory as the model
    return {name: p.detach().to("cpu", copy=True) for name, p in trainable.items()}


def _restore_weights(model, weights: dict) -> None:
    import torch

    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            parameters[name].copy_(value)


def train(trainer, *, settings: dict | None = None, halve_batch_on_oom: bool = False, knobs: str = SFT_KNOBS):
    """``trainer.train()``, resuming from the last checkpoint of the same settings when there is one.

    ``settings`` (by default ``training_settings(trainer)``) decide whether a checkpoint belongs to
    this run; pass your own when the dataset is not tokenized up front (the images of 05).

    Out of GPU memory, it ends in one sentence naming ``knobs``; with ``halve_batch_on_oom`` it first
    retries from the last checkpoint with half the batch and twice the accumulation, down to batch 1.
    """
    start = _trainable_weights(trainer.model) if halve_batch_on_oom else None
    accelerator = trainer.accelerator  # with several processes, one cleans the folder while the rest wait
    while True:
        folder = Path(trainer.args.output_dir)
        if accelerator.is_main_process:
            clear_stale_checkpoints(folder, settings or training_settings(trainer))
        accelerator.wait_for_everyone()
        checkpoint = last_checkpoint(folder)
        if checkpoint is None and start is not None:
            _restore_weights(trainer.model, start)  # a retry before the first checkpoint starts afresh
        if accelerator.is_main_process:
            print(f"Training from the start: {trainer.args.max_steps} steps." if checkpoint is None else
                  f"Resuming from {checkpoint.name} (step {checkpoint_step(checkpoint)} of "
                  f"{trainer.args.max_steps}).")
        if checkpoint is not None:
            _load_trained_adapter(trainer.model, checkpoint)
            if checkpoint_step(checkpoint) >= trainer.args.max_steps:
                return _load_finished(trainer, checkpoint)
        try:
            return trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            batch = trainer.args.per_device_train_batch_size
            free_gpu_memory()
            no_restart = start is None and last_checkpoint(Path(trainer.args.output_dir)) is None
            if not halve_batch_on_oom or no_restart or not halve_batch(trainer):
                raise OutOfMemory(f"training at batch size {batch}", knobs) from None
            print(f"Out of GPU memory at batch size {batch}: retrying with batch size "
                  f"{trainer.args.per_device_train_batch_size} and gradient accumulation "
                  f"{trainer.args.gradient_accumulation_steps} ({effective_batch(trainer.args)} rows per "
                  "step, as before).")


def _load_trained_adapter(model, checkpoint: Path) -> None:
    """Load the trained adapter saved at the checkpoint's top level into the model's active adapter.

    transformers' resume reads that file only when the checkpoint has no adapter subfolders. GRPO
    started from the SFT adapter has one (TRL's frozen "ref" copy, the KL reference), so without this
    a resumed run would go on from the starting adapter instead of the trained one."""
    weights = checkpoint / "adapter_model.safetensors"
    if not (hasattr(model, "peft_config") and weights.is_file()):
        return
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(weights), adapter_name=model.active_adapter)


def _load_finished(trainer, checkpoint: Path):
    """The weights and log history of a run that already reached its last step, with no step trained.

    ``trainer.train`` would resume there too, but when the step count is not a whole number of
    epochs it trains one step past the end (transformers 5.17), which changes the result of a rerun."""
    from transformers import TrainerState
    from transformers.trainer_utils import TrainOutput

    trainer._load_from_checkpoint(str(checkpoint))  # the same loader trainer.train uses to resume
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    return TrainOutput(trainer.state.global_step, sum(losses) / len(losses) if losses else float("nan"), {})


def fp32_adapters_for_fp16(trainer, backend: str = "transformers") -> int:
    """Give QLoRA adapters fp32 weights again when the trainer runs in fp16 (a T4); returns how many.

    TRL's trainers store the adapters of a 4-bit model in bf16, but fp16 training scales the loss
    and must unscale the gradients, which PyTorch cannot do for bf16 ones: the first step fails.
    fp32 adapters are the usual mixed-precision choice. unsloth arranges this itself, so a model it
    loaded (``backend``) is left alone.
    """
    import torch

    model = trainer.model
    if not trainer.args.fp16 or backend == "unsloth":
        return 0
    cast = 0
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype == torch.bfloat16:
            parameter.data = parameter.data.float()
            cast += 1
    return cast


# --- the log history --------------------------------------------------------------------------

def loss_curve(log_history: list[dict], key: str = "loss") -> list[tuple[int, float]]:
    """(step, loss) pairs from ``trainer.state.log_history``, in step order: the training loss, or
    with ``key="eval_loss"`` the loss on the evaluation set."""
    points = {int(entry["step"]): float(entry[key]) for entry in log_history
              if key in entry and "step" in entry}
    return sorted(points.items())


# --- tracking ---------------------------------------------------------------------------------

TRACKING = ("auto", "cloud", "local", "none")


def swanlab_key_saved() -> bool:
    """Whether SwanLab has an API key: in the environment or saved by ``swanlab login``."""
    if read_secret("SWANLAB_API_KEY"):
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


# --- a standalone model -----------------------------------------------------------------------

def save_merged(model, tokenizer, path: str | Path, *, backend: str = "transformers", base=None,
                adapter: Path | None = None):
    """Save a standalone 16-bit model (LoRA merged into the weights) that transformers and vLLM load as is.

    With unsloth (``backend``, the one that loaded the model) its own merge is used. A 4-bit base
    cannot take the merge: ``base`` (a profile or model id) is reloaded in 16-bit and the saved
    ``adapter`` merged into it. Returns the merged
    model; the LoRA model passed in is consumed by the merge.
    """
    import torch

    from helpers.models import load_adapter, load_text_model

    path = Path(path)
    if backend == "unsloth":
        model.save_pretrained_merged(str(path), tokenizer, save_method="merged_16bit")
        return model
    if getattr(model, "is_loaded_in_4bit", False):
        if base is None or adapter is None:
            raise CourseError("A 4-bit model cannot take the merge: pass base= and adapter= to reload it.")
        model = load_text_model(base, load_in_4bit=False, backend="transformers").model
        model = load_adapter(model, adapter)
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    if merged.dtype == torch.float32:  # the CPU trains in 32-bit; the saved model is 16-bit like the others
        merged = merged.to(torch.bfloat16)
    with atomic_path(path, directory=True) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return merged
