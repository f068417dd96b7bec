"""SFT on one GPU and on several: `python -m helpers.train sft` (03's training), tokens/s and loss curves.

Both runs train the same number of optimizer steps on the same global batch: one process with
``--grad-accum A``, and N processes (``accelerate launch``, DDP) with ``A / N`` each, so every step
sees as many rows either way and the loss curves can be laid over each other. Tokens/s counts the
trained (non-padding) tokens of all processes, from the first logged step to the last (the first
step's warm-up left out). The scaling ratio is N-process tokens/s over one-process tokens/s.

    python benchmarks/multi_gpu.py --random Qwen/Qwen3-1.7B --tokenizer .bench/tokenizer \\
        --profile 80gb --processes 2 --steps 16 --batch-size 8 --grad-accum 8 --report OUT

Writes OUT/multi_gpu.json, OUT/multi_gpu.md and OUT/multi_gpu.png (the two loss curves), as every
benchmark does (`benchmarks/report.py`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402  (after the path insert)


def run_training(processes: int, args: argparse.Namespace, model: str) -> dict:
    """One `helpers.train sft` run with ``processes`` processes; its metrics file, plus the wall time."""
    accum = args.grad_accum // processes
    run_name = f"multi-gpu-{processes}"
    shutil.rmtree(args.runs / run_name, ignore_errors=True)  # else training resumes and measures nothing
    train = ["-m", "helpers.train", "sft", "--profile", args.profile, "--model", model,
             "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--grad-accum", str(accum),
             "--backend", "transformers", "--tracking", "none", "--run-name", run_name]
    if processes == 1:
        command = [sys.executable, *train]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                   "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
                   "--dynamo_backend", "no", *train]
    env = {**os.environ, "COURSE_OUTPUTS": str(args.runs)}
    if processes == 1:
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the {processes}-process run failed (exit {done.returncode})")
    metrics = json.loads((args.runs / run_name / "metrics" / "train_sft.json").read_text(encoding="utf-8"))
    metrics["wall_seconds"] = round(time.perf_counter() - started, 1)
    metrics["command"] = " ".join(command)
    metrics |= {"batch_size": args.batch_size, "grad_accum": accum}
    return metrics


def compare(one: dict, many: dict) -> dict:
    """The scaling ratio and how far apart the two loss curves are."""
    a, b = dict(map(tuple, one["loss_curve"])), dict(map(tuple, many["loss_curve"]))
    shared = sorted(set(a) & set(b))
    gaps = [abs(a[s] - b[s]) / max(abs(a[s]), 1e-9) for s in shared]
    return {"scaling": many["tokens_per_second"] / one["tokens_per_second"],
            "steps_compared": len(shared), "loss_gap_mean": sum(gaps) / len(gaps),
            "loss_gap_max": max(gaps), "loss_last": (a[shared[-1]], b[shared[-1]])}


def render(result: dict, png: Path | None) -> str:
    """The Markdown table (one row per run), the scaling and loss gap, and a plot of the loss curves."""
    one, many = result["rows"]
    rows = []
    for r in (one, many):
        split = f"{r['batch_size']} × {r['grad_accum']}"  # per process; × processes where several
        split += f" × {r['processes']}" if r["processes"] > 1 else ""
        rows.append([r["processes"], split, f"{r['tokens_per_second']:,.0f}", r["train_seconds"],
                     f"{r['loss_curve'][-1][1]:.3f}"])
    table = report.markdown_table(["GPUs", "batch × accumulation", "tokens/s", "train seconds", "last loss"],
                                  rows)
    n = many["processes"]
    if png is not None and importlib.util.find_spec("matplotlib") is not None:
        import matplotlib

        matplotlib.use("Agg")  # no display on a GPU box
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for label, run in (("1 GPU", one), (f"{n} GPUs", many)):
            steps, losses = zip(*run["loss_curve"], strict=True)
            rate = f"{run['tokens_per_second']:,.0f} tok/s"
            ax.plot(steps, losses, marker="o", markersize=3, label=f"{label}, {rate}")
        ax.set(xlabel="optimizer step", ylabel="training loss", title=f"SFT loss, 1 vs {n} GPUs (same batch)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(png, dpi=120)
        plt.close(fig)
    return table + (
        f"\n\n{one['steps']} steps of {one['rows_per_step']} rows, profile {one['plan']['profile']}, "
        f"transformers + peft, DDP. Scaling {result['scaling']:.2f}× on {n} GPUs; the loss curves differ by "
        f"{result['loss_gap_mean']:.2%} on average (at most {result['loss_gap_max']:.2%}) over "
        f"{result['steps_compared']} steps.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a local folder or hub id to train")
    parser.add_argument("--random", metavar="MODEL_ID", help="build a random-weight checkpoint of this shape")
    parser.add_argument("--tokenizer", help="tokenizer folder for --random")
    parser.add_argument("--profile", default="80gb")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=8, help="of the one-process run; divided by N")
    parser.add_argument("--report", type=Path, default=Path("outputs/bench"), help="where the report goes")
    parser.add_argument("--runs", type=Path, default=Path("/tmp/course-multi-gpu"),
                        help="where the two training runs write checkpoints and adapters")
    args = parser.parse_args()
    if args.grad_accum % args.processes:
        raise SystemExit("--grad-accum must be a multiple of --processes (the same global batch both ways)")
    model = args.model
    if args.random:
        from helpers.architectures import make_random_checkpoint

        folder = Path("/tmp/course-random") / args.random.split("/")[-1]
        model = str(make_random_checkpoint(args.random, folder, tokenizer_dir=args.tokenizer))
    one = run_training(1, args, model)
    many = run_training(args.processes, args, model)
    path = report.write_report(args.report, "multi_gpu", [one, many], **compare(one, many))
    print(path.with_suffix(".md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
