"""SFT throughput, MFU and peak memory: the course's unsloth path against plain transformers + peft.

Each measurement runs `load_text_model` + `add_lora` + optimizer steps on a fixed batch of ``--batch``
sequences of ``--seq`` tokens, in a fresh process (unsloth patches transformers on import, so the
baseline must never see it), and reports tokens/s, MFU and peak GPU memory. Both backends get the same
batch, sequence length and LoRA rank; the baseline is transformers + peft with SDPA attention (the
transformers default, recorded per row). The grid: Qwen3 shapes × 16-bit LoRA or 4-bit QLoRA ×
gradient checkpointing on or off × backend, in the order the goal needs them (1.7B first).

    python benchmarks/train_step.py --random --tokenizer .bench --shapes 1.7B --report OUT
    python benchmarks/train_step.py --tiny --backends transformers --weights bf16 --gc off --seq 64  # a CPU

MFU counts 6·N + 12·L·H·Q·T model FLOPs per token (benchmarks/report.py says what each letter is)
against the GPU's peak dense 16-bit FLOP/s, looked up by name (or --peak-tflops). It stops starting
new measurements after --budget seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import report  # noqa: E402  (after the path insert)

SHAPES = {"1.7B": "Qwen/Qwen3-1.7B", "4B": "Qwen/Qwen3-4B", "8B": "Qwen/Qwen3-8B"}
WEIGHTS = {"bf16": False, "4bit": True}  # load_in_4bit: 16-bit LoRA, or QLoRA on 4-bit NF4 weights
RANDOM_DIR = Path("/tmp/course-random")


def measure(folder: str, backend: str, weights: str, gc: bool, seq: int, batch: int, r: int,
            steps: int, warmup: int = 2) -> dict:
    """One backend, one configuration: tokens/s over ``steps`` steps after ``warmup`` steps."""
    import torch

    from helpers.models import add_lora, count_parameters, load_text_model

    cuda = torch.cuda.is_available()
    dtype = "bfloat16" if cuda else "float32"  # a CPU check runs in 32-bit
    model, _, loaded_with = load_text_model(folder, backend=backend, load_in_4bit=WEIGHTS[weights] and cuda,
                                            dtype=dtype, max_seq_length=seq)
    model = add_lora(model, r=r, alpha=r, backend=loaded_with, gradient_checkpointing=gc)
    trainable, total = count_parameters(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    device = next(p for p in model.parameters() if p.requires_grad).device
    ids = torch.randint(100, 40000, (batch, seq), generator=generator).to(device)
    model.train()
    losses: list[float] = []

    def step() -> None:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    config = model.config
    return {
        "backend": loaded_with, "requested": backend, "weights": weights, "gc": gc, "seq": seq,
        "batch": batch, "r": r, "steps": steps, "dtype": dtype,
        "attention": getattr(config, "_attn_implementation", None),
        "tokens_per_s": batch * seq * steps / seconds, "seconds_per_step": seconds / steps,
        "peak_gib": torch.cuda.max_memory_allocated() / 1024**3 if cuda else None,
        "trainable": trainable, "total": total, "first_loss": losses[0], "last_loss": losses[-1],
        "flops_per_token": report.training_flops_per_token(config, seq),
        "flops_per_token_lora": report.training_flops_per_token(config, seq, trainable),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
    }


def with_mfu(row: dict, peak: float | None) -> dict:
    """The row with its MFU (standard and LoRA-aware FLOPs) against ``peak`` TFLOP/s."""
    if "error" in row:
        return row
    peak = peak or report.peak_tflops(row["device"])
    return {**row, "peak_tflops": peak, "mfu": report.mfu(row["tokens_per_s"], row["flops_per_token"], peak),
            "mfu_lora": report.mfu(row["tokens_per_s"], row["flops_per_token_lora"], peak)}


def plan(shapes: list[str], weights: list[str], gcs: list[bool], backends: list[str]) -> list[dict]:
    """The grid in the order a short budget should spend itself: shape, then checkpointing on before off,
    then 16-bit before 4-bit, each backend side by side."""
    return [dict(shape=s, weights=w, gc=g, backend=b)
            for s in shapes for g in gcs for w in weights for b in backends]


def label(row: dict) -> str:
    """A configuration's short name, e.g. '1.7B bf16 gc'."""
    return f"{row['shape']} {row['weights']} {'gc' if row['gc'] else 'no-gc'}"


def pairs(rows: list[dict]) -> list[tuple[str, dict | None, dict | None]]:
    """(configuration, transformers row, unsloth row) in the order measured."""
    seen: dict[str, dict] = {}
    for row in rows:
        seen.setdefault(label(row), {})[row.get("requested", row["backend"])] = row
    return [(name, by.get("transformers"), by.get("unsloth")) for name, by in seen.items()]


def render(result: dict, png: Path | None) -> str:
    """The Markdown table (one line per configuration, both backends and their ratio) and the plot."""
    rows = []
    for name, base, fast in pairs(result["rows"]):
        def cells(row):
            if row is None:
                return [None, None, None]
            if "error" in row:
                return [f"failed: {report.last_line(row['error'])}", None, None]
            fell_back = row["backend"] != row.get("requested", row["backend"])
            return [report.fmt(row["tokens_per_s"]) + (f" ({row['backend']})" if fell_back else ""),
                    report.fmt(row.get("mfu"), ".1%"), report.fmt(row["peak_gib"], ".1f")]

        ok = base and fast and "error" not in base and "error" not in fast
        speed = report.fmt(fast["tokens_per_s"] / base["tokens_per_s"], ".2f", "×") if ok else None
        memory = (report.fmt(fast["peak_gib"] / base["peak_gib"], ".2f", "×")
                  if ok and base["peak_gib"] and fast["peak_gib"] else None)
        shape = next(r for r in (base, fast) if r)
        rows.append([name, f"{shape['seq']} × {shape['batch']}", shape["r"], *cells(base), *cells(fast),
                     speed, memory])
    table = report.markdown_table(
        ["configuration", "seq × batch", "LoRA r", "transformers tok/s", "MFU", "peak GiB",
         "unsloth tok/s", "MFU", "peak GiB", "speed", "memory"], rows)
    names = [name for name, _, _ in pairs(result["rows"])]

    def series(key: str) -> dict[str, list[float | None]]:
        return {backend: [row.get(key) if row and "error" not in row else None
                          for row in (p[1 + k] for p in pairs(result["rows"]))]
                for k, backend in enumerate(("transformers + peft", "unsloth"))}

    report.bar_plot(png, "LoRA SFT steps on random batches", names,
                    {"tokens/s": series("tokens_per_s"), "peak GiB": series("peak_gib")})
    goal = goal_lines(result["rows"])
    peak = next((r["peak_tflops"] for r in result["rows"] if r.get("peak_tflops")), None)
    note = (f"MFU: {report.FLOPS_FORMULA} over the GPU's peak dense 16-bit FLOP/s "
            f"({report.fmt(peak, ',.0f', ' TFLOP/s') or 'unknown: pass --peak-tflops'}); the JSON also "
            f"has `mfu_lora` ({report.FLOPS_FORMULA_LORA}). speed and memory: unsloth ÷ transformers.")
    return table + "\n\n" + note + ("\n\n" + "\n".join(goal) if goal else "")


def goal_lines(rows: list[dict]) -> list[str]:
    """The course's path (unsloth, checkpointing on, as add_lora sets it) against the transformers +
    peft baseline with checkpointing on and off, per shape and weights: the numbers the goal is about."""
    ok = [r for r in rows if "error" not in r and r["backend"] == r.get("requested", r["backend"])]
    lines = []
    for fast in (r for r in ok if r["backend"] == "unsloth" and r["gc"]):
        parts = []
        for gc in (True, False):
            base = next((r for r in ok if r["backend"] == "transformers" and r["gc"] == gc
                         and r["shape"] == fast["shape"] and r["weights"] == fast["weights"]), None)
            if base and base["peak_gib"] and fast["peak_gib"]:
                parts.append(f"vs transformers {'with' if gc else 'without'} checkpointing "
                             f"{fast['tokens_per_s'] / base['tokens_per_s']:.2f}× tokens/s, "
                             f"{fast['peak_gib'] / base['peak_gib']:.2f}× peak memory")
        if parts:
            name = f"{fast['shape']} {fast['weights']}"
            lines.append(f"- {name}, unsloth with checkpointing: " + "; ".join(parts))
    return lines


def checkpoint(args, model_id: str) -> str:
    """The model folder for a shape: random weights of its real layout, built once per machine."""
    from helpers.architectures import TINY_QWEN3, make_random_checkpoint

    if args.tiny:
        return str(make_random_checkpoint(TINY_QWEN3, RANDOM_DIR / TINY_QWEN3, dtype="float32",
                                          tokenizer_dir=args.tokenizer))
    if args.random:
        return str(make_random_checkpoint(model_id, RANDOM_DIR / model_id, tokenizer_dir=args.tokenizer))
    return model_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1.7B", help=f"Qwen3 sizes: {', '.join(SHAPES)}")
    parser.add_argument("--weights", default="bf16,4bit", help="bf16 (LoRA) and/or 4bit (QLoRA)")
    parser.add_argument("--gc", default="on,off", help="gradient checkpointing: on and/or off")
    parser.add_argument("--backends", default="transformers,unsloth")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--r", type=int, default=16, help="LoRA rank (alpha equal to it)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps, after two warm-up steps")
    parser.add_argument("--random", action="store_true", help="random weights of each shape (no download)")
    parser.add_argument("--tiny", action="store_true", help="a two-layer Qwen3 instead, to check on a CPU")
    parser.add_argument("--tokenizer", help="tokenizer folder for --random/--tiny (default: embedded)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's peak bf16 TFLOP/s (default: by name)")
    parser.add_argument("--budget", type=float, default=420, help="seconds for the whole run")
    parser.add_argument("--report", help="write train_step.json/.md/.png into this folder")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        print(json.dumps(measure(**json.loads(args.one))))
        return
    budget = report.Budget(args.budget, floor=45)
    gcs = [{"on": True, "off": False}[g] for g in args.gc.split(",")]
    shapes = ["tiny"] if args.tiny else args.shapes.split(",")
    rows: list[dict] = []
    folders: dict[str, str] = {}
    for item in plan(shapes, args.weights.split(","), gcs, args.backends.split(",")):
        tag = {**item, "requested": item["backend"], "seq": args.seq, "batch": args.batch, "r": args.r}
        if budget.left() < budget.floor:
            rows.append({**tag, "error": report.NOT_RUN})
            continue
        if item["shape"] not in folders:
            folders[item["shape"]] = checkpoint(args, SHAPES.get(item["shape"], item["shape"]))
        print(f"{label(item)} · {item['backend']} ...", flush=True)
        spec = dict(folder=folders[item["shape"]], backend=item["backend"], weights=item["weights"],
                    gc=item["gc"], seq=args.seq, batch=args.batch, r=args.r, steps=args.steps)
        result = budget.run([__file__, "--one", json.dumps(spec)], **tag)
        rows.append(with_mfu({**tag, **result}, args.peak_tflops))
        peak = report.fmt(result.get("peak_gib"), ".1f", " GiB") or "–"
        shown = report.last_line(result["error"]) if "error" in result else \
            f"{result['tokens_per_s']:,.0f} tok/s, peak {peak}"
        print(f"  {shown}", flush=True)
    if not args.report:
        print(render({"rows": rows}, None))
    else:
        path = report.write_report(args.report, "train_step", rows, flops=report.FLOPS_FORMULA,
                                   flops_lora=report.FLOPS_FORMULA_LORA)
        print(path.with_suffix(".md").read_text())
    print(f"{budget.spent():.0f} s in all")


if __name__ == "__main__":
    main()
