"""The course's GPU paths end to end: `pytest -m gpu tests/test_gpu.py` on a CUDA machine (skipped elsewhere).

unsloth load + LoRA + SFT steps (text and vision-language), GRPO steps, batched evaluation generation and
the demo's adapter switching, each through the course's own code (03's and 06's training is their
notebooks' own recipe cells, run by helpers.notebook.run_recipe as `python -m helpers.train` runs them),
a few steps each.

Models: real checkpoints where present (COURSE_GPU_TEXT_MODEL / COURSE_GPU_VL_MODEL, a folder or a hub id in
the local Hugging Face cache), else random-initialised models of the real Qwen3-1.7B and Qwen3-VL-2B shapes
built here by helpers (in COURSE_RANDOM_DIR, /tmp/course-random by default), with the tokenizer in the folder
COURSE_TOKENIZER (default: the embedded model's). No hub access is needed.

COURSE_GPU_TESTS_ON_CPU=1 runs the same tests on a CPU (full precision, no unsloth), with small models
passed through the two variables above: a check of the tests themselves, not of a GPU.
"""

from __future__ import annotations

import gc
import importlib.util
import math
import os
from pathlib import Path

import pytest
import torch

ON_GPU = torch.cuda.is_available()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not ON_GPU and not os.environ.get("COURSE_GPU_TESTS_ON_CPU"),
                       reason="needs a CUDA GPU: run `pytest -m gpu tests/test_gpu.py` on a GPU machine"),
]
HAS_UNSLOTH = ON_GPU and importlib.util.find_spec("unsloth") is not None
DTYPE = "bfloat16" if ON_GPU else "float32"
OPTIM = "adamw_8bit" if ON_GPU else "adamw_torch"
RANDOM_DIR = Path(os.environ.get("COURSE_RANDOM_DIR", "/tmp/course-random"))
QUESTION = "A 60-year-old has crushing chest pain for 30 minutes. What should be done first?"


# --- models: a real checkpoint where one is present, else the real shape with random weights ----------

def _tokenizer_dir() -> str:
    from helpers.hub import embedded_model_dir

    return os.environ.get("COURSE_TOKENIZER") or str(embedded_model_dir())


def _present(variable: str, hub_id: str) -> str | None:
    """The folder of a real checkpoint: named by ``variable``, or ``hub_id`` in the local hub cache."""
    named = os.environ.get(variable)
    if named and Path(named).is_dir():
        return named
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(named or hub_id, local_files_only=True)
    except Exception:  # not in the cache: build the shape instead
        return None


@pytest.fixture(scope="module")
def text_model() -> str:
    from helpers.architectures import make_random_checkpoint

    real = _present("COURSE_GPU_TEXT_MODEL", "Qwen/Qwen3-1.7B")
    if real:
        return real
    model_id = "Qwen/Qwen3-1.7B"
    return str(make_random_checkpoint(model_id, RANDOM_DIR / model_id, tokenizer_dir=_tokenizer_dir()))


@pytest.fixture(scope="module")
def vl_model() -> str:
    from helpers import vision

    real = _present("COURSE_GPU_VL_MODEL", "Qwen/Qwen3-VL-2B-Instruct")
    if real:
        return real
    model_id = "Qwen/Qwen3-VL-2B-Instruct"
    processor = vision.build_vl_processor("qwen3_vl", max_pixels=vision.REAL_MAX_PIXELS,
                                          tokenizer_dir=_tokenizer_dir())
    return str(vision.make_random_vl_checkpoint(model_id, RANDOM_DIR / model_id, processor=processor))


@pytest.fixture(autouse=True)
def _free_gpu():
    """Each test loads its own model; give its memory back before the next one loads."""
    yield
    gc.collect()
    if ON_GPU:
        torch.cuda.empty_cache()


def _backend() -> str:
    return "unsloth" if HAS_UNSLOTH else "transformers"


def _adapter_weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().float().cpu().clone() for name, p in model.named_parameters() if "lora_" in name}


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> int:
    """How many of the adapter tensors there were before training it changed (TRL may add a "ref" copy)."""
    assert before and before.keys() <= after.keys()
    return sum(not torch.equal(before[name], after[name]) for name in before)


def _losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


# --- text SFT: unsloth load + LoRA + SFTTrainer as in 03 ---------------------------------------------

@pytest.mark.skipif(not HAS_UNSLOTH, reason="unsloth is not installed (or there is no CUDA)")
def test_unsloth_loads_the_text_model_and_takes_its_lora_adapters(text_model):
    from helpers.models import add_lora, count_parameters, load_text_model

    model, _, backend = load_text_model(text_model, backend="unsloth", load_in_4bit=True, dtype="bfloat16",
                                        max_seq_length=1024)
    assert backend == "unsloth"  # no silent fall back to transformers
    model = add_lora(model, r=16, alpha=16, backend=backend)
    trainable, total = count_parameters(model)
    assert 0 < trainable < 0.05 * total


def test_sft_recipe_of_03_trains_the_adapters_and_lowers_the_loss(text_model, tmp_path, monkeypatch):
    from helpers import notebook
    from helpers.models import load_adapter, load_text_model

    # 03's own recipe cells, six steps on one sample repeated: every batch is the same, so the loss has
    # to fall if training works; two held-out questions give a held-out loss every third step.
    monkeypatch.setenv("COURSE_OUTPUTS", str(tmp_path))
    knobs = {"PROFILE": "80gb" if ON_GPU else "cpu", "RUN_NAME": "sft", "MODEL": text_model, "EXAMPLES": 1,
             "HELD_OUT": 2, "MAX_SEQ_LENGTH": 1024, "STEPS": 6, "SAVE_EVERY": 100, "EVAL_EVERY": 3,
             "BATCH_SIZE": 2, "GRAD_ACCUM": 1, "TRACKING": "none", "BACKEND": _backend()}
    seen: dict = {}

    def one_sample_repeated(ns: dict) -> None:
        if "train_examples" in ns and "repeated" not in seen:
            ns["train_examples"], seen["repeated"] = ns["train_examples"][:1] * 16, True
        if hasattr(ns.get("model"), "peft_config") and "trainer" not in ns and "before" not in seen:
            seen["before"] = _adapter_weights(ns["model"])  # the adapters as the LoRA cell made them

    ns = notebook.run_recipe("sft", knobs, after_cell=one_sample_repeated)
    assert ns["backend"] == _backend()
    losses = _losses(ns["trainer"])
    assert len(losses) == 6 and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    held_out = [e["eval_loss"] for e in ns["trainer"].state.log_history if "eval_loss" in e]
    assert len(held_out) == 2 and all(math.isfinite(loss) for loss in held_out)
    assert _changed(seen["before"], _adapter_weights(ns["model"])) > 0
    path = ns["saved"]
    assert (path / "adapter_config.json").is_file() and any(path.glob("adapter_model.*"))
    del ns
    gc.collect()
    base, _, _ = load_text_model(text_model, backend=_backend(), dtype=DTYPE, max_seq_length=1024)
    reloaded = load_adapter(base, path)
    assert any("lora_" in name for name, _ in reloaded.named_parameters())


# A fresh process with transformers alone loads a saved model folder and writes 8 tokens.
FRESH_ANSWER = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, question = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(folder)
device = "cuda" if torch.cuda.is_available() else "cpu"
model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto").to(device)
inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                       return_tensors="pt", return_dict=True).to(model.device)
out = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
print("NEW", out.shape[1] - inputs["input_ids"].shape[1])
"""


def test_full_finetune_recipe_of_03_trains_every_weight_and_the_model_answers_alone(text_model, tmp_path,
                                                                                     monkeypatch):
    import subprocess
    import sys

    from helpers import notebook

    # 03's own cells with FULL_FINETUNE = True (the 80gb profile allows it): every weight trains, the whole
    # model is saved, and a fresh process with no course code loads that folder and answers.
    monkeypatch.setenv("COURSE_OUTPUTS", str(tmp_path))
    knobs = {"PROFILE": "80gb" if ON_GPU else "cpu", "RUN_NAME": "full", "MODEL": text_model, "EXAMPLES": 1,
             "HELD_OUT": 2, "MAX_SEQ_LENGTH": 1024, "STEPS": 6, "SAVE_EVERY": 100, "EVAL_EVERY": 100,
             "BATCH_SIZE": 2, "GRAD_ACCUM": 1, "TRACKING": "none", "FULL_FINETUNE": True,
             "SAVE_MERGED": False}
    seen: dict = {}

    def one_sample_repeated(ns: dict) -> None:
        if "train_examples" in ns and "repeated" not in seen:
            ns["train_examples"], seen["repeated"] = ns["train_examples"][:1] * 16, True
        if "trainable" in ns and "before" not in seen:  # the cell that made every weight trainable has run
            layer = ns["model"].model.layers[0]
            seen["before"] = [w.detach().float().cpu().clone() for w in
                              (layer.mlp.down_proj.weight, layer.self_attn.q_proj.weight)]
            seen["share"] = ns["trainable"] / ns["total"]
        if ON_GPU and "trainer" in ns and "reset" not in seen:
            torch.cuda.reset_peak_memory_stats()
            seen["reset"] = True

    ns = notebook.run_recipe("sft", knobs, after_cell=one_sample_repeated)
    assert ns["backend"] == "transformers" and seen["share"] == 1.0  # full: no unsloth, no adapters
    losses = _losses(ns["trainer"])
    assert len(losses) == 6 and all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0]
    layer = ns["model"].model.layers[0]
    after = [w.detach().float().cpu() for w in (layer.mlp.down_proj.weight, layer.self_attn.q_proj.weight)]
    assert all(not torch.equal(b, a) for b, a in zip(seen["before"], after, strict=True))
    path = ns["saved"]
    assert path.name == "sft-model" and (path / "config.json").is_file() and any(path.glob("*.safetensors"))
    if ON_GPU:
        print(f"full fine-tuning peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    del ns
    gc.collect()
    done = subprocess.run([sys.executable, "-c", FRESH_ANSWER, str(path), QUESTION], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "NEW 8" in done.stdout


# --- vision-language SFT as in 05 -----------------------------------------------------------------

def test_vl_sft_steps_as_05_train_the_adapters_and_the_model_still_captions(vl_model, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from helpers import datasets, training, vision

    model, processor, backend = vision.load_vl_model(vl_model, backend=_backend(), load_in_4bit=False,
                                                     dtype=DTYPE)
    assert backend == _backend()
    model = vision.add_vl_lora(model, r=16, alpha=16, backend=backend, gradient_checkpointing=ON_GPU)
    before = _adapter_weights(model)
    pixels = vision.REAL_MAX_PIXELS if ON_GPU else vision.TINY_MAX_PIXELS
    pairs = datasets.vl_examples(datasets.read_offline_vl_rows("train"), datasets.VL_OFFLINE,
                                 max_pixels=pixels).examples
    args = SFTConfig(  # 05's settings, a few constant-rate steps on one repeated pair
        output_dir=str(tmp_path / "vl-checkpoints"), max_steps=5, per_device_train_batch_size=2,
        gradient_accumulation_steps=1, learning_rate=2e-4, lr_scheduler_type="constant", optim=OPTIM,
        bf16=DTYPE == "bfloat16", gradient_checkpointing=False, remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True}, max_length=None, logging_steps=1, save_strategy="no",
        report_to="none", seed=0, dataloader_pin_memory=ON_GPU,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs[:1] * 10),
                         data_collator=vision.ReportCollator(processor), processing_class=processor)
    training.fp32_adapters_for_fp16(trainer, backend)
    training.train(trainer, settings={"test": "vl"}, knobs=training.VL_KNOBS)  # images: no fingerprint
    losses = _losses(trainer)
    assert len(losses) == 5 and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    assert _changed(before, _adapter_weights(model)) > 0
    image = pairs[0]["images"][0]
    captions = vision.generate_captions(model, processor, [image, image], datasets.VL_INSTRUCTION,
                                        max_new_tokens=8, batch_size=2)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)


# --- GRPO as in 06 -----------------------------------------------------------------------------------

def test_grpo_recipe_of_06_scores_groups_and_moves_the_adapters(text_model, tmp_path, monkeypatch):
    from helpers import notebook

    # 06's own recipe cells: two steps of one question, four answers of 24 tokens each.
    monkeypatch.setenv("COURSE_OUTPUTS", str(tmp_path))
    knobs = {"PROFILE": "80gb" if ON_GPU else "cpu", "RUN_NAME": "grpo", "MODEL": text_model,
             "FROM_SFT": False, "OFFLINE": True, "PROMPTS": 4, "CHECK_PROMPTS": 0, "STEPS": 2,
             "NUM_GENERATIONS": 4, "MAX_COMPLETION_LENGTH": 24, "LEARNING_RATE": 1e-4, "LORA_R": 16,
             "LORA_ALPHA": 16, "SAMPLE_EVERY": 1}
    seen: dict = {}

    def distinct_characters(completions, **kwargs) -> list[float]:
        # A random model earns every rule reward the same 0: this one differs within a group, so the
        # advantages (and the gradient) are not all zero.
        return [len(set(c)) / 50 for c in completions]

    def add_reward_and_watch(ns: dict) -> None:
        if "reward_funcs" in ns and "added" not in seen:  # as a learner's own reward joins the list
            ns["reward_funcs"].append(distinct_characters)
            ns["weights"]["distinct_characters"] = 1.0
            seen["added"] = True
        if "started_from" in ns and "before" not in seen:
            assert "fresh LoRA adapters" in ns["started_from"]
            seen["before"] = _adapter_weights(ns["model"])

    ns = notebook.run_recipe("grpo", knobs, after_cell=add_reward_and_watch)
    trainer = ns["trainer"]
    logged = [e for e in trainer.state.log_history if "reward" in e]
    assert len(logged) == 2 and all(math.isfinite(e["reward"]) for e in logged)
    assert all(e["completions/mean_length"] > 0 for e in logged)
    assert ns["watcher"].rows and all(row["completion"] is not None for row in ns["watcher"].rows)
    assert _changed(seen["before"], _adapter_weights(ns["model"])) > 0
    assert (ns["saved"] / "adapter_config.json").is_file()


# --- evaluation generation as in 02 and 04 -----------------------------------------------------------

def test_batched_greedy_generation_gives_the_one_at_a_time_answers(text_model):
    from conftest import load_benchmark

    from helpers.generation import generate_replies
    from helpers.models import load_text_model

    prompts = load_benchmark("generation").exam_prompts(6)
    # 32-bit, TF32 off: batching then changes no rounding that could flip a greedy choice (bf16 can)
    tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False
    try:
        model, tokenizer, _ = load_text_model(text_model, backend="transformers", dtype="float32")
        batched = generate_replies(model, tokenizer, prompts, max_new_tokens=24, batch_size=6, thinking=False)
        single = generate_replies(model, tokenizer, prompts, max_new_tokens=24, batch_size=1, thinking=False)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    assert [r.text for r in batched] == [r.text for r in single]
    assert [r.new_tokens for r in batched] == [r.new_tokens for r in single]
    assert all(r.text and r.new_tokens > 0 for r in batched)


def test_the_backend_that_loaded_the_model_generates_a_batch(text_model):
    from conftest import load_benchmark

    from helpers.generation import generate_replies
    from helpers.models import load_text_model

    prompts = load_benchmark("generation").exam_prompts(8)
    model, tokenizer, _ = load_text_model(text_model, backend=_backend(), dtype=DTYPE, max_seq_length=1024)
    replies = generate_replies(model, tokenizer, prompts, max_new_tokens=24, batch_size=8, thinking=False)
    assert len(replies) == 8 and all(r.text and 0 < r.new_tokens <= 24 for r in replies)


# --- the demo of 07: one base model, adapters switched per answer ------------------------------------

def _noise_adapter(model, tokenizer, path: Path, seed: int) -> Path:
    """The model's LoRA adapters with noise in their B matrices (distinct per seed), saved to ``path``."""
    from helpers.models import save_adapter

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                noise = torch.randn(parameter.shape, generator=generator) * 0.05
                parameter.copy_(noise.to(parameter.device, parameter.dtype))
    return save_adapter(model, tokenizer, path)


def _next_token_logits(model, tokenizer, label: str | None):
    """The model's logits for the first answer token, answering as ``label`` (None: no switching)."""
    from contextlib import nullcontext

    from helpers import demo
    from helpers.generation import chat_prompt

    inputs = tokenizer(chat_prompt(tokenizer, QUESTION), return_tensors="pt").to(model.device)
    with torch.no_grad(), (demo.use_model(model, label) if label else nullcontext()):
        return model(**inputs).logits[0, -1].float()


def test_the_demo_switches_between_base_sft_and_grpo_adapters(text_model, tmp_path):
    from helpers import demo
    from helpers.grpo import GRPO_ADAPTER, SFT_ADAPTER
    from helpers.models import add_lora, load_text_model

    # Two adapters with distinct weights, written where 03 and 06 write theirs.
    maker, tokenizer, _ = load_text_model(text_model, backend="transformers", dtype=DTYPE)
    maker = add_lora(maker, r=16, alpha=16, gradient_checkpointing=False)
    _noise_adapter(maker, tokenizer, tmp_path / SFT_ADAPTER, seed=1)
    _noise_adapter(maker, tokenizer, tmp_path / GRPO_ADAPTER, seed=2)
    del maker
    gc.collect()
    adapters = demo.find_adapters(tmp_path)
    assert set(adapters) == {"sft", "grpo"}

    # As 07 runs it: the base model loaded once, then every adapter beside it.
    model, tokenizer, _ = load_text_model(text_model, backend=_backend(), dtype=DTYPE, max_seq_length=1024)
    plain = _next_token_logits(model, tokenizer, None)
    model = demo.attach_adapters(model, adapters)
    logits = {label: _next_token_logits(model, tokenizer, label) for label in ("base", "sft", "grpo")}
    # "base" turns every adapter off: the plain model's logits, up to the rounding of the adapter-aware
    # kernels (random weights make near-ties, so greedy text may part after a few tokens: compare logits)
    rounding = (logits["base"] - plain).abs().max()
    assert rounding < 0.1 * (logits["sft"] - logits["base"]).abs().max()
    assert rounding < 0.1 * (logits["grpo"] - logits["sft"]).abs().max()
    answers = demo.ask(model, tokenizer, QUESTION, ["base", "sft", "grpo"], max_new_tokens=16)
    text = {a.model: (a.think, a.answer) for a in answers}
    assert all(a.new_tokens > 0 for a in answers)
    assert text["sft"] != text["base"] and text["grpo"] != text["sft"] and text["grpo"] != text["base"]
    [again] = demo.ask(model, tokenizer, QUESTION, ["sft"], max_new_tokens=16)
    assert (again.think, again.answer) == text["sft"]  # switching back and forth changes nothing
