"""SFT speed and memory as notebook 03 trains: unsloth against plain transformers + peft.

Each measurement runs, in a fresh process (unsloth patches transformers and TRL on import, so the
baseline must never see it), what 03_sft_llm.ipynb runs: `load_text_model` + `add_lora` (the adapters of
03's LoRA cell: tests/test_lora_cells.py) + TRL's `SFTTrainer` with the `SFTConfig` of 03's own cell, on
the course's SFT samples rendered with the chat template, loss on the completion only, with each
profile's precision, LoRA rank, batch size and gradient accumulation. Both backends pad batches grouped
by length, as the notebook does. The table gives tokens/s (real tokens, padding not counted) and peak GPU
memory, and unsloth as a ratio of the baseline.

    python benchmarks/sft_step.py --random --tokenizer .bench --out sft_step.json
    python benchmarks/sft_step.py --random --tokenizer .bench/tokenizer --settings 80gb \
        --batching padding-free,padded --report OUT        # what padding-free batching buys

--batching padding-free,padded measures each backend both ways on the same samples (by default each
backend batches as 03 does); padded-random pads batches drawn at random instead of grouped by length.
--lengths sets the samples' lengths: "samples" (the course's offline samples, ~240 tokens), "real"
(each stretched to a seeded length of 300-1000 tokens, as medical-o1's reasoning runs) or "full" (the
profile's sequence length: the largest batch a profile can meet, which memory_fit.py runs under a cap).

--check-packing asks, per backend, whether rows packed into one sequence (padding-free) stay apart: the
mean loss per token of four real-length rows packed with position ids, against each row alone and
against the rows concatenated with no position ids; and whether the packed loss of rows 2-4 changes
when row 1 is replaced. Where it changes, attention crossed the rows, and padding-free is wrong there.

    python benchmarks/sft_step.py --random --tokenizer .bench/tokenizer --settings t4 --lengths real \
        --batching padding-free,padded,padded-random --check-packing --report OUT

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
BATCHINGS = {"padding-free": True, "padded": False, "padded-random": "random"}  # --batching → padding_free
REAL_LENGTHS = (300, 1000)  # tokens per sample with --lengths real: medical-o1's reasoning is ~700 on average


def setting_plan(setting: str) -> dict:
    """What 03 does in this setting: the profile's precision, LoRA rank, batch and accumulation."""
    from helpers.profiles import PROFILES

    full = setting.endswith("-full")
    p = PROFILES[setting.removesuffix("-full")]
    return dict(full=full, load_in_4bit=p.load_in_4bit and not full, dtype=p.dtype, seq=p.max_seq_length,
                r=p.lora_r, alpha=p.lora_alpha, batch=p.sft_batch_size, accum=p.sft_grad_accum)


def sft_config(output_dir: str, setting: str, plan: dict, steps: int, padding_free: bool | str):
    """The SFTConfig 03 trains with: its plan cell and its ``SFTConfig`` cell, run for this setting
    (``padding_free="random"``: padded batches drawn at random, not grouped by length)."""
    from helpers import notebook

    knobs = {"PROFILE": setting.removesuffix("-full"), "RUN_NAME": str(Path(output_dir).resolve()),
             "FULL_FINETUNE": plan["full"], "STEPS": steps, "TRACKING": "none",
             "PADDING_FREE": padding_free is True,
             "SAVE_EVERY": 10**9}  # a benchmark saves no checkpoints
    ns = notebook.run_recipe("sft", knobs, tag=("plan", "sft-config"),
                             namespace={"backend": "unsloth" if padding_free is True else "transformers",
                                        "held_rows": []})  # no held-out loss in a benchmark
    args = ns["args"]
    args.save_strategy = "no"  # a benchmark saves nothing: an 8B checkpoint with its optimizer is ~50 GB
    if padding_free == "random":
        args.train_sampling_strategy = "random"
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


def stretched_rows(tokenizer, rows: list[dict], lengths: list[int]) -> list[dict]:
    """Each row with its completion repeated, then cut, so that prompt + completion fill about the row's
    entry of ``lengths`` tokens (the reasoning grows, as real medical-o1 reasoning is longer)."""
    stretched = []
    for row, length in zip(rows, lengths, strict=True):
        prompt = len(tokenizer(row["prompt"], add_special_tokens=False)["input_ids"])
        ids = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        want = max(length - prompt - 16, 1)  # slack: the cut text may tokenize a few tokens longer
        ids = (ids * (want // max(len(ids), 1) + 1))[:want]
        stretched.append({**row, "completion": tokenizer.decode(ids)})
    return stretched


def sample_rows(tokenizer, lengths: str, seq: int, seed: int = 0) -> list[dict]:
    """The course's SFT samples as 03 renders them, at ``lengths``: "samples" as they are, "real" each
    stretched to a seeded length in REAL_LENGTHS (never past ``seq``), "full" each to ``seq``."""
    import random

    from helpers import datasets

    rows = [datasets.to_prompt_completion(tokenizer, ex) for ex in datasets.load_sft_examples().examples]
    if lengths == "full":
        return stretched_rows(tokenizer, rows, [seq] * len(rows))
    if lengths == "real":
        rng = random.Random(seed)
        return stretched_rows(tokenizer, rows, [min(seq, rng.randint(*REAL_LENGTHS)) for _ in rows])
    return rows


def length_stats(lengths: list[int]) -> dict:
    """Mean, median, 90th percentile and maximum of the samples' token counts."""
    ordered = sorted(lengths)

    def quantile(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"samples": len(ordered), "mean": sum(ordered) / len(ordered), "p50": quantile(0.5),
            "p90": quantile(0.9), "max": ordered[-1]}


def measure(folder: str, backend: str, setting: str, steps: int, warmup: int,
            padding_free: bool | str | None, lengths: str = "samples") -> dict:
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

    from helpers import training

    if plan["full"]:
        model.requires_grad_(True)
    else:
        model = add_lora(model, r=plan["r"], alpha=plan["alpha"], backend=loaded_with,
                         gradient_checkpointing=cuda)
    trainable, total = count_parameters(model)
    rows = sample_rows(tokenizer, lengths, plan["seq"])
    if padding_free is None:
        padding_free = False  # as 03: padded batches, grouped by length
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
    sample_lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    trainer.train()
    seconds = clock.ended - clock.began
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "backend": loaded_with, "requested": backend, "setting": setting, **plan,
        "padding_free": padding_free, "lengths": lengths, "sample_tokens": length_stats(sample_lengths),
        "steps": steps, "examples_per_step": plan["batch"] * plan["accum"],
        "tokens_per_s": clock.tokens / seconds, "seconds_per_step": seconds / steps,
        "padding_share": 1 - clock.tokens / clock.padded if clock.padded else 0.0,
        "peak_gb": torch.cuda.max_memory_allocated() / 1024**3 if cuda else 0.0,
        "reserved_gb": torch.cuda.max_memory_reserved() / 1024**3 if cuda else 0.0,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "trainable": trainable, "total": total, "first_loss": losses[0], "last_loss": losses[-1],
    }


def packed_losses(model, rows: list[list[int]]) -> dict:
    """Mean loss per token of ``rows`` (token id lists): each row alone, all packed into one sequence with
    position ids restarting at each row (what padding-free batching feeds the model), and concatenated with
    no position ids. The same target tokens count in all three: a row's first token is never a target."""
    import torch

    device = next(model.parameters()).device

    def loss_sum(ids: list[int], starts: list[int], position_ids=None) -> tuple[float, int]:
        input_ids = torch.tensor([ids], device=device)
        labels = input_ids.clone()
        labels[0, starts] = -100  # a row's first token is not predicted from the row before
        out = model(input_ids=input_ids, labels=labels, position_ids=position_ids)
        count = int((labels[0, 1:] != -100).sum())
        return float(out.loss) * count, count

    with torch.no_grad():
        alone = [loss_sum(ids, [0]) for ids in rows]
        flat = [t for ids in rows for t in ids]
        starts = [sum(len(r) for r in rows[:i]) for i in range(len(rows))]
        positions = torch.cat([torch.arange(len(r)) for r in rows]).unsqueeze(0).to(device)
        packed = loss_sum(flat, starts, positions)
        concatenated = loss_sum(flat, starts)
        # Row 1 comes first, so its own loss is the same packed or alone; what packing adds is the rows
        # after it. Replace row 1 by other tokens of its length: if the rows stay apart, the loss of
        # rows 2..n does not move.
        other = [(t * 7 + 11) % model.config.vocab_size for t in rows[0]]
        tail = packed[0] - alone[0][0]
        packed_other = loss_sum(other + flat[len(rows[0]):], starts, positions)[0]
        tail_with_other = packed_other - loss_sum(other, [0])[0]
        tail_shift = abs(tail_with_other - tail) / (packed[1] - alone[0][1])
    total = sum(c for _, c in alone)
    mean = {"alone": sum(s for s, _ in alone) / total, "packed": packed[0] / packed[1],
            "concatenated": concatenated[0] / concatenated[1]}
    return {**mean, "packed_gap": abs(mean["packed"] - mean["alone"]),
            "concatenated_gap": abs(mean["concatenated"] - mean["alone"]), "tail_shift": tail_shift,
            "row_tokens": [len(r) for r in rows]}


def check_packing(folder: str, backend: str, setting: str, seed: int = 0) -> dict:
    """Whether ``backend`` keeps packed rows apart, loaded as 03 loads it in ``setting``, with LoRA."""
    import random

    import torch

    from helpers.models import add_lora, load_text_model

    plan = setting_plan(setting)
    if not torch.cuda.is_available():
        plan.update(load_in_4bit=False, dtype="float32")
    model, tokenizer, loaded_with = load_text_model(
        folder, backend=backend, load_in_4bit=plan["load_in_4bit"], dtype=plan["dtype"],
        max_seq_length=plan["seq"])
    model = add_lora(model, r=plan["r"], alpha=plan["alpha"], backend=loaded_with,
                     gradient_checkpointing=False)
    rng = random.Random(seed)
    rows = sample_rows(tokenizer, "samples", plan["seq"])
    rows = stretched_rows(tokenizer, rows[:4], [rng.randint(150, 700) for _ in range(4)])
    ids = [tokenizer(r["prompt"] + r["completion"], add_special_tokens=False)["input_ids"] for r in rows]
    result = packed_losses(model, ids)
    # Kept apart: replacing row 1 moves the others' loss by less than 10^-3 nats a token (rounding, not
    # attention), and packing lands at least ten times nearer the rows alone than concatenation does.
    apart = result["tail_shift"] < 1e-3 and result["packed_gap"] * 10 < max(result["concatenated_gap"], 1e-6)
    return {"backend": loaded_with, "requested": backend, "setting": setting, **plan, **result,
            "rows_kept_apart": apart, "attention": getattr(model.config, "_attn_implementation", None),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}


def render_packing(rows: list[dict]) -> str:
    """The packing check as a table: mean loss per token, alone / packed / concatenated, per backend."""
    table = []
    for r in rows:
        if "error" in r:
            table.append([r["backend"], f"failed: {report.last_line(r['error'])}"] + [None] * 5)
            continue
        table.append([r["backend"], r["attention"], f"{r['alone']:.5f}", f"{r['packed']:.5f}",
                      f"{r['concatenated']:.5f}", f"{r['tail_shift']:.2e}",
                      "yes" if r["rows_kept_apart"] else "**no: rows mix**"])
    return report.markdown_table(["backend", "attention", "rows alone", "packed (position ids)",
                                  "concatenated (no position ids)", "rows 2-4 shift when row 1 changes",
                                  "rows kept apart"], table)


def run_isolated(budget: report.Budget, folder: str, backend: str, setting: str, steps: int, warmup: int,
                 padding_free: bool | str | None = None, lengths: str = "samples") -> dict:
    """``measure`` in a fresh process with what is left of ``budget``."""
    command = [__file__, "--one", backend, "--folder", folder, "--settings", setting,
               "--steps", str(steps), "--warmup", str(warmup), "--lengths", lengths]
    if padding_free is not None:
        command += ["--padding-free", str(padding_free).lower()]
    return budget.run(command, backend=backend, requested=backend, setting=setting,
                      padding_free=padding_free, lengths=lengths)


def _lengths(row: dict) -> str:
    return row.get("lengths") or ("full" if row.get("full_length") else "samples")  # older JSON: full_length


def _matches(row: dict, other: dict) -> bool:
    return "error" not in other and other["setting"] == row["setting"] and _lengths(other) == _lengths(row)


def render(result: dict, png: Path | None) -> str:
    """The Markdown table: real (non-padding) tokens/s per setting, backend and batching, with ratios
    against transformers with padded batches and against the same backend padded; and the plot."""
    rows, names, speeds, memories = [], [], {}, {}
    for r in result["rows"]:
        batching = {True: "padding-free", False: "padded", "random": "padded-random", None: "as 03"}[
            r.get("padding_free")]
        if "error" in r:
            rows.append([r["setting"], r["backend"], batching, f"failed: {report.last_line(r['error'])}"]
                        + [None] * 8)
            continue
        base = next((b for b in result["rows"] if _matches(r, b) and b["backend"] == "transformers"
                     and b["padding_free"] is False), None)
        own = next((b for b in result["rows"] if _matches(r, b) and b["backend"] == r["backend"]
                    and b["padding_free"] is False), None)
        vs_base = report.fmt(r["tokens_per_s"] / base["tokens_per_s"], ".2f", "×") if base else None
        vs_own = report.fmt(r["tokens_per_s"] / own["tokens_per_s"], ".2f", "×") if own else None
        memory = report.fmt(r["peak_gb"] / base["peak_gb"], ".2f", "×") if base and base["peak_gb"] else None
        tokens = r.get("sample_tokens") or {}
        lengths = f"{tokens['mean']:.0f} / {tokens['p90']} / {tokens['max']}" if tokens else None
        requested = r.get("requested", r["backend"])
        backend = r["backend"] if requested == r["backend"] else f"{requested}→{r['backend']}"  # a fallback
        per_step = report.fmt(r["tokens_per_s"] * r["seconds_per_step"])  # which rows the timed steps drew
        rows.append([r["setting"], backend, batching, lengths, per_step, report.fmt(r["tokens_per_s"]),
                     report.fmt(r["padding_share"], ".0%"), report.fmt(r["seconds_per_step"], ".2f"),
                     report.fmt(r["peak_gb"] or None, ".1f"), vs_base, memory, vs_own])
        name = f"{r['setting']} {backend} {batching}"
        names.append(name)
        speeds[name], memories[name] = r["tokens_per_s"], r["peak_gb"] or None
    table = report.markdown_table(
        ["setting", "backend", "batching", "sample tokens (mean / p90 / max)", "real tokens a step",
         "real tok/s", "padding",
         "s/step", "peak GiB", "speed vs transformers padded", "memory vs transformers padded",
         "speed vs same backend padded"], rows)
    report.bar_plot(png, "SFT as in 03: real (non-padding) tokens/s", names,
                    {"real tokens/s": {"measured": [speeds[n] for n in names]},
                     "peak GiB": {"measured": [memories[n] for n in names]}})
    text = table + ("\n\nReal tokens/s counts the samples' own tokens, never padding: the effective "
                    "throughput. A step takes the profile's batch × gradient accumulation samples.")
    return text + ("\n\n" + render_packing(result["packing"]) if result.get("packing") else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen/Qwen3-1.7B", help="hub id (with --random: its shape)")
    parser.add_argument("--folder", help="a local model folder (default: resolve --model)")
    parser.add_argument("--random", action="store_true", help="random weights of the model's real shape")
    parser.add_argument("--tokenizer", help="tokenizer folder for --random (default: the embedded one)")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--backends", default="transformers,unsloth")
    parser.add_argument("--batching", default="course",
                        help="'course' (as 03: padded, grouped by length) or any of "
                             "padding-free,padded,padded-random for every backend")
    parser.add_argument("--lengths", choices=("samples", "real", "full"), default="samples",
                        help="the samples as they are, stretched to 300-1000 tokens, or to the profile's")
    parser.add_argument("--check-packing", action="store_true",
                        help="first, per backend: do packed rows stay apart (packed vs separate loss)")
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    parser.add_argument("--budget", type=float, default=420, help="seconds for the whole run")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--padding-free", choices=("true", "false", "random"), help=argparse.SUPPRESS)
    parser.add_argument("--packing-one", help=argparse.SUPPRESS)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--report", help="write sft_step.json/.md/.png into this folder")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the course's offline samples; no hub needed

    if args.one:
        padding_free = {None: None, "true": True, "false": False, "random": "random"}[args.padding_free]
        result = measure(args.folder, args.one, args.settings, args.steps, args.warmup, padding_free,
                         args.lengths)
        print(json.dumps(result))
        return
    if args.packing_one:
        print(json.dumps(check_packing(args.folder, args.packing_one, args.settings)))
        return
    budget = report.Budget(args.budget)
    folder = args.folder
    if args.random:
        from helpers.architectures import make_random_checkpoint

        folder = str(make_random_checkpoint(args.model, Path("/tmp/course-random") / args.model,
                                            tokenizer_dir=args.tokenizer))
    folder = folder or args.model
    batchings = [None] if args.batching == "course" else [BATCHINGS[b] for b in args.batching.split(",")]
    packing = []
    for backend in args.backends.split(",") if args.check_packing else []:
        print(f"packing check · {backend} ...", flush=True)
        setting = args.settings.split(",")[0]
        packing.append(report.run_isolated([__file__, "--packing-one", backend, "--folder", folder,
                                            "--settings", setting], args.budget / 4, backend=backend,
                                           setting=setting))
    runs = [(s, b, pf) for s in args.settings.split(",") for b in args.backends.split(",") for pf in batchings
            if not (s.endswith("-full") and b != "transformers")]  # 03 fine-tunes in full with transformers
    results = []
    for setting, backend, padding_free in runs:
        if budget.left() >= budget.floor:
            print(f"{setting} · {backend} · {padding_free=} ...", flush=True)
        results.append(run_isolated(budget, folder, backend, setting, args.steps, args.warmup, padding_free,
                                    args.lengths))
    print(f"\n{args.model}{' (random weights, real shape)' if args.random else ''}: SFT as in 03, "
          f"{args.steps} timed steps after {args.warmup}, {budget.spent():.0f} s in all")
    print(render({"rows": results}, None))
    if packing:
        print("\n" + render_packing(packing))
    if args.out:
        Path(args.out).write_text(json.dumps(results + packing, indent=2))
    if args.report:
        report.write_report(args.report, "sft_step", results, packing=packing, model=args.model,
                            random=args.random)


if __name__ == "__main__":
    main()
