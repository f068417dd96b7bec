"""SFT speed and memory as notebook 03 trains: unsloth against plain transformers + peft.

Each measurement runs, in a fresh process (unsloth patches transformers and TRL on import, so the
baseline must never see it), what 03_sft_llm.ipynb runs: `load_text_model` + `add_lora` + TRL's
`SFTTrainer` on the course's SFT samples rendered with the chat template, loss on the completion
only, with each profile's precision, LoRA rank, batch size and gradient accumulation. unsloth
batches padding-free, as in the notebook; the baseline pads each batch. The table gives tokens/s
(real tokens, padding not counted) and peak GPU memory, and unsloth as a ratio of the baseline.

    python benchmarks/sft_step.py --random --tokenizer .bench --out sft_step.json

The model folder may be a real checkpoint or, offline, a random-initialised one of the real shape
(--random), which measures speed and memory just as well. The whole run keeps to --budget seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SETTINGS = ("t4", "24gb", "80gb", "80gb-full")  # 80gb-full: full fine-tuning, as FULL_FINETUNE=True in 03


def setting_plan(setting: str) -> dict:
    """What 03 does in this setting: the profile's precision, LoRA rank, batch and accumulation."""
    from helpers.profiles import PROFILES

    full = setting.endswith("-full")
    p = PROFILES[setting.removesuffix("-full")]
    return dict(full=full, load_in_4bit=p.load_in_4bit and not full, dtype=p.dtype, seq=p.max_seq_length,
                r=p.lora_r, alpha=p.lora_alpha, batch=p.sft_batch_size, accum=p.sft_grad_accum)


def sft_config(output_dir: str, plan: dict, steps: int, padding_free: bool, on_gpu: bool, **extra):
    """The SFTConfig of 03_sft_llm.ipynb for this plan (keep the two in step)."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=plan["batch"],
        gradient_accumulation_steps=plan["accum"], learning_rate=2e-5 if plan["full"] else 2e-4,
        lr_scheduler_type="cosine", warmup_steps=1, optim="adamw_8bit" if on_gpu else "adamw_torch",
        bf16=plan["dtype"] == "bfloat16", fp16=plan["dtype"] == "float16", completion_only_loss=True,
        padding_free=padding_free, max_length=None if padding_free else plan["seq"],
        train_sampling_strategy="random" if padding_free else "group_by_length",
        gradient_checkpointing=on_gpu and plan["full"], logging_steps=1, save_strategy="no",
        report_to="none", seed=0, dataloader_pin_memory=on_gpu, disable_tqdm=True, **extra,
    )


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


def measure(folder: str, backend: str, setting: str, steps: int, warmup: int,
            padding_free: bool | None) -> dict:
    """One backend, one setting: SFT steps as in 03, timed after ``warmup`` steps."""
    import torch

    # load_text_model first: on the unsloth path it imports unsloth before transformers and TRL.
    from helpers.models import add_lora, count_parameters, load_text_model

    cuda = torch.cuda.is_available()
    plan = setting_plan(setting)
    if not cuda:  # a CPU check of this script: full precision, like the cpu profile
        plan.update(load_in_4bit=False, dtype="float32")
    model, tokenizer = load_text_model(folder, backend="transformers" if plan["full"] else backend,
                                       load_in_4bit=plan["load_in_4bit"], dtype=plan["dtype"],
                                       max_seq_length=plan["seq"])
    from datasets import Dataset
    from trl import SFTTrainer

    from helpers import datasets, training

    if plan["full"]:
        model.requires_grad_(True)
    else:
        model = add_lora(model, r=plan["r"], alpha=plan["alpha"], gradient_checkpointing=cuda)
    trainable, total = count_parameters(model)
    examples = datasets.load_sft_examples().examples
    rows = [datasets.to_prompt_completion(tokenizer, ex) for ex in examples]
    if padding_free is None:
        padding_free = model.course_backend == "unsloth"
    clock = Clock(warmup, cuda)
    args = sft_config(f"/tmp/course-sft-bench/{setting}-{backend}", plan, warmup + steps, padding_free, cuda)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, callbacks=[clock.callback()])
    training.fp32_adapters_for_fp16(trainer)  # as 03 does: fp16 (t4) needs fp32 adapters
    collate = trainer.data_collator

    def counting_collator(features):
        batch = collate(features)
        clock.count(batch)
        return batch

    trainer.data_collator = counting_collator
    trainer.train()
    seconds = clock.ended - clock.began
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "backend": model.course_backend, "setting": setting, **plan, "padding_free": padding_free,
        "steps": steps, "examples_per_step": plan["batch"] * plan["accum"],
        "tokens_per_s": clock.tokens / seconds, "seconds_per_step": seconds / steps,
        "padding_share": 1 - clock.tokens / clock.padded if clock.padded else 0.0,
        "peak_gb": torch.cuda.max_memory_allocated() / 1024**3 if cuda else 0.0,
        "trainable": trainable, "total": total, "first_loss": losses[0], "last_loss": losses[-1],
    }


def run_isolated(folder: str, backend: str, setting: str, steps: int, warmup: int, timeout: float,
                 padding_free: bool | None = None) -> dict:
    command = [sys.executable, __file__, "--one", backend, "--folder", folder, "--settings", setting,
               "--steps", str(steps), "--warmup", str(warmup)]
    if padding_free is not None:
        command += ["--padding-free", str(padding_free).lower()]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        return {"backend": backend, "setting": setting, "error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"backend": backend, "setting": setting, "error": (done.stderr or done.stdout)[-3000:]}
    return json.loads(lines[-1])


def format_table(results: list[dict]) -> str:
    lines = [f"{'setting':<10} {'backend':<13} {'batching':<12} {'tokens/s':>9} {'s/step':>7} {'peak GB':>8} "
             f"{'padding':>8}  vs transformers"]
    for r in results:
        if "error" in r:
            last = r["error"].strip().splitlines()[-1]
            lines.append(f"{r['setting']:<10} {r['backend']:<13} failed: {last}")
            continue
        base = next((b for b in results if b.get("setting") == r["setting"]
                     and b.get("backend") == "transformers" and "error" not in b), None)
        ratio = ""
        if base and base is not r and base["peak_gb"]:  # no peak memory on a CPU check
            ratio = (f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x speed, "
                     f"{r['peak_gb'] / base['peak_gb']:.2f}x memory")
        batching = "padding-free" if r["padding_free"] else "padded"
        lines.append(f"{r['setting']:<10} {r['backend']:<13} {batching:<12} {r['tokens_per_s']:>9.0f} "
                     f"{r['seconds_per_step']:>7.2f} {r['peak_gb']:>8.1f} {r['padding_share']:>8.0%}  "
                     f"{ratio}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen/Qwen3-1.7B", help="hub id (with --random: its shape)")
    parser.add_argument("--folder", help="a local model folder (default: resolve --model)")
    parser.add_argument("--random", action="store_true", help="random weights of the model's real shape")
    parser.add_argument("--tokenizer", help="tokenizer folder for --random (default: the embedded one)")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--backends", default="transformers,unsloth")
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    parser.add_argument("--budget", type=float, default=420, help="seconds for the whole run")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--padding-free", choices=("true", "false"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the course's offline samples; no hub needed

    if args.one:
        padding_free = None if args.padding_free is None else args.padding_free == "true"
        result = measure(args.folder, args.one, args.settings, args.steps, args.warmup, padding_free)
        print(json.dumps(result))
        return
    started = time.perf_counter()
    folder = args.folder
    if args.random:
        from helpers.architectures import make_random_checkpoint

        folder = str(make_random_checkpoint(args.model, Path("/tmp/course-random") / args.model,
                                            tokenizer_dir=args.tokenizer))
    folder = folder or args.model
    runs = [(s, b) for s in args.settings.split(",") for b in args.backends.split(",")
            if not (s.endswith("-full") and b != "transformers")]  # 03 fine-tunes in full with transformers
    results = []
    for setting, backend in runs:
        left = args.budget - (time.perf_counter() - started)
        if left < 30:
            results.append({"backend": backend, "setting": setting, "error": "skipped: out of time budget"})
            continue
        print(f"{setting} · {backend} ...", flush=True)
        result = run_isolated(folder, backend, setting, args.steps, args.warmup, left)
        if "error" in result and backend == "unsloth" and "timed out" not in result["error"]:
            print(f"  padding-free unsloth failed ({result['error'].strip().splitlines()[-1]}); "
                  "measuring it padded", flush=True)
            padded = run_isolated(folder, backend, setting, args.steps, args.warmup,
                                  args.budget - (time.perf_counter() - started), padding_free=False)
            results.append(result)
            result = padded
        results.append(result)
    print(f"\n{args.model}{' (random weights, real shape)' if args.random else ''}: SFT as in 03, "
          f"{args.steps} timed steps after {args.warmup}, {time.perf_counter() - started:.0f} s in all")
    print(format_table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
