"""The run dir: the folder where one run of the course keeps everything the notebooks write.

``outputs/<run>/`` holds the evaluation sets, predictions, adapters, plots and a
``metrics/<notebook>.json`` per notebook. Later notebooks read what earlier ones wrote from
here, and say which notebook to run first when something is missing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from helpers.errors import CourseError
from helpers.files import atomic_path


def outputs_root() -> Path:
    """Where run dirs live: ``outputs/`` beside the notebooks, or ``$COURSE_OUTPUTS``."""
    return Path(os.environ.get("COURSE_OUTPUTS", "outputs"))


def shown(path: str | Path) -> str:
    """``path`` as a learner should read it: relative to the notebooks' folder when it is inside it,
    else relative to ``$COURSE_OUTPUTS`` (named so), else as given."""
    path = Path(path)
    for root, label in ((Path.cwd(), ""), (outputs_root(), "$COURSE_OUTPUTS/")):
        try:
            return label + str(path.resolve().relative_to(root.resolve()))
        except ValueError:
            continue
    return str(path)


def run_dir(profile: str, run_name: str = "") -> Path:
    """The run dir for ``run_name`` (by default the profile's name), created on demand."""
    path = outputs_root() / (run_name or profile)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, data: object) -> Path:
    """Write JSON through a temporary file, so a crash never leaves half a file behind."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    return path


def save_metrics(run: Path, notebook: str, metrics: dict, key: str | None = None) -> Path:
    """Save a notebook's metrics; ``key`` names the one the course runner shows in its summary."""
    if key is not None and key not in metrics:
        raise CourseError(f"The key metric {key!r} is not among the metrics {sorted(metrics)}.")
    return write_json(run / "metrics" / f"{notebook}.json", {"key": key, "metrics": metrics})


def load_metrics(run: Path, notebook: str) -> dict | None:
    """The metrics a notebook saved in this run, or None if it has not run."""
    path = run / "metrics" / f"{notebook}.json"
    return json.loads(path.read_text(encoding="utf-8"))["metrics"] if path.is_file() else None


def key_metric(run: Path, notebook: str) -> str:
    """'name=value' of the notebook's key metric, '' if it saved none."""
    path = run / "metrics" / f"{notebook}.json"
    if not path.is_file():
        return ""
    saved = json.loads(path.read_text(encoding="utf-8"))
    key = saved.get("key")
    if not key:
        return ""
    value = saved["metrics"][key]
    return f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"


def require(path: Path, made_by: str) -> Path:
    """``path`` if it exists; otherwise say which notebook writes it."""
    if not path.exists():
        raise CourseError(f"{path} is missing: run {made_by} first (with the same PROFILE and RUN_NAME).")
    return path
