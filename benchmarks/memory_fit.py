"""Memory fit per profile: each notebook's t4 and 24gb settings under the memory of a T4 and of a 24 GB card.

On a larger GPU, each measurement caps its own process with torch.cuda.set_per_process_memory_fraction
(15 GiB for t4, 23 GiB for 24gb, by default) and runs a couple of steps of one notebook's work with that
profile's model shape, precision, batch and lengths, in a fresh process:

    03  text SFT (sft_step.py), every sample stretched to the profile's sequence length
    05  vision-language SFT (vl_step.py), the profile's images per batch at the course's pixel budget
    06  GRPO (grpo_step.py), the profile's answers per question, each running to the length limit
    02  evaluation generation (02/04): eval_batch_size prompts at once, max_new_tokens each

A setting fits when it finishes without running out of the capped memory; the table gives its peak
(allocated, and reserved by PyTorch's allocator) and the margin left under the cap. The CUDA context
(0.3–0.6 GiB) is outside the cap, as it is outside what a real card leaves to PyTorch.

    python benchmarks/memory_fit.py --tokenizer .bench --report OUT
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
from helpers.profiles import PROFILES  # noqa: E402  (imports no torch)

CAPS_GIB = {"t4": 15.0, "24gb": 23.0}
NOTEBOOKS = {"03": "text SFT", "05": "VL SFT", "06": "GRPO", "02": "eval generation"}
RANDOM_DIR = Path("/tmp/course-random")


def run_notebook(notebook: str, profile: str, folder: str, backend: str) -> dict:
    """A couple of steps of ``notebook``'s work in ``profile``'s setting, run by its measuring script."""
    if notebook == "03":
        sft = report.load_script("sft_step")
        return sft.measure(folder, backend, profile, steps=1, warmup=1, padding_free=None, lengths="full")
    if notebook == "05":
        from helpers.vision import REAL_MAX_PIXELS

        vl = report.load_script("vl_step")
        return vl.measure(folder, backend, profile, steps=1, max_pixels=REAL_MAX_PIXELS)
    if notebook == "06":
        grpo = report.load_script("grpo_step")
        return grpo.measure(folder, backend, grpo.setting(profile), steps=1)
    if notebook == "02":
        return evaluation(folder, profile, backend)
    raise ValueError(f"unknown notebook {notebook}: choose from {', '.join(NOTEBOOKS)}")


def evaluation(folder: str, profile: str, backend: str) -> dict:
    """One batch of evaluation answers as 02 and 04 generate them: eval_batch_size prompts, full length."""
    from helpers.generation import generate_replies
    from helpers.models import load_text_model

    p = PROFILES[profile]
    model, tokenizer, loaded_with = load_text_model(folder, backend=backend, load_in_4bit=p.load_in_4bit,
                                                    dtype=p.dtype, max_seq_length=p.max_seq_length)
    prompts = report.load_script("generation").exam_prompts(p.eval_batch_size)
    began = time.perf_counter()
    replies = generate_replies(model, tokenizer, prompts, max_new_tokens=p.max_new_tokens,
                               batch_size=p.eval_batch_size)
    return {"backend": loaded_with, "batch": p.eval_batch_size, "max_new_tokens": p.max_new_tokens,
            "new_tokens": sum(r.new_tokens for r in replies), "seconds": time.perf_counter() - began}


def measure_capped(notebook: str, profile: str, folder: str, backend: str, cap_gib: float) -> dict:
    """``run_notebook`` with this process held to ``cap_gib`` of GPU memory; whether it fit, and its peak."""
    import torch

    from helpers.errors import is_out_of_memory

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * 1024**3 / total), 0)
    # The measuring scripts reset the peak after their warm-up; here the peak of the whole run counts.
    torch.cuda.reset_peak_memory_stats = lambda *args, **kwargs: None
    row = {"notebook": notebook, "profile": profile, "cap_gib": cap_gib, "requested": backend}
    try:
        result = run_notebook(notebook, profile, folder, backend)
        row |= {"fits": True, "backend": result.get("backend", backend),
                "detail": {k: v for k, v in result.items() if isinstance(v, int | float | str | bool)}}
    except Exception as error:  # out of memory is the answer "does not fit"; anything else is a failure
        if not is_out_of_memory(error):
            raise
        row |= {"fits": False, "backend": backend, "oom": report.last_line(str(error))}
    row |= {"peak_gib": torch.cuda.max_memory_allocated() / 1024**3,
            "reserved_gib": torch.cuda.max_memory_reserved() / 1024**3,
            "device": torch.cuda.get_device_name(0)}
    return row


def checkpoint(notebook: str, profile: str, tokenizer: str | None) -> str:
    """Random weights of the profile's model shape (text, or vision-language for 05), built once."""
    p = PROFILES[profile]
    if notebook == "05":
        from helpers import vision

        dest = RANDOM_DIR / p.vl_model
        if not (dest / "config.json").is_file():
            processor = vision.build_vl_processor("qwen3_vl", max_pixels=vision.REAL_MAX_PIXELS,
                                                  tokenizer_dir=tokenizer)
            vision.make_random_vl_checkpoint(p.vl_model, dest, processor=processor)
        return str(dest)
    from helpers.architectures import make_random_checkpoint

    return str(make_random_checkpoint(p.text_model, RANDOM_DIR / p.text_model, tokenizer_dir=tokenizer))


def render(result: dict, png: Path | None) -> str:
    """The Markdown table (fits or not, peak and margin under the cap per notebook and profile) and plot."""
    rows, names, peaks, reserved = [], [], [], []
    for r in result["rows"]:
        p = PROFILES[r["profile"]]
        model = p.vl_model if r["notebook"] == "05" else p.text_model
        weights = f"{'4-bit' if p.load_in_4bit else '16-bit'}, {p.dtype}"
        if "error" in r:
            rows.append([r["notebook"], NOTEBOOKS[r["notebook"]], r["profile"], model, weights,
                         report.fmt(r["cap_gib"], ".0f"), f"failed: {report.last_line(r['error'])}"]
                        + [None] * 3)
            continue
        margin = r["cap_gib"] - r["reserved_gib"]
        rows.append([r["notebook"], NOTEBOOKS[r["notebook"]], r["profile"], model, weights,
                     report.fmt(r["cap_gib"], ".0f"), "yes" if r["fits"] else f"no ({r.get('oom', 'OOM')})",
                     report.fmt(r["peak_gib"], ".1f"), report.fmt(r["reserved_gib"], ".1f"),
                     report.fmt(margin, ".1f") if r["fits"] else None])
        names.append(f"{r['notebook']} {r['profile']}")
        peaks.append(r["peak_gib"])
        reserved.append(r["reserved_gib"])
    table = report.markdown_table(["notebook", "work", "profile", "model shape", "weights", "cap GiB", "fits",
                                   "peak GiB", "reserved GiB", "margin GiB"], rows)
    report.bar_plot(png, "Peak GPU memory under the profile's cap", names,
                    {"GiB": {"peak allocated": peaks, "reserved": reserved}})
    return table + ("\n\nCap: torch.cuda.set_per_process_memory_fraction; margin: cap − reserved peak. The "
                    "CUDA context (0.3–0.6 GiB on a real card) comes on top of the cap.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="t4,24gb", help=f"profiles with a cap: {', '.join(CAPS_GIB)}")
    parser.add_argument("--notebooks", default="03,05,06", help=f"any of {', '.join(NOTEBOOKS)}")
    parser.add_argument("--backend", default="unsloth", help="what the notebooks load on a GPU: unsloth")
    parser.add_argument("--caps", default="", help="override caps, e.g. t4=14.5,24gb=22")
    parser.add_argument("--tokenizer", help="tokenizer folder for the random checkpoints (default: embedded)")
    parser.add_argument("--budget", type=float, default=480, help="seconds for the whole run")
    parser.add_argument("--report", help="write memory_fit.json/.md/.png into this folder")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.one:
        print(json.dumps(measure_capped(**json.loads(args.one))))
        return
    caps = CAPS_GIB | {k: float(v) for k, v in (item.split("=") for item in args.caps.split(",") if item)}
    budget = report.Budget(args.budget, floor=60)
    rows = []
    # Every notebook at t4 first: the goal is that each t4 setting fits, and the budget may run out.
    for profile in args.profiles.split(","):
        for notebook in args.notebooks.split(","):
            cap = caps[profile]
            tag = {"notebook": notebook, "profile": profile, "cap_gib": cap, "requested": args.backend}
            if budget.left() < budget.floor:  # before building the checkpoint, which takes time too
                rows.append({**tag, "error": report.NOT_RUN})
                continue
            folder = checkpoint(notebook, profile, args.tokenizer)
            print(f"{notebook} ({NOTEBOOKS[notebook]}) · {profile} under {cap:g} GiB ...", flush=True)
            spec = dict(notebook=notebook, profile=profile, folder=folder, backend=args.backend, cap_gib=cap)
            row = budget.run([__file__, "--one", json.dumps(spec)], **tag)
            rows.append(row)
            print("  " + (report.last_line(row["error"]) if "error" in row else
                          f"fits: {row['fits']}, peak {row['peak_gib']:.1f} GiB"), flush=True)
    if args.report:
        path = report.write_report(args.report, "memory_fit", rows, caps_gib=caps)
        print(path.with_suffix(".md").read_text())
    else:
        print(render({"rows": rows}, None))
    print(f"{budget.spent():.0f} s in all")


if __name__ == "__main__":
    main()
