"""A stand-in for 03's SFT adapter: LoRA on the embedded model with small random weights.

A fresh LoRA adapter changes nothing (its B matrices start at zero), so the stand-in gets seeded
noise instead: the model answers differently, which exercises every before/after path of 04.
Run as a script to put one in a run dir: ``python tests/adapters.py outputs/cpu/sft-adapter``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_test_adapter(path: Path, seed: int = 0, scale: float = 0.02) -> Path:
    """Save a LoRA adapter with random (not zero) B matrices for the embedded model at ``path``."""
    import torch

    from helpers.models import add_lora, load_text_model, save_adapter

    model, tokenizer = load_text_model("embedded")
    model = add_lora(model, r=8, alpha=16, gradient_checkpointing=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return save_adapter(model, tokenizer, path)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(make_test_adapter(Path(sys.argv[1])))
