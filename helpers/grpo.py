"""GRPO (06): the policy to start from, what to watch while it trains, and a before/after check.

The notebook builds the rewards, the ``GRPOConfig`` and the ``GRPOTrainer`` in plain sight; this
module holds what surrounds them: loading the model with the SFT adapter of 03 (or fresh LoRA
adapters), recording sampled completions every few steps, reading the reward curves out of the log
history, scoring the policy on held-out prompts, and the folder of the GRPO adapter that 04 and 07
read (``training.save_trained`` saves it).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any, NamedTuple

from helpers.answers import THINK_OPEN
from helpers.errors import CourseError
from helpers.models import LORA_TARGETS, Loaded, add_lora, load_text_model
from helpers.profiles import Profile
from helpers.runs import shown

SFT_ADAPTER = "sft-adapter"  # written by 03_sft_llm.ipynb
GRPO_ADAPTER = "grpo-adapter"  # read by 04_eval_after.ipynb and 07_demo.ipynb
RETRAIN = "run 03_sft_llm.ipynb with the same PROFILE and model, or set FROM_SFT = False."


def vllm_available() -> bool:
    """Whether vLLM is installed (unsloth then generates the GRPO samples with it, several times faster)."""
    return importlib.util.find_spec("vllm") is not None


class Policy(NamedTuple):
    """The model GRPO trains: ``model, tokenizer, backend, started_from = load_policy(...)``."""

    model: Any
    tokenizer: Any
    backend: str  # "unsloth" or "transformers", as load_text_model reports it
    started_from: str  # a sentence: the SFT adapter of 03, or fresh adapters and why


def _load_base(profile: Profile, model_id: str, fast_generation: bool, lora_r: int, backend: str) -> Loaded:
    if fast_generation:
        try:
            from unsloth import FastLanguageModel

            from helpers.hub import resolve_model
            from helpers.models import _torch_dtype

            model, tokenizer = FastLanguageModel.from_pretrained(
                model_name=str(resolve_model(model_id or profile.text_model).path),
                max_seq_length=profile.max_seq_length, load_in_4bit=profile.load_in_4bit,
                dtype=_torch_dtype(profile.dtype), fast_inference=True, max_lora_rank=lora_r,
                gpu_memory_utilization=0.6,  # vLLM's share of the GPU; training needs the rest
            )
            return Loaded(model, tokenizer, "unsloth")
        except Exception as err:  # vLLM and unsloth versions must agree; plain generation still works
            print(f"vLLM generation is not available ({type(err).__name__}: {err}); "
                  "generating with the model itself.")
    return load_text_model(model_id or profile.text_model, max_seq_length=profile.max_seq_length,
                           load_in_4bit=profile.load_in_4bit, dtype=profile.dtype, backend=backend)


def load_policy(profile: Profile, run: Path, *, model_id: str = "", lora_r: int = 16, lora_alpha: int = 16,
                from_sft: bool = True, fast_generation: bool = False, gradient_checkpointing: bool = True,
                backend: str = "auto") -> Policy:
    """The model with LoRA adapters, its tokenizer, the backend and where it started: the SFT adapter
    of 03 when the run has one (and ``from_sft``), else fresh adapters on the base model.

    The SFT adapter is loaded *trainable*, with its own rank and targets, so GRPO continues from it.
    """
    # first the base model: unsloth must be imported before peft
    model, tokenizer, backend = _load_base(profile, model_id, fast_generation, lora_r, backend)
    from peft.utils import set_peft_model_state_dict

    sft = run / SFT_ADAPTER
    if not (from_sft and (sft / "adapter_config.json").is_file()):
        why = "FROM_SFT is False" if not from_sft else f"no SFT adapter in {run}: run 03_sft_llm.ipynb first"
        model = add_lora(model, r=lora_r, alpha=lora_alpha, backend=backend,
                         gradient_checkpointing=gradient_checkpointing)
        fresh = f"the base model with fresh LoRA adapters ({why} to start from it)"
        return Policy(model, tokenizer, backend, fresh)
    config = json.loads((sft / "adapter_config.json").read_text(encoding="utf-8"))
    targets = config.get("target_modules")
    model = add_lora(model, r=int(config.get("r", lora_r)), alpha=int(config.get("lora_alpha", lora_alpha)),
                     targets=tuple(targets) if isinstance(targets, list) else LORA_TARGETS, backend=backend,
                     gradient_checkpointing=gradient_checkpointing)
    try:
        weights = _read_adapter_weights(sft)
        missing = set_peft_model_state_dict(model, weights).unexpected_keys
    except (RuntimeError, ValueError, OSError) as err:  # shapes differ: another base model trained it
        name = model_id or profile.text_model
        raise CourseError(f"The SFT adapter in {sft} does not fit {name}: {RETRAIN}") from err
    if missing:
        raise CourseError(f"The SFT adapter in {sft} has {len(missing)} weights this model lacks: {RETRAIN}")
    return Policy(model, tokenizer, backend, f"the SFT adapter of 03 ({shown(sft)})")


def _read_adapter_weights(folder: Path) -> dict:
    if (folder / "adapter_model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(folder / "adapter_model.safetensors")
    import torch

    return torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)


def keep_reference_adapter(trainer) -> bool:
    """Give the trainer a frozen copy of the starting adapter, named "ref", where it has none; returns
    whether it added one.

    GRPO's KL term measures how far the policy moved from the model it started from. For a model that
    arrives with an adapter (03's SFT adapter), TRL keeps a frozen "ref" copy and scores the reference
    with it. unsloth's patched trainer leaves that copy out, so its reference is the model with adapters
    disabled: the base model, and the KL is not ~0 at step 1. Call after ``fp32_adapters_for_fp16``, so
    the copy has the dtype the policy trains in.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    config = getattr(model, "peft_config", {})
    if trainer.beta == 0.0 or getattr(trainer, "ref_model", None) is not None or "default" not in config \
            or "ref" in config:
        return False
    model.add_adapter("ref", config["default"])
    model.set_adapter("default")  # the policy trains "default"; TRL switches to "ref" only to score it
    for name, param in model.named_parameters():
        if ".default." in name:
            ref = model.get_parameter(name.replace(".default.", ".ref."))
            ref.data = param.data.clone()  # the dtype and device of the trained one
            ref.requires_grad_(False)  # never trained
    return True


# --- watching training ----------------------------------------------------------------------

def watch_training(trainer, sample_every: int, group_size: int):
    """Replace the trainer's long log lines with one short line per step, and keep one group of sampled
    completions (one prompt, all its generations, with each reward and the advantage) every
    ``sample_every`` steps: what the policy actually writes while the rewards rise. Returns the
    watcher; its ``rows`` are the samples (``prompt`` in full, ``question`` its readable end)."""
    from transformers import PrinterCallback, ProgressCallback, TrainerCallback  # after unsloth's import

    class Watcher(TrainerCallback):
        def __init__(self):
            self.rows: list[dict] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs and state.is_world_process_zero:  # one line, not one per process
                print(format_step(state.global_step, state.max_steps, logs), flush=True)

        def on_step_end(self, args, state, control, **kwargs):
            step = state.global_step
            if step != 1 and step % max(1, sample_every) and step != state.max_steps:
                return
            logs = getattr(trainer, "_logs", None)  # TRL's buffer of the latest generation batch
            if not logs or not logs.get("completion"):
                return
            # The batch holds each prompt's generations one after another: the first group is one prompt.
            for i in range(min(group_size, len(logs["completion"]))):
                prompt = str(logs["prompt"][i])
                row = {"step": step, "prompt": prompt, "question": _tail(prompt),
                       "completion": str(logs["completion"][i])}
                row.update({name: round(values[i], 2) for name, values in logs["rewards"].items()})
                row["advantage"] = round(logs["advantages"][i], 2)
                self.rows.append(row)

    for callback in list(trainer.callback_handler.callbacks):  # the default printers, notebook table included
        if isinstance(callback, PrinterCallback | ProgressCallback) or "Progress" in type(callback).__name__:
            trainer.remove_callback(callback)
    watcher = Watcher()
    trainer.add_callback(watcher)
    return watcher


def format_step(step: int, max_steps: int, logs: dict) -> str:
    """One line of training progress: total reward, each reward's mean, KL, length, seconds."""
    parts = [f"step {step:>3}/{max_steps}", f"reward {logs.get('reward', float('nan')):+.3f}"]
    parts += [f"{key.split('/')[1].removesuffix('_reward')} {value:+.2f}" for key, value in logs.items()
              if key.startswith("rewards/") and key.endswith("/mean")]
    if "kl" in logs:
        parts.append(f"KL {logs['kl']:.4f}")
    if "completions/mean_length" in logs:
        parts.append(f"length {logs['completions/mean_length']:.0f}")
    if "step_time" in logs:
        parts.append(f"{logs['step_time']:.1f} s")
    return " · ".join(parts)


def _tail(prompt: str, chars: int = 60) -> str:
    """The end of a rendered prompt (the question), without the chat markup around it (which TRL's log
    may hold with its special tokens already removed: "user\n… assistant\n<think>")."""
    for marker in ("<|im_start|>user\n", "user\n"):
        if marker in prompt:
            prompt = prompt.rsplit(marker, 1)[1]
    prompt = prompt.split("<|im_end|>")[0]
    prompt = re.sub(rf"\s*\bassistant\s*(?:{re.escape(THINK_OPEN)})?\s*$", "", prompt)
    prompt = prompt.strip().replace("\n", " ")
    return prompt if len(prompt) <= chars else "…" + prompt[-chars:]


def reward_history(log_history: list[dict]):
    """A table, one row per logged step: the total reward, each reward's mean, KL and completion length."""
    import pandas as pd

    keep = ("reward", "reward_std", "frac_reward_zero_std", "kl", "completions/mean_length",
            "completions/clipped_ratio", "loss")
    rows = []
    for entry in log_history:
        if "step" not in entry or not any(k.startswith("rewards/") for k in entry):
            continue  # the final summary entry has no rewards
        row = {"step": entry["step"], **{k: entry[k] for k in keep if k in entry}}
        row.update({key.split("/")[1]: value for key, value in entry.items()
                    if key.startswith("rewards/") and key.endswith("/mean")})
        rows.append(row)
    return pd.DataFrame(rows).set_index("step") if rows else pd.DataFrame()


def reward_trend(history, column: str = "reward", window: int = 3) -> tuple[float, float]:
    """(mean of the first ``window`` steps, mean of the last ``window``) of a history column."""
    if column not in getattr(history, "columns", ()) or history.empty:
        return float("nan"), float("nan")
    values = history[column].dropna()
    window = max(1, min(window, len(values) // 2 or 1))
    return float(values.iloc[:window].mean()), float(values.iloc[-window:].mean())


# --- before and after -----------------------------------------------------------------------

def generate_completions(model, tokenizer, prompts: list[str], max_new_tokens: int,
                         batch_size: int = 8) -> tuple[list[str], list[list[int]]]:
    """(texts, token ids) of greedy completions of rendered prompts (chat markup included), in batches."""
    from helpers.generation import generate_batch, generating

    texts, token_ids = [], []
    with generating(model, tokenizer):
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False)
            for ids in generate_batch(model, tokenizer, batch, max_new_tokens, do_sample=False):
                token_ids.append(ids)
                texts.append(tokenizer.decode(ids, skip_special_tokens=True))
    return texts, token_ids


def score_policy(model, tokenizer, prompts: list[str], columns: dict[str, list], reward_funcs, weights,
                 max_new_tokens: int, batch_size: int = 8) -> tuple[dict[str, float], list[str]]:
    """(mean of each reward and of the weighted total, the completions) on ``prompts``, greedy."""
    from helpers.rewards import score_completions

    texts, ids = generate_completions(model, tokenizer, prompts, max_new_tokens, batch_size)
    rows = score_completions(texts, reward_funcs, weights, completion_ids=ids, **columns)
    means = {name: sum(r[name] for r in rows) / len(rows) for name in rows[0]} if rows else {}
    return means, texts
