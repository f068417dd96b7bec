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


def test_real_lengths_spread_over_300_to_1000_tokens_and_repeat_with_the_seed():
    bench = load_benchmark("sft_step")
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    rows = bench.sample_rows(tokenizer, "real", seq=2048)
    lengths = [len(tokenizer(r["prompt"] + r["completion"], add_special_tokens=False)["input_ids"])
               for r in rows]
    assert 280 <= min(lengths) and max(lengths) <= 1000
    assert max(lengths) - min(lengths) > 500  # spread, as real medical-o1 reasoning is
    assert [r["completion"] for r in bench.sample_rows(tokenizer, "real", seq=2048)[:5]] == \
        [r["completion"] for r in rows[:5]]
    assert all(n <= 512 for n in (len(tokenizer(r["prompt"] + r["completion"])["input_ids"])
                                  for r in bench.sample_rows(tokenizer, "real", seq=512)))


def test_the_packing_check_tells_rows_kept_apart_from_rows_that_mix(tiny_qwen3):
    """Packed with position ids, SDPA on a CPU still lets each row attend to the rows before it: the check
    must see that (tail shift), and see none where each row is scored in its own sequence."""
    bench = load_benchmark("sft_step")
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3, attn_implementation="sdpa")
    rows = [[(7 * i + j) % 1000 + 10 for j in range(n)] for i, n in enumerate((40, 90, 60, 120))]
    result = bench.packed_losses(model, rows)
    assert result["row_tokens"] == [40, 90, 60, 120]
    assert result["tail_shift"] > 1e-4 and result["packed_gap"] > 0  # rows 2-4 saw row 1
    assert result["concatenated_gap"] > 0

    class Separate(torch.nn.Module):
        """Scores each packed row in its own forward pass: rows kept apart by construction."""

        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, labels, position_ids=None):
            if position_ids is None:
                return self.inner(input_ids=input_ids, labels=labels)
            starts = (position_ids[0] == 0).nonzero().flatten().tolist() + [input_ids.shape[1]]
            total, count = 0.0, 0
            for a, b in zip(starts, starts[1:], strict=False):
                n = int((labels[0, a + 1:b] != -100).sum())
                total += float(self.inner(input_ids=input_ids[:, a:b], labels=labels[:, a:b]).loss) * n
                count += n
            return type("Out", (), {"loss": torch.tensor(total / count)})()

    apart = bench.packed_losses(Separate(model), rows)
    assert apart["tail_shift"] < 1e-5 and apart["packed_gap"] < 1e-5 < apart["concatenated_gap"]
    assert apart["alone"] == pytest.approx(result["alone"])
