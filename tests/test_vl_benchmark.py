"""The parts of benchmarks/vl_step.py that need no GPU: the real Qwen3-VL shapes and one measurement."""

import math

import pytest
import torch
from conftest import load_benchmark

from helpers import vision


@pytest.mark.parametrize(("model_id", "billions"), [("Qwen/Qwen3-VL-2B-Instruct", 2.13),
                                                    ("Qwen/Qwen3-VL-4B-Instruct", 4.44)])
def test_the_published_shapes_have_the_published_sizes(model_id, billions):
    from transformers import AutoModelForImageTextToText

    processor = vision.build_vl_processor("qwen3_vl", max_pixels=vision.REAL_MAX_PIXELS)
    config = vision.vl_config("qwen3_vl", vision.QWEN3_VL_SHAPES[model_id], processor)
    with torch.device("meta"):  # shapes only: no memory, no time
        model = AutoModelForImageTextToText.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    assert total == pytest.approx(billions * 1e9, rel=0.02)
    assert config.vision_config.patch_size == 16 and config.text_config.vocab_size == 151936
    tokenizer = processor.tokenizer
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>") < 151936


def test_one_measurement_runs_on_the_cpu_with_the_tiny_model():
    bench = load_benchmark("vl_step")
    folder = str(vision.make_tiny_vl_model())
    result = bench.measure(folder, "transformers", "t4", steps=1, max_pixels=128 * 128)
    assert result["backend"] == result["requested"] == "transformers"
    # a t4 batch: two images and their reports
    assert result["tokens_per_step"] > 2 * result["image_tokens_per_image"] > 0
    assert result["tokens_per_s"] > 0 and result["peak_gb"] is None
    assert math.isfinite(result["first_loss"]) and math.isfinite(result["last_loss"])
    assert 0 < result["trainable"] < result["total"]
