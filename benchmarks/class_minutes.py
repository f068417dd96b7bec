"""Minutes of compute per notebook, for the teacher's page (docs/teaching.md): measured on cpu, measured on
a GPU at reduced settings, and projected to a T4 at the t4 profile's full settings.

    python benchmarks/class_minutes.py --cpu outputs/cpu --gpu RUN --out docs/class-minutes.md

``--cpu`` and ``--gpu`` are run dirs of the course runner (each with ``executed/`` and ``metrics/``; the
GPU one from a run in the t4 profile, e.g. ``gpu-notebooks.py run t4``). The projection uses what each
notebook measured about itself, not its total time, because the GPU run used fewer steps and questions:

- training (03, 05, and 06's text and VL parts): the steps that ``clock.StepClock`` timed in the notebook's
  metrics as they took (the warm-up among them), then the median of its later steps for each further step
  of the t4 profile (``training_seconds``); the checks before and after training as measured;
- answering (02, 04, and 07's scoring of the GRPO adapter): the seconds per answer of the answering cells,
  times the profile's number of questions;
- both scaled by the ratio of the GPU's published peak figures to a T4's (``PEAKS``, read from the run's
  ``env.json``): dense 16-bit tensor throughput for SFT steps (compute-bound), memory bandwidth for
  answering and the checks (decoding is bandwidth-bound), the larger of the two for GRPO steps (mostly
  generation, partly training). Small batches leave a big GPU idle more than a T4, so the projection is an
  upper estimate;
- every other cell (loading, saving, plots) as measured, unscaled.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from helpers.metrics import load_redteam  # noqa: E402
from helpers.profiles import get_profile  # noqa: E402

# Published peak figures (datasheets): dense 16-bit tensor TFLOP/s (no sparsity), memory bandwidth TB/s.
PEAKS = {"T4": (65.0, 0.32), "H100": (989.0, 3.35), "H200": (989.0, 4.8)}


class Training(NamedTuple):
    """One training part of a notebook: its cells, its steps' profile field, where its metrics are."""

    cell: str
    steps_field: str
    checks: tuple[str, ...]  # the cells that answer before and after training
    generates: bool = False  # GRPO: a step is mostly generation
    metrics_key: str | None = None  # its metrics sit under this key of the notebook's metrics


TRAINING = {
    "03_sft_llm": (Training("nb03-81", "sft_steps", ("nb03-51", "nb03-91")),),
    "05_sft_vl": (Training("nb05-63", "vl_steps", ("nb05-41", "nb05-71")),),
    "06_grpo": (Training("nb06-27", "grpo_steps", ("nb06-23", "nb06-33"), generates=True),
                Training("nb06-vl-11", "grpo_vl_steps", ("nb06-vl-07", "nb06-vl-14"), generates=True,
                         metrics_key="vl")),
}
ANSWERING = {  # notebook: (answering cells, the eval folders whose answers they wrote)
    "02_eval_before": (("nb02-10", "nb02-18", "redteam-code"), ("base",)),
    "04_eval_after": (("nb04-07",), ("sft",)),
    "07_demo": (("nb07-recap-score",), ("grpo",)),
}


def factors(gpu_name: str | None) -> tuple[float, float]:
    """T4 time / this GPU's time, for compute-bound and for bandwidth-bound work, from ``PEAKS``."""
    if gpu_name is None:
        raise ValueError("The run recorded no GPU (a cpu run?): give --factor to project it anyway.")
    chip = next((chip for chip in PEAKS if chip in gpu_name.upper()), None)
    if chip is None:
        raise ValueError(f"No published figures for the GPU {gpu_name!r}: add it to PEAKS, or give --factor.")
    (tflops, tbs), (t4_tflops, t4_tbs) = PEAKS[chip], PEAKS["T4"]
    return tflops / t4_tflops, tbs / t4_tbs


def run_gpu(run: Path) -> str | None:
    """The GPU name the run dir's env.json recorded."""
    env = run / "env.json"
    return json.loads(env.read_text(encoding="utf-8"))["env"].get("gpu_name") if env.is_file() else None


def cell_seconds(executed: Path) -> dict[str, float]:
    """Each cell's run time, by cell id, from papermill's metadata."""
    nb = json.loads(executed.read_text(encoding="utf-8"))
    return {c.get("id", ""): c.get("metadata", {}).get("papermill", {}).get("duration") or 0.0
            for c in nb["cells"] if c["cell_type"] == "code"}


def answers_in(run: Path, label: str) -> int:
    """How many answers the run saved for one model (exam, cases and red team)."""
    folder = run / "eval" / label
    return sum(len(p.read_text(encoding="utf-8").splitlines()) for p in folder.glob("*.jsonl"))


def training_seconds(metrics: dict, steps: int) -> tuple[float, str]:
    """Seconds of ``steps`` training steps at the pace of the run's metrics (``StepClock.timings``), and how.

    The steps the run timed count as they took; the rest at the median of its steps after the first, so
    that a recompilation or a checkpoint save inside a short run does not stand for every step. Metrics
    without each step's seconds (older runs): warm-up + mean step × steps. With one step there is no
    steady time, and the warm-up stands for every step (an upper bound)."""
    durations = metrics.get("step_durations")
    if durations:
        typical = statistics.median(durations[1:] or durations)
        rest = max(0, steps - len(durations))
        timed = f"{len(durations) - 1} steps as timed ({sum(durations[1:]):.0f} s)"
        return (sum(durations) + typical * rest,
                f"{durations[0]:.0f} s warm-up + {timed} + {typical:.2f} s (median) × {rest} steps")
    step = metrics.get("step_seconds") or metrics["warmup_seconds"]
    return (metrics["warmup_seconds"] + step * steps,
            f"{metrics['warmup_seconds']:.0f} s warm-up + {step:.2f} s × {steps} steps")


def project(notebook: str, gpu: Path, factor: tuple[float, float] | None = None,
            profile: str = "t4") -> dict | None:
    """The GPU run's minutes and the projected T4 minutes of one notebook, or None if it did not run.

    ``factor``: (compute, bandwidth) ratios of T4 time to the run's; None reads them from its GPU."""
    executed = gpu / "executed" / f"{notebook}.ipynb"
    if not executed.is_file():
        return None
    compute, bandwidth = factor or factors(run_gpu(gpu))
    seconds = cell_seconds(executed)
    total = sum(seconds.values())
    settings = get_profile(profile)
    if notebook in TRAINING:
        measured = projected = 0.0
        hows = []
        everything = json.loads((gpu / "metrics" / f"{notebook}.json").read_text(encoding="utf-8"))["metrics"]
        for part in TRAINING[notebook]:
            metrics = everything.get(part.metrics_key, {}) if part.metrics_key else everything
            if part.cell not in seconds or "warmup_seconds" not in metrics:
                continue  # the part was switched off in this run
            trained, how = training_seconds(metrics, getattr(settings, part.steps_field))
            checked = sum(seconds.get(c, 0) for c in part.checks)
            ratio = max(compute, bandwidth) if part.generates else compute
            projected += ratio * trained + bandwidth * checked
            measured += seconds[part.cell] + checked
            hows.append(how)
        how = " and ".join(hows) + " + checks"
    elif notebook in ANSWERING:
        cells, labels = ANSWERING[notebook]
        measured = sum(seconds.get(c, 0) for c in cells)
        answered = sum(answers_in(gpu, label) for label in labels)
        wanted = (settings.eval_mcq + settings.eval_open + len(load_redteam()[0])) * len(labels)
        projected = bandwidth * measured / max(answered, 1) * wanted
        how = f"{measured / max(answered, 1):.2f} s per answer × {wanted} answers"
    else:
        return {"gpu": total, "t4": total, "how": "as measured"}
    return {"gpu": total, "t4": total - measured + projected, "how": how}


def table(cpu: Path | None, gpu: Path, factor: tuple[float, float] | None = None) -> str:
    """The markdown minutes table."""
    lines = [f"| notebook | cpu (measured) | GPU run ({run_gpu(gpu) or 'GPU'}, reduced settings) | "
             "T4, t4 profile (projected) | projected from |", "|---|---|---|---|---|"]
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
    parser.add_argument("--factor", type=float,
                        help="T4 time / GPU time for all work (default: from the GPU's published figures)")
    parser.add_argument("--out", type=Path, help="write the table here as well")
    args = parser.parse_args(argv)
    try:
        text = table(args.cpu, args.gpu, (args.factor, args.factor) if args.factor else None)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
