"""What each way of fine-tuning costs in GPU memory: counted from a model's shapes, and measured.

03 prints the table before it trains, so a learner sees why a T4 trains the 8B model only in 4-bit.
The counts cover weights, gradients and optimizer state; activations come on top.
"""

from __future__ import annotations

from dataclasses import dataclass

from helpers.errors import CourseError

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
# moments: 32-bit (2 + 2 + 8 = 12), or 8-bit as bitsandbytes' AdamW keeps them (2 + 2 + 2 = 6), which the
# course uses on a GPU (``optimizer_name``). A trainable LoRA parameter costs the same. Frozen weights
# cost 2 bytes in 16-bit, about 0.56 in 4-bit NF4 (4 bits plus the block scales).
_FROZEN_16, _FROZEN_4 = 2.0, 0.56


def _trained_bytes(optimizer_bits: int) -> float:
    if optimizer_bits not in (8, 32):
        raise CourseError(f"optimizer_bits is 8 or 32 (the moments' precision), not {optimizer_bits}.")
    return 2 + 2 + 2 * optimizer_bits / 8


def training_memory_gb(counts: ParameterCounts, method: str, r: int, optimizer_bits: int = 32) -> float:
    """GB of weights, gradients and optimizer state to train with ``method`` (activations come on top)."""
    trained = _trained_bytes(optimizer_bits)
    adapters = counts.lora_per_rank * r * trained
    if method == "full":
        total = counts.total * trained
    elif method == "lora-16bit":
        total = counts.total * _FROZEN_16 + adapters
    elif method == "qlora-4bit":
        total = counts.linear * _FROZEN_4 + counts.other * _FROZEN_16 + adapters
    else:
        raise CourseError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")
    return total / 1024**3


def memory_table(models: dict[str, ParameterCounts], r: int, optimizer_bits: int = 32) -> list[dict]:
    """One row per model: its size and the GB each method needs before activations."""
    return [{"model": name, "parameters (B)": round(c.total / 1e9, 2),
             **{method: round(training_memory_gb(c, method, r, optimizer_bits), 1) for method in METHODS}}
            for name, c in models.items()]


# Peak GPU memory measured on an H200 with 03's 80gb settings (docs/benchmarks.md, section 7), GiB.
MEASURED_PEAK_GIB = {("Qwen/Qwen3-1.7B", "full"): 13.5, ("Qwen/Qwen3-1.7B", "lora-16bit"): 4.9,
                     ("Qwen/Qwen3-8B", "lora-16bit"): 18.6}
