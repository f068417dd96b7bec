"""benchmarks/generation.py on the cpu profile's model: it measures, and batching changes no answer."""

from conftest import load_benchmark

from helpers.hub import embedded_model_dir


def test_the_prompts_are_the_course_exam_questions_in_both_languages():
    prompts = load_benchmark("generation").exam_prompts(6)
    assert len(prompts) == 6 and len(set(prompts)) == 6
    assert sum(any("\u4e00" <= ch <= "\u9fff" for ch in p) for p in prompts) == 3  # zh and en alternate


def test_batched_and_one_at_a_time_give_the_same_greedy_answers():
    bench = load_benchmark("generation")
    result = bench.measure(str(embedded_model_dir()), bench.exam_prompts(4), batch=4, max_new_tokens=8)
    assert result["same_answers"] == 1.0  # left padding and the attention mask keep rows apart
    assert result["batched_tokens"] == result["single_tokens"] > 0
    assert result["batched_tokens_per_s"] > 0 and result["single_tokens_per_s"] > 0
    assert result["speedup"] == round(result["batched_tokens_per_s"] / result["single_tokens_per_s"], 2)
