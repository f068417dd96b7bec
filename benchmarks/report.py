"""What the benchmark scripts share: a fresh process per measurement, the FLOPs count, and the report.

Every script writes its report into one folder as ``<bench>.json`` (the environment, the command and
one row per measurement), ``<bench>.md`` (the table) and ``<bench>.png`` (the plot, where matplotlib
is installed). The tables and plots are drawn from the JSON alone, so they can be drawn again, or
merged from two runs (say one without unsloth and one with it), on any machine:

    python benchmarks/report.py render OUT                       # OUT/*.json -> .md, .png, summary.md
    python benchmarks/report.py merge RUN_A RUN_B --out MERGED   # the rows of both runs, one report

Model FLOPs per trained token (the PaLM paper's count, appendix B, with N the weights every token is
multiplied by: the decoder's linear layers and the output head, embedding lookups excluded):

    6·N + 12·L·H·Q·T        L layers, H attention heads of Q dims each, T the sequence length

MFU is that times tokens/s over the GPU's peak dense 16-bit tensor FLOP/s. Recomputation under
gradient checkpointing is not counted (it is hardware work, not model work). A LoRA step skips the
weight gradients of frozen layers, so it does less than 6·N: ``mfu_lora`` counts
4·N + 6·N_trainable + 12·L·H·Q·T instead.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NOT_RUN = "not run (time budget)"  # the error of a measurement a budget left out
FLOPS_FORMULA = "6·N + 12·L·H·Q·T per token (N: linear + output-head weights; PaLM, appendix B)"
FLOPS_FORMULA_LORA = "4·N + 6·N_trainable + 12·L·H·Q·T per token (no weight gradients for frozen layers)"

# Peak dense bf16/fp16 tensor TFLOP/s (no sparsity), from the vendors' data sheets. Matched in order
# against torch.cuda.get_device_name(), so the more specific names come first.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200", 989.0), ("H100", 989.0), ("H800", 989.0),
    ("H20", 148.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L4", 121.0), ("T4", 65.0),
)
PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "unsloth", "unsloth_zoo",
            "vllm", "datasets")


# --- FLOPs and MFU -----------------------------------------------------------------------------

def _text_config(config):
    return getattr(config, "text_config", None) or config


def matmul_parameters(config) -> int:
    """N: the weights every token is multiplied by (attention and MLP projections of every layer, and the
    output head), from a Llama/Qwen-style config; embedding lookups cost no FLOPs."""
    c = _text_config(config)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    attention = c.hidden_size * head_dim * (2 * c.num_attention_heads + 2 * kv_heads)  # q, o; k, v
    mlp = 3 * c.hidden_size * c.intermediate_size  # gate, up, down
    return c.num_hidden_layers * (attention + mlp) + c.hidden_size * c.vocab_size


def attention_flops(config, seq: int) -> int:
    """12·L·H·Q·T: scores and weighted sums, forward and backward, per token of a T-token sequence."""
    c = _text_config(config)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 12 * c.num_hidden_layers * c.num_attention_heads * head_dim * seq


def training_flops_per_token(config, seq: int, trainable: int | None = None) -> float:
    """Model FLOPs to train on one token: 6·N + attention, or with ``trainable`` (LoRA) 4·N + 6·N_trainable
    + attention."""
    n = matmul_parameters(config)
    dense = 6 * n if trainable is None else 4 * n + 6 * trainable
    return float(dense + attention_flops(config, seq))


def peak_tflops(device_name: str) -> float | None:
    """The GPU's peak dense 16-bit TFLOP/s, or None for a GPU not in the table (pass --peak-tflops)."""
    return next((tflops for key, tflops in PEAK_TFLOPS if key.lower() in device_name.lower()), None)


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak (None without a peak)."""
    return tokens_per_s * flops_per_token / (peak * 1e12) if peak else None


# --- a measurement in a fresh process -------------------------------------------------------------

def run_isolated(command: list[str], timeout: float | None, *, env: dict[str, str] | None = None,
                 **label) -> dict:
    """Run a script's ``--one`` measurement in a fresh Python process and return the JSON it prints last.

    A fresh process per measurement, because unsloth patches transformers, peft and TRL on import (the
    baseline must never see it) and because peak memory must start from nothing. ``env`` is added to this
    process's environment (unsloth reads its switches on import); ``timeout`` None sets no limit. A failure
    or timeout becomes a row with ``error``, tagged with ``label``, so one bad setting never stops a run.
    """
    try:
        done = subprocess.run([sys.executable, *command], capture_output=True, text=True,
                              timeout=None if timeout is None else max(timeout, 1),
                              env={**os.environ, **env} if env else None)
    except subprocess.TimeoutExpired:
        return {**label, "error": f"stopped after {timeout:.0f} s (time budget)"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {**label, "error": (done.stderr or done.stdout)[-3000:] or f"exit code {done.returncode}"}
    return json.loads(lines[-1])


class Budget:
    """A run's seconds: each measurement gets what is left, and none starts with less than ``floor`` left
    (it becomes a row "not run (time budget)", so the report says what is missing)."""

    def __init__(self, seconds: float, floor: float = 30):
        self.seconds, self.floor, self.began = seconds, floor, time.perf_counter()

    def spent(self) -> float:
        return time.perf_counter() - self.began

    def left(self) -> float:
        return self.seconds - self.spent()

    def run(self, command: list[str], env: dict[str, str] | None = None, **label) -> dict:
        """``run_isolated`` (in ``env``) with the seconds left, or the row of a measurement left out."""
        left = self.left()
        if left < self.floor:
            return {**label, "error": NOT_RUN}
        return run_isolated(command, left, env=env, **label)


def last_line(error: str) -> str:
    """The line of an error worth showing in a table (the exception, not the traceback)."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "no output")[:160]


# --- the report -----------------------------------------------------------------------------------

def environment() -> dict:
    """The GPU, the driver's CUDA, Python and the versions of the packages that decide the numbers.

    Versions come from the installed metadata, not from imports: importing unsloth would patch
    transformers in the calling process.
    """
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    gpu, cuda = "cpu", None
    if importlib.util.find_spec("torch") is not None:
        import torch

        cuda = torch.version.cuda
        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            gpu = f"{count} × {torch.cuda.get_device_name(0)}" if count > 1 else torch.cuda.get_device_name(0)
    return {"gpu": gpu, "cuda": cuda, "python": platform.python_version(), "packages": versions,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def command_line() -> str:
    """The command that produced this report, as one could type it again."""
    return " ".join(shlex.quote(part) for part in ["python", *sys.argv])


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    """A GitHub Markdown table; None shows as an en dash."""
    def cell(value: object) -> str:
        return "–" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float | None, spec: str = ",.0f", suffix: str = "") -> str | None:
    """``value`` formatted, or None (an en dash in a table) when it was not measured."""
    return None if value is None else f"{value:{spec}}{suffix}"


def bar_plot(path: Path | None, title: str, labels: list[str],
             panels: dict[str, dict[str, list[float | None]]]) -> bool:
    """Grouped bars, one panel per metric (e.g. tokens/s, peak GiB), one colour per series (a backend).

    Returns False, and draws nothing, without a path or where matplotlib is not installed.
    """
    if path is None or importlib.util.find_spec("matplotlib") is None:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display on a GPU box
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, 0.9 * len(labels) + 2), 3.2 * len(panels)),
                             squeeze=False)
    for ax, (ylabel, series) in zip(axes[:, 0], panels.items(), strict=True):
        width = 0.8 / max(len(series), 1)
        for k, (name, values) in enumerate(series.items()):
            xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))]
            ax.bar(xs, [v or 0.0 for v in values], width, label=name)
        ax.set_ylabel(ylabel)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0, 0].set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def load_script(name: str):
    """``benchmarks/<name>.py`` imported as a module (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_report(folder: str | Path, bench: str, rows: list[dict], **extra) -> Path:
    """``<bench>.json`` with the environment, the command and the rows, then its table and plot."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report = {"bench": bench, "environment": environment(), "command": command_line(), **extra, "rows": rows}
    path = folder / f"{bench}.json"
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    render_file(path)
    return path


def render_file(path: Path) -> str:
    """Write the Markdown table (and the plot) of one report JSON next to it; returns the Markdown."""
    report = json.loads(Path(path).read_text())
    body = load_script(report["bench"]).render(report, Path(path).with_suffix(".png"))
    env = report["environment"]
    packages = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    header = (f"GPU: {env['gpu']} · CUDA {env['cuda']} · Python {env['python']} · {env['date']}\n\n"
              f"{packages}\n\nCommand: `{report['command']}`\n\n")
    markdown = header + body + "\n"
    Path(path).with_suffix(".md").write_text(markdown)
    return markdown


def render_folder(folder: Path) -> Path:
    """Render every report JSON in ``folder`` and gather the tables into ``summary.md``."""
    parts = []
    for path in sorted(Path(folder).glob("*.json")):
        if "bench" not in json.loads(path.read_text()):
            continue  # another JSON (raw per-script output), not a report
        parts.append(f"## {path.stem}\n\n{render_file(path)}")
    summary = Path(folder) / "summary.md"
    summary.write_text("\n".join(parts))
    return summary


def cut_by_budget(row: dict) -> bool:
    """Whether a time budget left this measurement out or stopped it (rather than it failing)."""
    return str(row.get("error", "")).endswith("(time budget)")


def measured_elsewhere(cut: dict, rows: list[dict]) -> bool:
    """Whether another row measured the configuration of a row a budget cut (its labels, less the error)."""
    label = {k: v for k, v in cut.items() if k != "error"}
    return any("error" not in row and all(row.get(k) == v for k, v in label.items()) for row in rows)


def merge(folders: list[Path], out: Path) -> Path:
    """One report per bench holding the rows of every run (the environment and command of the first).

    A row a budget cut is left out when another run measured it, and kept (to say it is missing) when
    none did."""
    merged: dict[str, dict] = {}
    for folder in folders:
        for path in sorted(Path(folder).glob("*.json")):
            report = json.loads(path.read_text())
            if "bench" not in report:
                continue
            if report["bench"] in merged:
                target = merged[report["bench"]]
                target["rows"] += report["rows"]
                target["command"] += f" ; {report['command']}"
            else:
                merged[report["bench"]] = report
    out.mkdir(parents=True, exist_ok=True)
    for bench, report in merged.items():
        rows = report["rows"]
        report["rows"] = [row for row in rows if not (cut_by_budget(row) and measured_elsewhere(row, rows))]
        (out / f"{bench}.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return render_folder(out)


def main() -> None:
    parser = argparse.ArgumentParser(description="Draw the tables and plots of benchmark reports again.")
    sub = parser.add_subparsers(dest="action", required=True)
    render = sub.add_parser("render", help="render every report JSON in a folder")
    render.add_argument("folder", type=Path)
    merging = sub.add_parser("merge", help="merge the reports of several runs into one folder")
    merging.add_argument("folders", type=Path, nargs="+")
    merging.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    summary = render_folder(args.folder) if args.action == "render" else merge(args.folders, args.out)
    print(summary.read_text())


if __name__ == "__main__":
    main()
