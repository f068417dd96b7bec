"""What fine-tuning costs in memory: the estimate from a model's shapes, and 03's refusal before loading."""

import pytest

from helpers import CourseError, memory
from helpers.models import LORA_TARGETS


def test_memory_table_orders_the_methods():
    counts = memory.qwen3_parameter_counts("Qwen/Qwen3-1.7B", LORA_TARGETS)
    assert 1.6e9 < counts.total < 2.1e9 and counts.other > 0.3e9  # the 151,936-token embedding stays 16-bit
    [row] = memory.memory_table({"1.7B": counts}, r=16)
    assert row["full"] > 5 * row["lora-16bit"] > 5 * row["qlora-4bit"] > 0
    assert abs(row["full"] - counts.total * 12 / 1024**3) < 0.1
    [eight_bit] = memory.memory_table({"1.7B": counts}, r=16, optimizer_bits=8)
    assert abs(eight_bit["full"] - counts.total * 6 / 1024**3) < 0.1  # 8-bit moments: half of 12 bytes
    assert eight_bit["lora-16bit"] < row["lora-16bit"] and eight_bit["qlora-4bit"] < row["qlora-4bit"]
    with pytest.raises(CourseError, match="optimizer_bits is 8 or 32"):
        memory.memory_table({"1.7B": counts}, r=16, optimizer_bits=4)
    with pytest.raises(CourseError, match="Unknown method"):
        memory.training_memory_gb(counts, "galore", 16)


def test_a_measured_peak_is_used_as_it_is_and_other_sizes_are_scaled_like_the_measured_one():
    measured = memory.MEASURED_PEAK_GIB[("Qwen/Qwen3-1.7B", "full")]
    assert memory.full_finetune_peak_gib("Qwen/Qwen3-1.7B") == measured
    four_b = memory.full_finetune_peak_gib("Qwen/Qwen3-4B")
    counts = memory.qwen3_parameter_counts("Qwen/Qwen3-4B", LORA_TARGETS)
    states = memory.training_memory_gb(counts, "full", 16, optimizer_bits=8)
    assert states < four_b < 2 * states  # the states, plus activations in the measured proportion
    assert memory.full_finetune_peak_gib("org/some-other-model") is None  # no shape known: no guess


def test_full_finetuning_that_does_not_fit_is_refused_with_what_fits():
    need = memory.full_finetune_peak_gib("Qwen/Qwen3-8B")
    assert memory.full_finetune_refusal("Qwen/Qwen3-8B", need + 1) is None
    sentence = memory.full_finetune_refusal("Qwen/Qwen3-8B", 22.0)  # a 24 GB card
    assert sentence.startswith("Full fine-tuning of Qwen/Qwen3-8B needs about")
    assert "MODEL = 'Qwen/Qwen3-1.7B' trains in full here" in sentence and "FULL_FINETUNE = False" in sentence
    nothing_fits = memory.full_finetune_refusal("Qwen/Qwen3-1.7B", 8.0)
    assert "trains in full here" not in nothing_fits and "FULL_FINETUNE = False" in nothing_fits
    assert memory.full_finetune_refusal("org/some-other-model", 1.0) is None


def test_the_peaks_03_prints_are_the_ones_docs_benchmarks_records():
    from pathlib import Path

    docs = (Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    section = docs.split("### 7. Full fine-tuning against 16-bit LoRA", 1)[1].split("\n### ", 1)[0]
    methods = {"full": "full", "16-bit LoRA r=64": "lora-16bit"}
    recorded = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 5 and cells[1] in methods:
            recorded[(f"Qwen/{cells[0]}", methods[cells[1]])] = float(cells[4])
    assert recorded == memory.MEASURED_PEAK_GIB
