"""Minutes of compute per notebook, for the teacher's page (docs/teaching.md): measured on cpu, measured on
a GPU at reduced settings, and projected to a T4 at the t4 profile's full settings.

    python benchmarks/class_minutes.py --cpu outputs/cpu --gpu RUN --out docs/class-minutes.md

``--cpu`` and ``--gpu`` are run dirs of the course runner (each with ``executed/`` and ``metrics/``; the
GPU one from a run in the t4 profile, e.g. ``gpu-notebooks.py run t4``). The projection uses what each
notebook measured about itself, not its total time, because the GPU run used fewer steps and questions:

- training (03, 05, 06): the warm-up step and the steady step time that ``clock.StepClock`` saved in the
  notebook's metrics, times the t4 profile's steps; the checks before and after training as measured;
- answering (02, 04, and 07's scoring of the GRPO adapter): the seconds per answer of the answering cells,
  times the profile's number of questions;
- both scaled by ``FACTOR``, the published ratio of an H200 to a T4: dense 16-bit tensor throughput
  989 / 65 TFLOP/s = 15.2 (training is compute-bound) and memory bandwidth 4.8 / 0.32 TB/s = 15
  (decoding is bandwidth-bound). Small batches leave an H200 idle more than a T4, so the projection is an
  upper estimate;
- every other cell (loading, saving, plots) as measured, unscaled.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from helpers.metrics import load_redteam  # noqa: E402
from helpers.profiles import get_profile  # noqa: E402

FACTOR = 15.0
TRAINING = {  # notebook: (training cell, profile field of its steps, the check cells before and after)
    "03_sft_llm": ("nb03-81", "sft_steps", ("nb03-51", "nb03-91")),
    "05_sft_vl": ("nb05-63", "vl_steps", ("nb05-41", "nb05-71")),
    "06_grpo": ("nb06-27", "grpo_steps", ("nb06-23", "nb06-33")),
}
ANSWERING = {  # notebook: (answering cells, the eval folders whose answers they wrote)
    "02_eval_before": (("nb02-10", "nb02-18", "redteam-code"), ("base",)),
    "04_eval_after": (("nb04-07",), ("sft",)),
    "07_demo": (("nb07-recap-score",), ("grpo",)),
}


def cell_seconds(executed: Path) -> dict[str, float]:
    """Each cell's run time, by cell id, from papermill's metadata."""
    nb = json.loads(executed.read_text(encoding="utf-8"))
    return {c.get("id", ""): c.get("metadata", {}).get("papermill", {}).get("duration") or 0.0
            for c in nb["cells"] if c["cell_type"] == "code"}


def answers_in(run: Path, label: str) -> int:
    """How many answers the run saved for one model (exam, cases and red team)."""
    folder = run / "eval" / label
    return sum(len(p.read_text(encoding="utf-8").splitlines()) for p in folder.glob("*.jsonl"))


def project(notebook: str, gpu: Path, factor: float = FACTOR, profile: str = "t4") -> dict | None:
    """The GPU run's minutes and the projected T4 minutes of one notebook, or None if it did not run."""
    executed = gpu / "executed" / f"{notebook}.ipynb"
    if not executed.is_file():
        return None
    seconds = cell_seconds(executed)
    total = sum(seconds.values())
    settings = get_profile(profile)
    if notebook in TRAINING:
        cell, steps_field, checks = TRAINING[notebook]
        metrics = json.loads((gpu / "metrics" / f"{notebook}.json").read_text(encoding="utf-8"))["metrics"]
        steps = getattr(settings, steps_field)
        checked = sum(seconds.get(c, 0) for c in checks)
        work = metrics["warmup_seconds"] + metrics["step_seconds"] * steps + checked
        measured = seconds.get(cell, 0) + checked
        how = (f"{metrics['warmup_seconds']:.0f} s warm-up + {metrics['step_seconds']:.2f} s × {steps} steps "
               "+ checks")
    elif notebook in ANSWERING:
        cells, labels = ANSWERING[notebook]
        measured = sum(seconds.get(c, 0) for c in cells)
        answered = sum(answers_in(gpu, label) for label in labels)
        wanted = (settings.eval_mcq + settings.eval_open + len(load_redteam()[0])) * len(labels)
        work = measured / max(answered, 1) * wanted
        how = f"{measured / max(answered, 1):.2f} s per answer × {wanted} answers"
    else:
        return {"gpu": total, "t4": total, "how": "as measured"}
    return {"gpu": total, "t4": total - measured + factor * work, "how": how}


def table(cpu: Path | None, gpu: Path, factor: float = FACTOR) -> str:
    """The markdown minutes table."""
    lines = ["| notebook | cpu (measured) | GPU run (H200, reduced settings) | T4, t4 profile (projected) | "
             "projected from |", "|---|---|---|---|---|"]
    runs = [run for run in (cpu, gpu) if run is not None]
    names = sorted({p.stem for run in runs for p in (run / "executed").glob("[0-9][0-9]_*.ipynb")})
    for name in names:
        row = project(name, gpu, factor)
        on_cpu = cpu / "executed" / f"{name}.ipynb" if cpu else None
        cpu_min = f"{sum(cell_seconds(on_cpu).values()) / 60:.1f}" if on_cpu and on_cpu.is_file() else "—"
        gpu_cols = (f"{row['gpu'] / 60:.1f} | {row['t4'] / 60:.0f} | {row['how']}" if row
                    else "— | — | not in the GPU run")
        lines.append(f"| {name} | {cpu_min} | {gpu_cols} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", type=Path, help="a cpu run dir (with executed/)")
    parser.add_argument("--gpu", type=Path, required=True,
                        help="a t4-profile GPU run dir (executed/, metrics/, eval/)")
    parser.add_argument("--factor", type=float, default=FACTOR, help="T4 time / H200 time (default 15)")
    parser.add_argument("--out", type=Path, help="write the table here as well")
    args = parser.parse_args(argv)
    text = table(args.cpu, args.gpu, args.factor)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
