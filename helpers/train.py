"""The training of 03 (SFT) or 06 (GRPO) as one command, on one GPU or several.

    python -m helpers.train sft --profile 24gb
    accelerate launch --num_processes 2 -m helpers.train sft --profile 80gb
    accelerate launch --config_file configs/accelerate/fsdp.yaml -m helpers.train sft --profile 80gb

It runs the steps of ``helpers.recipes`` in the notebook's order, so it trains exactly what the
notebook trains. ``--config`` reads the notebook's knobs from a YAML or JSON file (names as in the
notebook's first cell, in any case: ``steps: 300``, ``LORA_R: 32``); flags override the file. With
several processes (``accelerate launch``, ``torchrun``) each takes its share of every batch (DDP);
only the first prints the summary and saves the adapter and ``metrics/train_<kind>.json``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from dataclasses import fields
from pathlib import Path

from helpers import profiles, recipes, runs, training
from helpers.errors import CourseError

KINDS = ("sft", "grpo")


def read_knobs(path: Path) -> dict:
    """The knobs in a YAML or JSON file, with lower-case names, as the ``plan_*`` functions take them."""
    import yaml  # a dependency of accelerate, so always there

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise CourseError(f"Could not read the knobs in {path}: {err}") from None
    if not isinstance(data, dict):
        raise CourseError(f"{path} should hold knob: value lines (a mapping), not a {type(data).__name__}.")
    return {str(name).lower(): value for name, value in data.items()}


PROFILE_FIELDS = {f.name for f in fields(profiles.Profile)} - {"name", "hardware"}
# Knobs of the notebooks' first cells that are not part of the training itself.
NOT_TRAINING = ("check_max_new_tokens", "save_merged", "halve_batch_on_oom")


def plan_from(kind: str, args: argparse.Namespace):
    """(the plan, its run dir) from the command line: the profile, the knob file, then the flags."""
    knobs = read_knobs(args.config) if args.config else {}
    file_profile, file_run_name = knobs.pop("profile", "auto"), knobs.pop("run_name", "")
    profile_name, run_name = args.profile or file_profile, args.run_name or file_run_name
    for name in NOT_TRAINING:
        knobs.pop(name, None)
    flags = {"model": args.model, "steps": args.steps, "seed": args.seed,
             "examples" if kind == "sft" else "prompts": args.examples}
    if kind == "sft":
        flags.update(tracking=args.tracking, backend=args.backend)
    knobs.update({name: value for name, value in flags.items() if value is not None})
    plan_fn = recipes.plan_sft if kind == "sft" else recipes.plan_grpo
    # A knob named like a profile field that the plan has no knob for (sft_batch_size) changes the profile.
    own = set(inspect.signature(plan_fn).parameters)
    sizes = {name: knobs.pop(name) for name in list(knobs) if name in PROFILE_FIELDS - own}
    if kind == "sft":
        sizes.update({name: value for name, value in (("sft_batch_size", args.batch_size),
                                                       ("sft_grad_accum", args.grad_accum)) if value})
    profile = profiles.get_profile(profile_name, **sizes)
    try:
        plan = plan_fn(profile, **knobs)
    except TypeError as err:  # an unknown knob in the file
        notebook = "03_sft_llm" if kind == "sft" else "06_grpo"
        raise CourseError(f"{err}: the knobs are the names in the first cell of {notebook}.ipynb.") from None
    return plan, runs.run_dir(profile.name, run_name)


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

    def tokens_per_second(self) -> float | None:
        if len(self.points) < 2:
            return None
        (_, tokens0, t0), (_, tokens1, t1) = self.points[0], self.points[-1]
        return (tokens1 - tokens0) / (t1 - t0) if t1 > t0 else None


def save_sharded(trainer, tokenizer, path: Path) -> Path:
    """Save what FSDP trained: the weights are sharded across the processes, so every process takes
    part in gathering them (a save on the first process alone would wait for the others forever)."""
    trainer.save_model(str(path))  # with FULL_STATE_DICT (configs/accelerate/fsdp.yaml): one whole copy
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(path)
    return path


def train_sft(plan: recipes.SFTPlan, run: Path, halve_batch_on_oom: bool = False) -> dict:
    """03's training, start to end: data, model, adapters, trainer, training, the saved adapter."""
    _, _, train_examples = recipes.load_sft_examples(plan)
    model, tokenizer = recipes.load_sft_model(plan)
    rows, _, n_overlong = recipes.sft_rows(tokenizer, train_examples, plan.max_seq_length)
    model = recipes.prepare_sft_model(plan, model)
    trainer = recipes.sft_trainer(plan, model, tokenizer, rows, run)
    meter = ThroughputMeter()
    trainer.add_callback(meter.callback)
    started = time.perf_counter()
    training.train(trainer, halve_batch_on_oom=halve_batch_on_oom)
    seconds = time.perf_counter() - started
    metrics = {"backend": model.course_backend, "processes": recipes.world_size(),
               "train_examples": len(rows), "dropped_overlong": n_overlong,
               "steps": trainer.state.global_step,
               "rows_per_step": training.effective_batch(trainer.args) * recipes.world_size(),
               "train_seconds": round(seconds, 1), "tokens_per_second": meter.tokens_per_second(),
               "loss_curve": training.loss_curve(trainer.state.log_history)}
    if trainer.is_fsdp_enabled:
        metrics["saved"] = str(save_sharded(trainer, tokenizer, run / ("sft-model" if plan.full_finetune
                                                                        else "sft-adapter")))
    elif trainer.accelerator.is_main_process:
        metrics["saved"] = str(recipes.save_sft_result(plan, model, tokenizer, run))
    return metrics


def train_grpo(plan: recipes.GRPOPlan, run: Path) -> dict:
    """06's training, start to end: questions, policy, rewards, trainer, training, the saved adapter."""
    from helpers import grpo

    train_items, _, _ = recipes.load_grpo_items(plan, run)
    model, tokenizer, started_from = recipes.load_grpo_policy(plan, run)
    rows = [recipes.grpo_row(plan, tokenizer, item) for item in train_items]
    reward_funcs, weights = recipes.grpo_rewards(plan)
    trainer = recipes.grpo_trainer(plan, model, tokenizer, rows, run, reward_funcs, weights)
    grpo.watch_training(trainer, sample_every=plan.sample_every, group_size=plan.num_generations)
    started = time.perf_counter()
    training.train(trainer, knobs=training.GRPO_KNOBS)
    seconds = time.perf_counter() - started
    history = grpo.reward_history(trainer.state.log_history)
    first, last = grpo.reward_trend(history, "reward")
    metrics = {"backend": model.course_backend, "processes": recipes.world_size(),
               "started_from": started_from, "train_questions": len(rows), "steps": trainer.state.global_step,
               "train_seconds": round(seconds, 1), "seconds_per_step": round(seconds / max(1, plan.steps), 2),
               "reward_first_steps": round(first, 4), "reward_last_steps": round(last, 4),
               "loss_curve": training.loss_curve(trainer.state.log_history)}
    if trainer.is_fsdp_enabled:
        metrics["saved"] = str(save_sharded(trainer, tokenizer, run / grpo.GRPO_ADAPTER))
    elif trainer.accelerator.is_main_process:
        metrics["saved"] = str(grpo.save_grpo_adapter(model, tokenizer, run / grpo.GRPO_ADAPTER))
    return metrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m helpers.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=KINDS, help="sft: 03's training; grpo: 06's training")
    parser.add_argument("--profile", help="cpu, t4, 24gb, 80gb, or auto (the default: detect the hardware)")
    parser.add_argument("--config", type=Path, help="a YAML or JSON file of the notebook's knobs")
    parser.add_argument("--run-name", default="", help="folder under outputs/ (default: the profile's)")
    parser.add_argument("--model", help="a hub id or local folder instead of the profile's model")
    parser.add_argument("--steps", type=int, help="optimizer steps")
    parser.add_argument("--examples", type=int, help="training examples (sft) or questions (grpo)")
    parser.add_argument("--batch-size", type=int, help="rows per process per micro-batch (sft)")
    parser.add_argument("--grad-accum", type=int, help="gradient accumulation steps (sft)")
    parser.add_argument("--tracking", choices=("auto", "cloud", "local", "none"), help="SwanLab (sft)")
    parser.add_argument("--backend", choices=("auto", "transformers", "unsloth"),
                        help="auto: unsloth on one GPU, transformers + peft on several (sft)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--halve-batch-on-oom", action="store_true",
                        help="out of GPU memory: go on from the last checkpoint with half the batch (sft)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        plan, run = plan_from(args.kind, args)
        if recipes.is_main_process():
            print(f"{args.kind} · profile {plan.profile.name} · run dir {run} · "
                  f"{recipes.world_size()} process(es)")
            for line in plan.describe() if args.kind == "sft" else [plan.describe()]:
                print(" -", line)
        metrics = (train_sft(plan, run, args.halve_batch_on_oom) if args.kind == "sft"
                   else train_grpo(plan, run))
    except CourseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if recipes.is_main_process():
        metrics["plan"] = recipes.plan_record(plan)
        path = runs.write_json(run / "metrics" / f"train_{args.kind}.json", metrics)
        rate = metrics.get("tokens_per_second")
        print(f"{metrics['steps']} steps in {metrics['train_seconds']} s"
              f"{f', {rate:,.0f} tokens/s' if rate else ''}; saved {metrics['saved']}; metrics in {path}")
        print(json.dumps({k: v for k, v in metrics.items() if k not in ("loss_curve", "plan")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
