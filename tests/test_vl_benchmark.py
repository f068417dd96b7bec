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


def test_the_generation_timing_writes_exactly_the_tokens_asked_in_each_way(monkeypatch):
    bench = load_benchmark("vl_step")
    folder = str(vision.make_tiny_vl_model())
    written = []
    real = vision.generate_captions

    def counting(*args, **kwargs):  # what each timed call asked for and wrote
        captions = real(*args, **kwargs)
        written.append((kwargs["max_new_tokens"], kwargs.get("disable_compile", False), len(captions)))
        return captions

    monkeypatch.setattr(vision, "generate_captions", counting)
    result = bench.measure_generation(folder, "transformers", "t4", 128 * 128, new_tokens=4,
                                      ways=["course", "disable-compile"])
    assert result["backend"] == "transformers" and result["images"] == 2 and result["new_tokens"] == 4
    assert [w["way"] for w in result["ways"]] == ["course", "disable-compile"]
    # per way: prefill, N tokens, prefill again, N tokens again; the second way passes disable_compile
    assert written == [(1, False, 2), (4, False, 2), (1, False, 2), (4, False, 2),
                       (1, True, 2), (4, True, 2), (1, True, 2), (4, True, 2)]
    for way in result["ways"]:
        assert way["first_prefill_s"] > 0 and way["tokens_s"] > 0 and way["prefill_s"] > 0
        # nothing compiles on the transformers path; the count is there to show unsloth's recompiling
        assert way["graphs_compiled_first"] == way["graphs_compiled_repeat"] == 0
    # the way that turns unsloth's compiled modules off does it through the measuring process's environment
    assert bench.GENERATE_WAYS["no-compile"][:2] == ({}, {"UNSLOTH_COMPILE_DISABLE": "1"})


def test_the_force_eager_way_compiles_nothing_that_torch_compile_wrapped(monkeypatch):
    """A layer wrapped in torch.compile, as unsloth wraps parts of the model: the course's way builds
    graphs for it, the force-eager way none, and both write the same caption."""
    bench = load_benchmark("vl_step")
    real = vision.load_vl_model

    def with_a_compiled_layer(*args, **kwargs):
        loaded = real(*args, **kwargs)
        layer = loaded[0].model.language_model.layers[0]
        layer.forward = torch.compile(layer.forward, backend="eager", dynamic=True)
        return loaded

    monkeypatch.setattr(vision, "load_vl_model", with_a_compiled_layer)
    torch._dynamo.reset()
    result = bench.measure_generation(str(vision.make_tiny_vl_model()), "transformers", "t4", 128 * 128,
                                      new_tokens=4, ways=["course", "force-eager"])
    torch._dynamo.reset()
    course, eager = result["ways"]
    assert course["graphs_compiled_first"] > 0
    assert eager["graphs_compiled_first"] == eager["graphs_compiled_repeat"] == 0
    assert course["first_caption"] == eager["first_caption"]


def test_generate_captions_passes_generate_arguments_on_to_generate(monkeypatch):
    from helpers import datasets, generation

    model, processor, _ = vision.load_vl_model(str(vision.make_tiny_vl_model()), dtype="float32")
    pairs = datasets.vl_examples(datasets.read_offline_vl_rows("test"), datasets.VL_OFFLINE,
                                 max_pixels=128 * 128).examples
    seen = []
    real = generation.generate_batch

    def recording(model, tokenizer, inputs, max_new_tokens, **kwargs):
        seen.append(kwargs)
        return real(model, tokenizer, inputs, max_new_tokens, **kwargs)

    monkeypatch.setattr(generation, "generate_batch", recording)
    vision.generate_captions(model, processor, [pairs[0]["images"][0]], "Describe.", max_new_tokens=5,
                             min_new_tokens=5, disable_compile=True)
    assert seen and seen[0]["min_new_tokens"] == 5 and seen[0]["disable_compile"] is True
    assert seen[0]["do_sample"] is False  # the course's greedy default stays


def test_a_step_is_split_into_its_parts_and_each_training_way_is_known():
    bench = load_benchmark("vl_step")
    folder = str(vision.make_tiny_vl_model())
    result = bench.measure(folder, "transformers", "t4", steps=2, max_pixels=128 * 128,
                           way="no-checkpointing")
    assert result["way"] == "no-checkpointing" and len(result["step_seconds"]) == 2
    shares = result["forward_share"] + result["backward_share"] + result["optimizer_share"]
    assert shares == pytest.approx(1.0, abs=1e-6)
    assert min(result["forward_share"], result["backward_share"]) > 0
    # the encoder alone, without gradients, takes part of one forward pass
    assert 0 < result["vision_forward_seconds"] < result["seconds_per_step"] * result["forward_share"]
    assert result["collate_seconds"] > 0
    assert set(bench.TRAIN_WAYS) >= {"course", "no-checkpointing", "no-compile"}
    assert bench.TRAIN_WAYS["no-compile"][1] == {"UNSLOTH_COMPILE_DISABLE": "1"}
    # unsloth reads this when it adds the adapters: the same switch for training and for generation
    assert bench.TRAIN_WAYS["no-block-compile"][1] == bench.GENERATE_WAYS["no-block-compile"][1] == {
        "UNSLOTH_BLOCK_COMPILE": "0"}


def test_the_course_way_trains_as_the_profile_says():
    """05's way follows the profile: t4 keeps every activation (measured faster, fits), 24gb recomputes."""
    bench = load_benchmark("vl_step")
    assert bench.way_checkpointing("course", "t4") is False
    assert bench.way_checkpointing("course", "24gb") is True
    assert bench.way_checkpointing("no-compile", "t4") is False
    assert bench.way_checkpointing("checkpointing", "t4") is True


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # without a GPU torch profiles the CPU side
def test_the_profile_of_a_call_names_its_operators_and_counts_only_kernel_time():
    bench = load_benchmark("vl_step")
    result = bench._profile_generation(
        lambda: [torch.ones(300, 300) @ torch.ones(300, 300) for _ in range(5)])
    assert result["profiled_s"] > 0
    if not torch.cuda.is_available():  # CPU work launches no kernels: the GPU was never busy
        assert result["gpu_busy_share"] == 0.0
    names = {name: calls for name, _, calls in result["top_cpu_ops"]}
    assert names.get("aten::mm") == 5  # the five matrix products, each counted once
