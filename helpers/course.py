"""Run the course's notebooks in order: ``python -m helpers.course run [--profile cpu] [--only 03]``.

Each notebook is executed with papermill into ``outputs/<run>/executed/``, with PROFILE and
RUN_NAME injected into its ``parameters`` cell. One line per notebook while it runs, a summary
table at the end, and a non-zero exit naming the notebook and cell when one fails.
Teachers use it to check a machine before class; CI uses it on the ``cpu`` profile.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from helpers.errors import CourseError
from helpers.profiles import PROFILES, get_profile
from helpers.runs import key_metric, outputs_root, write_json

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    notebook: str
    status: str  # "ok", "failed" or "not run"
    seconds: float = 0.0
    metric: str = ""
    error: str = ""


def find_notebooks(folder: Path = ROOT, only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks in order, or those whose number or name is in ``only``."""
    notebooks = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not only:
        return notebooks
    wanted = [w.removesuffix(".ipynb") for w in only]
    chosen = [nb for nb in notebooks if nb.stem[:2] in wanted or nb.stem in wanted]
    found = {nb.stem[:2] for nb in chosen} | {nb.stem for nb in chosen}
    missing = [w for w in wanted if w not in found]
    if missing:
        names = ", ".join(nb.stem for nb in notebooks)
        raise CourseError(f"No notebook {', '.join(missing)} in {folder}: the notebooks are {names}.")
    return chosen


def describe_failure(err: Exception) -> str:
    """One line: which cell failed and with what error."""
    cell = getattr(err, "exec_count", None) or getattr(err, "cell_index", None)
    ename, evalue = getattr(err, "ename", type(err).__name__), getattr(err, "evalue", str(err))
    where = f"cell In [{cell}]" if cell is not None else "before any cell ran"
    return f"{where}: {ename}: {evalue}".splitlines()[0]


def course_run_dir(folder: Path, run_name: str) -> Path:
    """The run dir as the notebooks see it: they run with ``folder`` as working directory."""
    return folder / outputs_root() / run_name  # an absolute $COURSE_OUTPUTS wins over folder


def run_notebook(notebook: Path, executed: Path, parameters: dict, cwd: Path) -> Result:
    """Execute one notebook with papermill; the executed copy keeps every output for inspection."""
    import papermill
    from traitlets.config import Config

    # Local sockets (IPC) rather than TCP: nothing to eavesdrop on, and no warning about it.
    # The socket files go to the temp folder, not into the course folder the kernel runs in.
    sockets = {"transport": "ipc", "ip": os.path.join(tempfile.gettempdir(), f"course-kernel-{os.getpid()}")}
    config = Config({"KernelManager": sockets}) if os.name == "posix" else Config()
    began = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(notebook), str(executed / notebook.name), parameters=parameters,
            cwd=str(cwd), kernel_name="python3", language="python", config=config,
            progress_bar=False, log_output=False,
        )
    except Exception as err:  # papermill wraps the cell's error; report it, keep the executed copy
        return Result(notebook.stem, "failed", time.perf_counter() - began, error=describe_failure(err))
    return Result(notebook.stem, "ok", time.perf_counter() - began)


def format_summary(results: list[Result]) -> str:
    """The end-of-run table: notebook, status, seconds, key metric."""
    width = max([len(r.notebook) for r in results] + [8])
    lines = [f"{'notebook':<{width}}  {'status':<7}  {'seconds':>7}  key metric", "-" * (width + 40)]
    for r in results:
        seconds = f"{r.seconds:7.1f}" if r.status != "not run" else f"{'':7}"
        lines.append(f"{r.notebook:<{width}}  {r.status:<7}  {seconds}  {r.metric or r.error}")
    return "\n".join(lines)


def run_course(profile: str, only: list[str] | None = None, run_name: str = "",
               folder: Path = ROOT, knobs: dict | None = None) -> list[Result]:
    """Run the notebooks in order, stopping at the first failure (later ones need its outputs).

    ``knobs`` set first-cell knobs by name in every notebook that has them (``SOURCES``, ``DATA``...)."""
    get_profile(profile)  # an unknown profile fails here, in one sentence, before any notebook runs
    notebooks = find_notebooks(folder, only)
    run = course_run_dir(folder, run_name or profile)
    executed = run / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    parameters = {**(knobs or {}), "PROFILE": profile, "RUN_NAME": run_name or profile}
    # A check of the machine, not an experiment: no experiment tracking (the notebooks read this).
    os.environ.setdefault("SWANLAB_MODE", "disabled")
    results = [Result(nb.stem, "not run") for nb in notebooks]
    print(f"Running {len(notebooks)} notebooks in the {profile} profile into {run}")
    for i, notebook in enumerate(notebooks):
        print(f"[{i + 1}/{len(notebooks)}] {notebook.name} ...", flush=True)
        result = run_notebook(notebook, executed, parameters, folder)
        result.metric = key_metric(run, notebook.stem)
        results[i] = result
        print(f"      {result.status} in {result.seconds:.1f}s  {result.metric or result.error}", flush=True)
        if result.status == "failed":
            break
    write_json(run / "summary.json", [r.__dict__ for r in results])
    return results


def parse_knobs(settings: list[str]) -> dict:
    """``["STEPS=3", "DATA=~/x"]`` as {"STEPS": 3, "DATA": "~/x"}: Python literals, else plain text."""
    import ast

    knobs = {}
    for setting in settings:
        name, sep, value = setting.partition("=")
        if not sep or not name.strip().isidentifier():
            raise CourseError(f"--set {setting!r}: write KNOB=VALUE, such as --set STEPS=3.")
        try:
            knobs[name.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            knobs[name.strip()] = value
    return knobs


def set_repo(url: str) -> int:
    """Point the Colab links and the notebooks' first cells at ``url``."""
    from helpers.publish import set_repository

    try:
        changed = set_repository(url, ROOT)
    except CourseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"The course now fetches itself from {url}: {len(changed)} files changed. Push it there, public,"
          " for the Colab links to work.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.course", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="execute the notebooks in order")
    run.add_argument("--profile", default="auto", help=f"one of {', '.join(PROFILES)} or auto (default)")
    run.add_argument("--only", action="append", help="a notebook number or name; repeat for several")
    run.add_argument("--run", default="", help="run name: the folder under outputs/ (default: the profile)")
    run.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE",
                     help="a first-cell knob for every notebook that has it, e.g. DATA=~/radiology "
                          "or 'SOURCES={\"medqa\": \"~/medqa.jsonl\"}'; repeat for several")
    move = commands.add_parser("set-repo", help="the GitHub address the course is published at (Colab links)")
    move.add_argument("url", help="e.g. https://github.com/you/medical-llm-course")
    args = parser.parse_args(argv)
    if args.command == "set-repo":
        return set_repo(args.url)
    try:
        profile = args.profile
        if profile == "auto":
            from helpers.env import detect

            profile = detect().profile
        only = [item for value in args.only or [] for item in value.split(",") if item]
        results = run_course(profile, only, args.run, folder=ROOT, knobs=parse_knobs(args.set))
    except CourseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print()
    print(format_summary(results))
    failed = [r for r in results if r.status == "failed"]
    if failed:
        run_path = course_run_dir(ROOT, args.run or profile) / "executed" / f"{failed[0].notebook}.ipynb"
        print(f"\n{failed[0].notebook}.ipynb failed in {failed[0].error}\n"
              f"The executed copy with every output is {run_path}.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
