"""benchmarks/sft_step.py, checked on the CPU with a tiny Qwen3 (the GPU run measures the real shape)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_benchmark
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

from helpers.hub import embedded_model_dir

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "sft_step.py"


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                         max_position_embeddings=1024, tie_word_embeddings=True)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-qwen3")
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_the_plans_follow_the_profiles():
    bench = load_benchmark("sft_step")
    assert bench.setting_plan("t4") == dict(full=False, load_in_4bit=True, dtype="float16", seq=2048, r=16,
                                            alpha=16, batch=2, accum=4)
    assert bench.setting_plan("80gb-full")["full"] and not bench.setting_plan("80gb-full")["load_in_4bit"]


def test_one_measurement_runs_the_notebooks_trainer(tiny_qwen3):
    result = load_benchmark("sft_step").measure(str(tiny_qwen3), "transformers", "24gb", steps=2, warmup=1,
                                   padding_free=None)
    assert result["backend"] == "transformers" and result["padding_free"] is False
    assert result["tokens_per_s"] > 0 and 0 <= result["padding_share"] < 1
    assert result["examples_per_step"] == 16 and result["trainable"] < result["total"]
    assert result["first_loss"] > 0 and result["last_loss"] > 0


def test_padding_free_batches_carry_no_padding(tiny_qwen3):
    result = load_benchmark("sft_step").measure(str(tiny_qwen3), "transformers", "t4", steps=1, warmup=1,
                                   padding_free=True)
    assert result["padding_free"] is True and result["padding_share"] == 0


def test_the_whole_script_runs_each_measurement_in_its_own_process(tiny_qwen3, tmp_path):
    out = tmp_path / "sft.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--folder", str(tiny_qwen3),
                           "--settings", "t4,80gb-full", "--steps", "1", "--warmup", "1",
                           "--budget", "1200", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    # On a CPU "unsloth" falls back to transformers (and says so); full fine-tuning runs once.
    assert [(r["setting"], r["backend"]) for r in results] == [
        ("t4", "transformers"), ("t4", "transformers"), ("80gb-full", "transformers")]
    assert all("error" not in r for r in results)
    assert "tokens/s" in done.stdout and "80gb-full" in done.stdout
