"""Evaluation generation speed: the course's batched generation against one prompt at a time.

02 and 04 answer every exam question with `generate_replies`, several prompts per `generate` call
with left padding. This measures what batching buys: new tokens per second over the course's own
exam prompts, batched and one at a time, with the same model in the same process, greedy both ways,
and the share of answers that come out identical (batching must not change what is generated).
Where vLLM is installed (a CUDA machine) it is measured too.

    python benchmarks/generation.py --model Qwen/Qwen3-1.7B --random --batch 16 --out gen.json
    python benchmarks/generation.py --embedded --prompts 8 --batch 8 --max-new-tokens 16   # any CPU

`--random` writes a checkpoint with the published Qwen3 layer sizes and random weights (speed does
not depend on the values; random weights never stop early, so every answer runs to the limit).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import report  # noqa: E402  (after the path insert)


def exam_prompts(n: int) -> list[str]:
    """``n`` exam questions from the course's offline samples, as 02 asks them (zh and en alternating)."""
    from helpers import datasets

    zh, _ = datasets.load_eval_set("cmb-exam", offline=True)
    en, _ = datasets.load_eval_set("medqa", offline=True)
    mixed = [item for pair in zip(zh, en, strict=False) for item in pair]
    return [datasets.mcq_prompt(item) for item in mixed[:n]]


def timed(fn) -> tuple[list, float]:
    """``fn()`` and the seconds it took (after the GPU finished, where there is one)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


def measure(folder: str, prompts: list[str], *, batch: int, max_new_tokens: int,
            dtype: str | None = None, backend: str = "auto") -> dict:
    """Tokens/s of batched and of one-at-a-time generation on ``prompts``, and how often they agree."""
    from helpers.generation import generate_replies
    from helpers.models import load_text_model

    model, tokenizer, loaded_with = load_text_model(folder, dtype=dtype, backend=backend)

    def answers(batch_size: int) -> list:
        return generate_replies(model, tokenizer, prompts, batch_size=batch_size,
                                max_new_tokens=max_new_tokens, thinking=False)

    generate_replies(model, tokenizer, prompts[:2], batch_size=2, max_new_tokens=4)  # warm-up: kernels
    batched, batched_s = timed(lambda: answers(batch))
    single, single_s = timed(lambda: answers(1))
    same = sum(a.text == b.text for a, b in zip(batched, single, strict=True)) / len(prompts)
    result = {"model": folder, "backend": loaded_with, "device": str(model.device),
              "prompts": len(prompts), "batch": batch, "max_new_tokens": max_new_tokens, "same_answers": same,
              "batched_tokens": sum(r.new_tokens for r in batched),
              "single_tokens": sum(r.new_tokens for r in single),
              "batched_s": round(batched_s, 3), "single_s": round(single_s, 3)}
    result["batched_tokens_per_s"] = round(result["batched_tokens"] / batched_s, 1)
    result["single_tokens_per_s"] = round(result["single_tokens"] / single_s, 1)
    result["speedup"] = round(result["batched_tokens_per_s"] / result["single_tokens_per_s"], 2)
    return result


def measure_vllm(folder: str, prompts: list[str], *, max_new_tokens: int, profile: str) -> dict | None:
    """Tokens/s of vLLM on the same prompts, or None where vLLM is not installed (or no CUDA)."""
    from helpers import generation
    from helpers.profiles import get_profile

    if not generation.vllm_installed():
        return None
    engine = generation.load_vllm(get_profile(profile, text_model=folder))
    tokenizer = engine.get_tokenizer()
    replies, seconds = timed(lambda: generation.generate_replies(
        engine, tokenizer, prompts, max_new_tokens=max_new_tokens, thinking=False))
    tokens = sum(r.new_tokens for r in replies)
    return {"vllm_tokens": tokens, "vllm_s": round(seconds, 3),
            "vllm_tokens_per_s": round(tokens / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen/Qwen3-1.7B", help="a hub id or a local folder")
    parser.add_argument("--random", action="store_true", help="random weights of the model's published shape")
    parser.add_argument("--embedded", action="store_true", help="the cpu profile's model (no GPU needed)")
    parser.add_argument("--tokenizer", help="tokenizer folder for --random (default: the embedded model's)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16, help="prompts per generate call, as eval_batch_size")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--dtype", default=None, help="bfloat16, float16 or float32 (default: the backend's)")
    parser.add_argument("--backend", default="auto", help="auto, unsloth or transformers")
    parser.add_argument("--vllm-profile", default="80gb", help="the profile whose vLLM settings to use")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--report", help="write generation.json/.md/.png into this folder")
    args = parser.parse_args()

    folder, name = args.model, args.model + (" (random weights)" if args.random else "")
    if args.embedded:
        from helpers.hub import embedded_model_dir

        folder, name = str(embedded_model_dir()), "SmolLM2-135M-Instruct (embedded)"
    elif args.random:
        from helpers.architectures import make_random_checkpoint

        folder = str(make_random_checkpoint(args.model, Path("/tmp/course-random") / args.model,
                                            tokenizer_dir=args.tokenizer))
    prompts = exam_prompts(args.prompts)
    result = measure(folder, prompts, batch=args.batch, max_new_tokens=args.max_new_tokens, dtype=args.dtype,
                     backend=args.backend)
    result |= measure_vllm(folder, prompts, max_new_tokens=args.max_new_tokens,
                           profile=args.vllm_profile) or {}
    result["name"] = name
    print(render({"rows": [result]}, None))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    if args.report:
        report.write_report(args.report, "generation", [result])


def render(result: dict, png: Path | None) -> str:
    """The Markdown table (one row per model) and a plot of the three ways' tokens/s."""
    rows = [[r.get("name", r["model"]), r["backend"], r["device"], f"{r['prompts']} × {r['max_new_tokens']}",
             f"{r['single_tokens_per_s']:,} tok/s", f"{r['batched_tokens_per_s']:,} tok/s ({r['batch']})",
             f"{r['speedup']}×", report.fmt(r.get("vllm_tokens_per_s"), ",.0f", " tok/s"),
             f"{r['same_answers']:.0%}"] for r in result["rows"]]
    table = report.markdown_table(["model", "backend", "device", "prompts × tokens", "one at a time",
                                   "batched (batch)", "speed-up", "vLLM", "same answers"], rows)
    names = [r.get("name", r["model"]) for r in result["rows"]]
    report.bar_plot(png, "Evaluation generation: new tokens/s", names, {"tokens/s": {
        "one at a time": [r["single_tokens_per_s"] for r in result["rows"]],
        "batched": [r["batched_tokens_per_s"] for r in result["rows"]],
        "vLLM": [r.get("vllm_tokens_per_s") for r in result["rows"]]}})
    return table + ("\n\nGreedy both ways; same answers: the share of prompts whose batched answer equals "
                    "the one-at-a-time answer.")


if __name__ == "__main__":
    main()
