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
                     ("Qwen/Qwen3-8B", "full"): 53.8, ("Qwen/Qwen3-8B", "lora-16bit"): 18.6}


def full_finetune_peak_gib(model_id: str) -> float | None:
    """Peak GiB to fully fine-tune a Qwen3 size as 03 does on a GPU (8-bit moments): the H200 measurement
    where there is one, else the estimate scaled as the measured 1.7B peak is to its estimate. None for a
    model whose shape the course does not know."""
    from helpers.architectures import QWEN3_SHAPES
    from helpers.models import LORA_TARGETS

    if (model_id, "full") in MEASURED_PEAK_GIB:
        return MEASURED_PEAK_GIB[(model_id, "full")]
    if model_id not in QWEN3_SHAPES:
        return None
    reference = "Qwen/Qwen3-1.7B"  # activations and allocator slack on top of the states, as measured
    scale = MEASURED_PEAK_GIB[(reference, "full")] / training_memory_gb(
        qwen3_parameter_counts(reference, LORA_TARGETS), "full", 16, optimizer_bits=8)
    counts = qwen3_parameter_counts(model_id, LORA_TARGETS)
    return scale * training_memory_gb(counts, "full", 16, optimizer_bits=8)


def full_finetune_refusal(model_id: str, gpu_gib: float) -> str | None:
    """None when fully fine-tuning ``model_id`` fits a GPU of ``gpu_gib``; else one sentence saying
    what does fit (a smaller size in full, or LoRA on this one)."""
    from helpers.architectures import QWEN3_SHAPES

    need = full_finetune_peak_gib(model_id)
    if need is None or need <= gpu_gib:
        return None
    peaks = {name: full_finetune_peak_gib(name) for name in QWEN3_SHAPES}  # each counted once
    fitting = {name: peak for name, peak in peaks.items() if peak is not None and peak <= gpu_gib}
    largest = max(fitting, key=fitting.get, default=None)
    smaller = f"MODEL = {largest!r} trains in full here, or " if largest else ""
    return (f"Full fine-tuning of {model_id} needs about {need:.0f} GiB, more than this GPU's "
            f"{gpu_gib:.0f} GiB: {smaller}keep this model with FULL_FINETUNE = False (LoRA).")
