"""The LoRA cells of 03 and 05 make the adapters that `add_lora` and `add_vl_lora` make.

The notebooks write the LoRA call out for the learner; the helpers make the same adapters for 06's policy,
the benchmarks and the GPU tests. These tests fail when the two drift apart.
"""

from __future__ import annotations

import pytest

from helpers import notebook, vision
from helpers.models import add_lora, count_parameters, load_text_model


def _adapter(model) -> dict:
    config = model.peft_config["default"]
    targets = config.target_modules
    return {"r": config.r, "alpha": config.lora_alpha, "dropout": config.lora_dropout, "bias": config.bias,
            "targets": targets if isinstance(targets, str) else sorted(targets),
            "trainable": count_parameters(model)[0],
            "adapted": sorted(n for n, _ in model.named_modules() if n.endswith("lora_A"))}


def test_the_lora_cell_of_03_makes_the_adapters_of_add_lora(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_OUTPUTS", str(tmp_path))
    knobs = {"PROFILE": "cpu", "LORA_R": 8, "LORA_ALPHA": 16, "LORA_TARGETS": ("q_proj", "v_proj")}
    model, _, _ = load_text_model("embedded")
    cell = notebook.run_recipe("sft", knobs, tag=("plan", "lora"),
                               namespace={"model": model, "backend": "transformers"})
    helper, _, _ = load_text_model("embedded")
    helper = add_lora(helper, r=8, alpha=16, targets=("q_proj", "v_proj"), gradient_checkpointing=False)
    assert _adapter(cell["model"]) == _adapter(helper)
    assert cell["trainable"] == count_parameters(helper)[0] > 0


@pytest.mark.parametrize("switches", [{}, {"FINETUNE_VISION_LAYERS": False}, {"FINETUNE_MLP_MODULES": False}])
def test_the_lora_cell_of_05_makes_the_adapters_of_add_vl_lora(tmp_path, monkeypatch, switches):
    monkeypatch.setenv("COURSE_OUTPUTS", str(tmp_path))
    knobs = {"PROFILE": "cpu", "LORA_R": 4, "LORA_ALPHA": 8, **switches}
    model, _, _ = vision.load_vl_model("cpu")
    # the VL notebook's first cells load data and a model; its LoRA cell needs only the model and knobs
    cell = notebook.run_recipe("vl", knobs, tag="lora",
                               namespace={"model": model, "backend": "transformers", "on_gpu": False})
    helper, _, _ = vision.load_vl_model("cpu")
    helper = vision.add_vl_lora(helper, r=4, alpha=8, gradient_checkpointing=False,
                                vision_layers=switches.get("FINETUNE_VISION_LAYERS", True),
                                mlp=switches.get("FINETUNE_MLP_MODULES", True))
    assert _adapter(cell["model"]) == _adapter(helper)
