"""SFT speed and memory as notebook 03 trains: unsloth against plain transformers + peft.

Each measurement runs, in a fresh process (unsloth patches transformers and TRL on import, so the
baseline must never see it), what 03_sft_llm.ipynb runs: `load_text_model` + `add_lora` (the adapters of
03's LoRA cell: tests/test_lora_cells.py) + TRL's `SFTTrainer` with the `SFTConfig` of 03's own cell, on
the course's SFT samples rendered with the chat template, loss on the completion only, with each
profile's precision, LoRA rank, batch size and gradient accumulation. unsloth
batches padding-free, as in the notebook; the baseline pads each batch. The table gives tokens/s
(real tokens, padding not counted) and peak GPU memory, and unsloth as a ratio of the baseline.

    python benchmarks/sft_step.py --random --tokenizer .bench --out sft_step.json
    python benchmarks/sft_step.py --random --tokenizer .bench/tokenizer --settings 80gb \
        --batching padding-free,padded --report OUT        # what padding-free batching buys

--batching padding-free,padded measures each backend both ways on the same samples (by default each
backend batches as 03 does). --full-length stretches every sample to the profile's sequence length: the
largest batch a profile can meet, which memory_fit.py runs under a memory cap.

The model folder may be a real checkpoint or, offline, a random-initialised one of the real shape
(--random), which measures speed and memory just as well. The whole run keeps to --budget seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import report  # noqa: E402  (after the path insert)

SETTINGS = ("t4", "24gb", "80gb", "80gb-full")  # 80gb-full: full fine-tuning, as FULL_FINETUNE=True in 03


def setting_plan(setting: str) -> dict:
    """What 03 does in this setting: the profile's precision, LoRA rank, batch and accumulation."""
    from helpers.profiles import PROFILES

    full = setting.endswith("-full")
    p = PROFILES[setting.removesuffix("-full")]
    return dict(full=full, load_in_4bit=p.load_in_4bit and not full, dtype=p.dtype, seq=p.max_seq_length,
                r=p.lora_r, alpha=p.lora_alpha, batch=p.sft_batch_size, accum=p.sft_grad_accum)


def sft_config(output_dir: str, setting: str, plan: dict, steps: int, padding_free: bool):
    """The SFTConfig 03 trains with: its plan cell and its ``SFTConfig`` cell, run for this setting."""
    from helpers import notebook

    knobs = {"PROFILE": setting.removesuffix("-full"), "RUN_NAME": str(Path(output_dir).resolve()),
             "FULL_FINETUNE": plan["full"], "STEPS": steps, "TRACKING": "none", "PADDING_FREE": padding_free,
             "SAVE_EVERY": 10**9}  # a benchmark saves no checkpoints
    ns = notebook.run_recipe("sft", knobs, tag=("plan", "sft-config"),
                             namespace={"backend": "unsloth" if padding_free else "transformers",
                                        "held_rows": []})  # no held-out loss in a benchmark
    args = ns["args"]
    args.save_strategy = "no"  # a benchmark saves nothing: an 8B checkpoint with its optimizer is ~50 GB
    return args


class Clock:
    """Times the optimizer steps after the warm-up, and counts the real tokens each batch carries."""

    def __init__(self, warmup: int, cuda: bool):
        self.warmup, self.cuda = warmup, cuda
        self.began = self.ended = None
        self.tokens = self.padded = 0
        self.counting = False

    def count(self, batch) -> None:
        if not self.counting:
            return
        if "attention_mask" in batch:
            self.tokens += int(batch["attention_mask"].sum())
        else:  # padding-free: every position is a real token
            self.tokens += int(batch["input_ids"].numel())
        self.padded += int(batch["input_ids"].numel())

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == clock.warmup:
                    clock._sync()
                    if clock.cuda:
                        import torch

                        torch.cuda.reset_peak_memory_stats()
                    clock.began, clock.counting = time.perf_counter(), True
                elif state.global_step == args.max_steps:
                    clock._sync()
                    clock.ended = time.perf_counter()

        return _Callback()

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()


def full_length_rows(tokenizer, rows: list[dict], seq: int) -> list[dict]:
    """Each row with its completion repeated, then cut, so that prompt + completion fill about ``seq`` tokens:
    the longest samples a profile allows, whose batches its memory must hold."""
    stretched = []
    for row in rows:
        prompt = len(tokenizer(row["prompt"], add_special_tokens=False)["input_ids"])
        ids = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        want = max(seq - prompt - 16, 1)  # slack: the cut text may tokenize a few tokens longer
        ids = (ids * (want // max(len(ids), 1) + 1))[:want]
        stretched.append({**row, "completion": tokenizer.decode(ids)})
    return stretched


def length_stats(lengths: list[int]) -> dict:
    """Mean, median, 90th percentile and maximum of the samples' token counts."""
    ordered = sorted(lengths)

    def quantile(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"samples": len(ordered), "mean": sum(ordered) / len(ordered), "p50": quantile(0.5),
            "p90": quantile(0.9), "max": ordered[-1]}


def measure(folder: str, backend: str, setting: str, steps: int, warmup: int,
            padding_free: bool | None, full_length: bool = False) -> dict:
    """One backend, one setting: SFT steps as in 03, timed after ``warmup`` steps."""
    import torch

    # load_text_model first: on the unsloth path it imports unsloth before transformers and TRL.
    from helpers.models import add_lora, count_parameters, load_text_model

    cuda = torch.cuda.is_available()
    plan = setting_plan(setting)
    if not cuda:  # a CPU check of this script: full precision, like the cpu profile
        plan.update(load_in_4bit=False, dtype="float32")
    model, tokenizer, loaded_with = load_text_model(
        folder, backend="transformers" if plan["full"] else backend, load_in_4bit=plan["load_in_4bit"],
        dtype=plan["dtype"], max_seq_length=plan["seq"])
    from datasets import Dataset
    from trl import SFTTrainer

    from helpers import datasets, training

    if plan["full"]:
        model.requires_grad_(True)
    else:
        model = add_lora(model, r=plan["r"], alpha=plan["alpha"], backend=loaded_with,
                         gradient_checkpointing=cuda)
    trainable, total = count_parameters(model)
    examples = datasets.load_sft_examples().examples
    rows = [datasets.to_prompt_completion(tokenizer, ex) for ex in examples]
    if full_length:
        rows = full_length_rows(tokenizer, rows, plan["seq"])
    if padding_free is None:
        padding_free = loaded_with == "unsloth"
    clock = Clock(warmup, cuda)
    out = f"/tmp/course-sft-bench/{setting}-{backend}"
    args = sft_config(out, setting, plan, warmup + steps, padding_free)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, callbacks=[clock.callback()])
    training.fp32_adapters_for_fp16(trainer, loaded_with)  # as 03 does: fp16 (t4) needs fp32 adapters
    collate = trainer.data_collator

    def counting_collator(features):
        batch = collate(features)
        clock.count(batch)
        return batch

    trainer.data_collator = counting_collator
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    trainer.train()
    seconds = clock.ended - clock.began
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "backend": loaded_with, "requested": backend, "setting": setting, **plan,
        "padding_free": padding_free, "full_length": full_length, "sample_tokens": length_stats(lengths),
        "steps": steps, "examples_per_step": plan["batch"] * plan["accum"],
        "tokens_per_s": clock.tokens / seconds, "seconds_per_step": seconds / steps,
        "padding_share": 1 - clock.tokens / clock.padded if clock.padded else 0.0,
        "peak_gb": torch.cuda.max_memory_allocated() / 1024**3 if cuda else 0.0,
        "reserved_gb": torch.cuda.max_memory_reserved() / 1024**3 if cuda else 0.0,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "trainable": trainable, "total": total, "first_loss": losses[0], "last_loss": losses[-1],
    }


def run_isolated(folder: str, backend: str, setting: str, steps: int, warmup: int, timeout: float,
                 padding_free: bool | None = None, full_length: bool = False) -> dict:
    command = [__file__, "--one", backend, "--folder", folder, "--settings", setting,
               "--steps", str(steps), "--warmup", str(warmup)]
    if padding_free is not None:
        command += ["--padding-free", str(padding_free).lower()]
    if full_length:
        command.append("--full-length")
    return report.run_isolated(command, timeout, backend=backend, requested=backend, setting=setting,
                               padding_free=padding_free)


def _matches(row: dict, other: dict) -> bool:
    return "error" not in other and other["setting"] == row["setting"] and \
        other.get("full_length") == row.get("full_length")


def render(result: dict, png: Path | None) -> str:
    """The Markdown table: real (non-padding) tokens/s per setting, backend and batching, with ratios
    against transformers with padded batches and against the same backend padded; and the plot."""
    rows, names, speeds, memories = [], [], {}, {}
    for r in result["rows"]:
        batching = {True: "padding-free", False: "padded", None: "as 03"}[r.get("padding_free")]
        if "error" in r:
            rows.append([r["setting"], r["backend"], batching, f"failed: {report.last_line(r['error'])}"]
                        + [None] * 7)
            continue
        base = next((b for b in result["rows"] if _matches(r, b) and b["backend"] == "transformers"
                     and not b["padding_free"]), None)
        own = next((b for b in result["rows"] if _matches(r, b) and b["backend"] == r["backend"]
                    and not b["padding_free"]), None)
        vs_base = report.fmt(r["tokens_per_s"] / base["tokens_per_s"], ".2f", "×") if base else None
        vs_own = report.fmt(r["tokens_per_s"] / own["tokens_per_s"], ".2f", "×") if own else None
        memory = report.fmt(r["peak_gb"] / base["peak_gb"], ".2f", "×") if base and base["peak_gb"] else None
        tokens = r.get("sample_tokens") or {}
        lengths = f"{tokens['mean']:.0f} / {tokens['p90']} / {tokens['max']}" if tokens else None
        requested = r.get("requested", r["backend"])
        backend = r["backend"] if requested == r["backend"] else f"{requested}→{r['backend']}"  # a fallback
        rows.append([r["setting"], backend, batching, lengths, report.fmt(r["tokens_per_s"]),
                     report.fmt(r["padding_share"], ".0%"), report.fmt(r["seconds_per_step"], ".2f"),
                     report.fmt(r["peak_gb"] or None, ".1f"), vs_base, memory, vs_own])
        name = f"{r['setting']} {backend} {batching}"
        names.append(name)
        speeds[name], memories[name] = r["tokens_per_s"], r["peak_gb"] or None
    table = report.markdown_table(
        ["setting", "backend", "batching", "sample tokens (mean / p90 / max)", "real tok/s", "padding",
         "s/step", "peak GiB", "speed vs transformers padded", "memory vs transformers padded",
         "speed vs same backend padded"], rows)
    report.bar_plot(png, "SFT as in 03: real (non-padding) tokens/s", names,
                    {"real tokens/s": {"measured": [speeds[n] for n in names]},
                     "peak GiB": {"measured": [memories[n] for n in names]}})
    return table + ("\n\nReal tokens/s counts the samples' own tokens, never padding: the effective "
                    "throughput. A step takes the profile's batch × gradient accumulation samples.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen/Qwen3-1.7B", help="hub id (with --random: its shape)")
    parser.add_argument("--folder", help="a local model folder (default: resolve --model)")
    parser.add_argument("--random", action="store_true", help="random weights of the model's real shape")
    parser.add_argument("--tokenizer", help="tokenizer folder for --random (default: the embedded one)")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--backends", default="transformers,unsloth")
    parser.add_argument("--batching", default="course",
                        help="'course' (as 03: unsloth padding-free, transformers padded) or any of "
                             "padding-free,padded for every backend")
    parser.add_argument("--full-length", action="store_true", help="stretch samples to the profile's length")
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    parser.add_argument("--budget", type=float, default=420, help="seconds for the whole run")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--padding-free", choices=("true", "false"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--report", help="write sft_step.json/.md/.png into this folder")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the course's offline samples; no hub needed

    if args.one:
        padding_free = None if args.padding_free is None else args.padding_free == "true"
        result = measure(args.folder, args.one, args.settings, args.steps, args.warmup, padding_free,
                         args.full_length)
        print(json.dumps(result))
        return
    started = time.perf_counter()
    folder = args.folder
    if args.random:
        from helpers.architectures import make_random_checkpoint

        folder = str(make_random_checkpoint(args.model, Path("/tmp/course-random") / args.model,
                                            tokenizer_dir=args.tokenizer))
    folder = folder or args.model
    batchings = [None] if args.batching == "course" else \
        [{"padding-free": True, "padded": False}[b] for b in args.batching.split(",")]
    runs = [(s, b, pf) for s in args.settings.split(",") for b in args.backends.split(",") for pf in batchings
            if not (s.endswith("-full") and b != "transformers")]  # 03 fine-tunes in full with transformers
    results = []
    for setting, backend, padding_free in runs:
        left = args.budget - (time.perf_counter() - started)
        if left < 30:
            results.append({"backend": backend, "setting": setting, "padding_free": padding_free,
                            "error": report.NOT_RUN})
            continue
        print(f"{setting} · {backend} · {padding_free=} ...", flush=True)
        result = run_isolated(folder, backend, setting, args.steps, args.warmup, left, padding_free,
                              args.full_length)
        if ("error" in result and backend == "unsloth" and padding_free is None
                and "stopped after" not in result["error"]):
            print(f"  padding-free unsloth failed ({report.last_line(result['error'])}); "
                  "measuring it padded", flush=True)
            padded = run_isolated(folder, backend, setting, args.steps, args.warmup,
                                  args.budget - (time.perf_counter() - started), False, args.full_length)
            results.append(result)
            result = padded
        results.append(result)
    print(f"\n{args.model}{' (random weights, real shape)' if args.random else ''}: SFT as in 03, "
          f"{args.steps} timed steps after {args.warmup}, {time.perf_counter() - started:.0f} s in all")
    print(render({"rows": results}, None))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    if args.report:
        report.write_report(args.report, "sft_step", results, model=args.model, random=args.random)


if __name__ == "__main__":
    main()
