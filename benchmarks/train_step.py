"""LoRA training speed and memory: unsloth against plain transformers + peft, in one run.

Each measurement runs `load_text_model` + `add_lora` + a few optimizer steps on a random batch,
in a fresh process (unsloth patches transformers on import, so the baseline must never see it),
and reports tokens/s and peak GPU memory. The table gives unsloth's speed as a ratio of the
baseline's, measured on the same machine in the same run.

    python benchmarks/train_step.py --model Qwen/Qwen3-1.7B --settings t4,24gb,80gb --out bench.json

The model folder may be a real checkpoint or, offline, a random-initialised one of the real
shape (--random), which measures speed and memory just as well.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# The training shape of each profile: 4-bit or 16-bit weights, precision, sequence length, batch.
SETTINGS = {
    "t4": dict(load_in_4bit=True, dtype="float16", seq=2048, batch=2, r=16),
    "24gb": dict(load_in_4bit=True, dtype="bfloat16", seq=2048, batch=4, r=32),
    "80gb": dict(load_in_4bit=False, dtype="bfloat16", seq=4096, batch=4, r=64),
}


def measure(folder: str, backend: str, setting: str, steps: int) -> dict:
    """One backend, one setting: tokens/s over ``steps`` steps after two warm-up steps."""
    import torch

    from helpers.models import add_lora, count_parameters, load_text_model

    s = SETTINGS[setting]
    model, _ = load_text_model(folder, backend=backend, load_in_4bit=s["load_in_4bit"], dtype=s["dtype"],
                               max_seq_length=s["seq"])
    model = add_lora(model, r=s["r"], alpha=s["r"])
    trainable, total = count_parameters(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 40000, (s["batch"], s["seq"]), generator=generator).to("cuda")
    model.train()
    losses = []

    def step() -> None:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    return {
        "backend": model.course_backend, "setting": setting, **s, "steps": steps,
        "tokens_per_s": s["batch"] * s["seq"] * steps / seconds,
        "seconds_per_step": seconds / steps,
        "peak_gb": torch.cuda.max_memory_allocated() / 1024**3,
        "trainable": trainable, "total": total, "first_loss": losses[0], "last_loss": losses[-1],
    }


def run_isolated(folder: str, backend: str, setting: str, steps: int) -> dict:
    command = [sys.executable, __file__, "--one", backend, "--folder", folder, "--settings", setting,
               "--steps", str(steps)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"backend": backend, "setting": setting, "error": (done.stderr or done.stdout)[-1500:]}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen/Qwen3-1.7B", help="hub id (with --random: its shape)")
    parser.add_argument("--folder", help="a local model folder (default: resolve --model)")
    parser.add_argument("--random", action="store_true", help="random weights of the model's real shape")
    parser.add_argument("--tokenizer", help="tokenizer folder for --random (default: the embedded one)")
    parser.add_argument("--settings", default="t4,24gb,80gb")
    parser.add_argument("--backends", default="transformers,unsloth")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    if args.one:
        print(json.dumps(measure(args.folder, args.one, args.settings, args.steps)))
        return
    folder = args.folder
    if args.random:
        from helpers.architectures import make_random_checkpoint

        folder = str(make_random_checkpoint(args.model, Path("/tmp/course-random") / args.model,
                                            tokenizer_dir=args.tokenizer))
    folder = folder or args.model
    results = [run_isolated(folder, b, s, args.steps)
               for s in args.settings.split(",") for b in args.backends.split(",")]
    print(f"\n{args.model}{' (random weights, real shape)' if args.random else ''}: LoRA training")
    print(f"{'setting':<7} {'backend':<13} {'tokens/s':>9} {'s/step':>7} {'peak GB':>8}  vs transformers")
    for r in results:
        if "error" in r:
            print(f"{r['setting']:<7} {r['backend']:<13} failed: {r['error'].splitlines()[-1]}")
            continue
        base = next((b for b in results if b.get("setting") == r["setting"]
                     and b.get("backend") == "transformers" and "error" not in b), None)
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x speed, " \
                f"{r['peak_gb'] / base['peak_gb']:.2f}x memory" if base else ""
        print(f"{r['setting']:<7} {r['backend']:<13} {r['tokens_per_s']:>9.0f} {r['seconds_per_step']:>7.2f} "
              f"{r['peak_gb']:>8.1f}  {ratio}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
