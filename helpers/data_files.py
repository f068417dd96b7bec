"""Where a dataset's rows come from, and reading them: a hub id, a local file or folder, or a sample.

Every notebook names its datasets the same way: a hub id ("FreedomIntelligence/CMB") or a local path
to a file (.json, .jsonl, .parquet, .csv) or a folder holding the real dataset's files. ``locate``
turns that into files to read and a truthful ``origin`` line (downloaded, hub cache, local path, or the
course's offline sample); ``read_records`` reads one file into rows, a line that is not JSON kept as a
marker so the cleaning report can count it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from helpers.errors import CourseError

DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")
_CONTAINER_KEYS = ("data", "rows", "items", "train", "validation", "val", "test")
_ORIGINS = {"huggingface": "downloaded from Hugging Face", "modelscope": "downloaded from ModelScope",
            "huggingface-cache": "Hugging Face cache", "local": "local folder"}


@dataclass(frozen=True)
class Unreadable:
    """A line that is not JSON: kept as a row so the cleaning report counts it."""

    where: str


@dataclass(frozen=True)
class Location:
    """Where one dataset is read from: a file or folder (None: the offline sample) and how it got there."""

    path: Path | None
    origin: str  # e.g. "FreedomIntelligence/CMB (Hugging Face cache)", "local file ~/cmb.json"
    is_sample: bool = False

    def describe(self, file: Path) -> str:
        """The origin line for one file read from this location."""
        if self.path is None or self.path == file:
            return self.origin
        try:
            return f"{self.origin}: {file.relative_to(self.path)}"
        except ValueError:
            return f"{self.origin}: {file.name}"


def is_local_path(where: str) -> bool:
    """Whether ``where`` names a local file or folder rather than a hub id ("org/name")."""
    from helpers.hub import looks_like_path

    path = Path(where).expanduser()
    return path.exists() or looks_like_path(where) or path.suffix in DATA_SUFFIXES


def locate(where: str, *, offline: bool = False, hub: str | None = None) -> Location:
    """The file or folder ``where`` names (a local path, or a hub id resolved to a snapshot).

    ``offline`` or no reachable hub gives ``Location(None, …)``: the caller reads its offline sample.
    A local path that does not exist is one sentence, never a silent fall back to the samples.
    """
    if offline:
        return Location(None, "offline sample", True)
    path = Path(where).expanduser()
    if path.is_file():
        return Location(path.resolve(), f"local file {where}")
    if path.is_dir() and is_local_path(where):
        return Location(path.resolve(), f"local folder {where}")
    if is_local_path(where):
        raise CourseError(f"No file or folder at {where}: check the path, or give the dataset's hub id.")
    from helpers.hub import resolve_dataset

    found = resolve_dataset(where, source=hub)
    if found is None:
        return Location(None, "offline sample", True)
    return Location(found.path, f"{where} ({_ORIGINS.get(found.origin, found.origin)})")


def data_files(folder: Path) -> list[Path]:
    """Every data file under ``folder`` (json, jsonl, parquet, csv), hidden folders skipped."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def local_files(path: Path, expected: str) -> list[Path]:
    """``path`` itself when it is a file, else every data file in the folder; a folder with none is
    one sentence, ``expected`` saying what the files should be."""
    files = [path] if path.is_file() else data_files(path)
    if not files:
        raise CourseError(f"No data files in {path}: {expected}.")
    return files


def pick_file(path: Path, patterns: tuple[str, ...], what: str) -> Path:
    """``path`` itself when it is a file, else the first file in the folder matching ``patterns``."""
    if path.is_file():
        return path
    for pattern in patterns:
        found = sorted(p for p in path.glob(pattern) if p.is_file())
        if found:
            return found[0]
    held = ", ".join(str(p.relative_to(path)) for p in data_files(path)[:6]) or "no data files"
    raise CourseError(f"No file like {patterns[0]} in {path} (it holds {held}): point {what} at the file "
                      "itself, or at a folder in the dataset's own layout.")


def read_records(path: Path) -> list:
    """The rows of a .json (an array, or an object holding one), .jsonl, .parquet or .csv file."""
    path = Path(path)
    if path.suffix in (".parquet", ".csv"):
        import pandas as pd

        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str,
                                                                                    keep_default_na=False)
        return frame.to_dict("records")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    rows.append(Unreadable(f"{path.name} line {number}"))
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise CourseError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}): "
                          "fix or replace it.") from err
    if isinstance(data, dict):  # {"data": [...]} or {"train": [...]}: the rows inside
        data = next((data[k] for k in _CONTAINER_KEYS if isinstance(data.get(k), list)), data)
    if not isinstance(data, list):
        raise CourseError(f"{path} should hold a JSON list of rows (or an object with one under "
                          f"{', '.join(repr(k) for k in _CONTAINER_KEYS[:3])}…): fix or replace the file.")
    return data
