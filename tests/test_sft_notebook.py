"""03_sft_llm.ipynb in the cpu profile: the embedded model learns the think format within the run."""

from pathlib import Path

import pytest

pytestmark = pytest.mark.notebooks


def test_sft_teaches_the_think_format_on_held_out_questions(cpu_course):
    assert (cpu_course.run / "metrics" / "03_sft_llm.json").is_file(), cpu_course.log
    m = cpu_course.metrics("03_sft_llm")
    # The learning signal, measured on questions kept out of training, with the same greedy decoding.
    assert m["think_format_after"] >= 0.8
    assert m["think_format_after"] > m["think_format_before"]
    assert m["loss_last"] < m["loss_first"]
    assert m["held_out"] >= 12 and m["train_examples"] >= 60 and m["dropped_overlong"] == 0


def test_sft_leaves_the_adapter_where_04_and_06_look_and_its_checkpoints(cpu_course):
    run = cpu_course.run
    m = cpu_course.metrics("03_sft_llm")
    assert (run / "sft-adapter" / "adapter_config.json").is_file()
    assert Path(m["adapter"]).resolve() == (run / "sft-adapter").resolve()  # relative where the run was
    assert list((run / "sft-checkpoints").glob("checkpoint-*"))  # what a rerun resumes from
