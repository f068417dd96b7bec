"""The training of 03 (SFT) or 06 (GRPO) as one command, on one GPU or several.

    python -m helpers.train sft --profile 24gb
    python -m helpers.train sft --profile cpu --steps 3 --lora-r 8
    accelerate launch --num_processes 2 -m helpers.train sft --profile 80gb
    accelerate launch --config_file configs/accelerate/fsdp.yaml -m helpers.train sft --config knobs.yaml

It executes the notebook itself: its first (parameters) cell, then the knobs given here, then every
cell tagged ``recipe`` (the cells that open with ``# recipe ·``), in order. So it trains exactly what
the notebook trains, edits included. ``--config`` reads knobs from a YAML or JSON file (the one the
notebook's last section writes: ``STEPS: 300``); any knob of the first cell is also a flag
(``--lora-r 8`` sets ``LORA_R``), and flags win over the file. With several processes (``accelerate
launch``, ``torchrun``) each takes its share of every batch (DDP); only the first prints, and the
saved adapter and ``metrics/train_<lesson>.json`` are written once.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

from helpers import notebook, runs, training
from helpers.errors import CourseError

LESSONS = ("sft", "grpo")


class ThroughputMeter:
    """Tokens trained per second between the first and the last log line (the warm-up step left out)."""

    def __init__(self):
        from transformers import TrainerCallback

        meter = self

        class Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "num_tokens" in logs:
                    meter.points.append((state.global_step, logs["num_tokens"], time.perf_counter()))

        self.points: list[tuple[int, float, float]] = []
        self.callback = Callback()
        self.attached = False

    def attach(self, namespace: dict) -> None:
        """Called after every recipe cell: join the trainer as soon as the recipe has made one."""
        trainer = namespace.get("trainer")
        if trainer is not None and not self.attached:
            trainer.add_callback(self.callback)
            self.attached = True

    def tokens_per_second(self) -> float | None:
        if len(self.points) < 2:
            return None
        (_, tokens0, t0), (_, tokens1, t1) = self.points[0], self.points[-1]
        return (tokens1 - tokens0) / (t1 - t0) if t1 > t0 else None


def gather_knobs(lesson: str, args: argparse.Namespace, flags: list[str]) -> dict[str, object]:
    """The knobs of this run: the file's, then the profile and run name flags, then every other flag."""
    knobs = notebook.read_knobs(args.config) if args.config else {}
    if args.profile:
        knobs["PROFILE"] = args.profile
    if args.run_name:
        knobs["RUN_NAME"] = args.run_name
    knobs.update(notebook.knob_flags(flags))
    return notebook.check_knobs(notebook.notebook_path(lesson), knobs)


def run_lesson(lesson: str, knobs: dict[str, object]) -> dict:
    """Execute the lesson's recipe with ``knobs``; the metrics of the run (on the first process)."""
    meter = ThroughputMeter()
    main = training.is_main_process()
    quiet = contextlib.nullcontext() if main else contextlib.redirect_stdout(io.StringIO())
    started = time.perf_counter()
    with quiet:  # one process prints; the others would repeat every line
        ns = notebook.run_recipe(notebook.notebook_path(lesson), knobs, after_cell=meter.attach)
    trainer = ns["trainer"]
    history = trainer.state.log_history
    return {"run": str(ns["run"]), "backend": ns.get("backend"), "processes": training.world_size(),
            "steps": trainer.state.global_step,
            "rows_per_step": training.effective_batch(trainer.args) * training.world_size(),
            "train_seconds": round(ns.get("train_seconds", time.perf_counter() - started), 1),
            "tokens_per_second": meter.tokens_per_second(),
            "loss_curve": training.loss_curve(history),
            "held_out_loss_curve": training.loss_curve(history, "eval_loss"),
            "saved": str(ns.get("saved", "")),  # the recipe's save cell names what it wrote
            "knobs": {name: ns.get(name) for name in notebook.parameters(notebook.notebook_path(lesson))}}


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m helpers.train", description=__doc__.split("\n\n")[0],
                                     epilog="Any knob of the notebook's first cell is a flag too: "
                                            "--steps 300, --lora-r 8, --tracking none.")
    parser.add_argument("lesson", choices=LESSONS, help="sft: 03's training; grpo: 06's training")
    parser.add_argument("--profile", help="cpu, t4, 24gb, 80gb, or auto (detect the hardware)")
    parser.add_argument("--config", type=Path, help="a YAML or JSON file of the notebook's knobs")
    parser.add_argument("--run-name", help="folder under outputs/ (default: the profile's)")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, flags = parse_args(argv)
    try:
        knobs = gather_knobs(args.lesson, args, flags)
        if training.is_main_process():
            print(f"{args.lesson}: {notebook.LESSONS[args.lesson]}, its recipe cells, knobs "
                  f"{knobs or 'as in its first cell'}")
        metrics = run_lesson(args.lesson, knobs)
    except CourseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if training.is_main_process():
        path = runs.write_json(Path(metrics["run"]) / "metrics" / f"train_{args.lesson}.json", metrics)
        rate = metrics.get("tokens_per_second")
        print(f"{metrics['steps']} steps in {metrics['train_seconds']} s"
              f"{f', {rate:,.0f} tokens/s' if rate else ''}; saved {metrics['saved']}; metrics in {path}")
        print(json.dumps({k: v for k, v in metrics.items() if k not in ("loss_curve", "knobs")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
