"""A notebook's own cells as a program: the training recipe of 03 and 06, run outside Jupyter.

A lesson notebook marks the code cells that train with the tag ``recipe``. ``run_recipe`` executes
its ``parameters`` cell, then the knobs given (as papermill injects them), then every ``recipe`` cell
in order, in one namespace, and returns that namespace. ``python -m helpers.train`` is built on it,
so the command trains with the code a learner reads and edits, and cannot drift from it.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Iterable
from pathlib import Path

from helpers.errors import CourseError

ROOT = Path(__file__).resolve().parent.parent
RECIPE = "recipe"  # the tag of the cells that train
LESSONS = {"sft": "03_sft_llm.ipynb", "vl": "05_sft_vl.ipynb", "grpo": "06_grpo.ipynb"}


def notebook_path(lesson: str) -> Path:
    """The notebook of a lesson ("sft", "vl", "grpo") or a notebook file name."""
    return ROOT / LESSONS.get(lesson, lesson)


def code_cells(notebook: str | Path, tags: str | tuple[str, ...] | None = None) -> list[str]:
    """The sources of the notebook's code cells, in order; with ``tags``, only the cells with one of them."""
    path = Path(notebook)
    path = path if path.is_file() else notebook_path(str(notebook))
    wanted = (tags,) if isinstance(tags, str) else tags
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError) as err:
        raise CourseError(f"Could not read the notebook {path}: {err}") from None
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"
            and (wanted is None or set(wanted) & set(c.get("metadata", {}).get("tags", [])))]


def parameters(notebook: str | Path) -> dict[str, object]:
    """The knobs of the notebook's first (``parameters``) cell, with their values as written there."""
    cells = code_cells(notebook, "parameters")
    if not cells:
        raise CourseError(f"{notebook} has no cell tagged 'parameters'.")
    namespace: dict = {}
    exec(compile(cells[0], f"{notebook} [parameters]", "exec"), namespace)
    names = [target.id for node in ast.parse(cells[0]).body if isinstance(node, ast.Assign)
             for target in node.targets if isinstance(target, ast.Name)]
    return {name: namespace[name] for name in names}


def check_knobs(notebook: str | Path, knobs: dict[str, object]) -> dict[str, object]:
    """``knobs`` with upper-case names, each one a knob of the notebook's first cell (else one sentence)."""
    known = parameters(notebook)
    knobs = {str(name).upper().replace("-", "_"): value for name, value in knobs.items()}
    unknown = sorted(set(knobs) - set(known))
    if unknown:
        raise CourseError(f"{', '.join(unknown)}: not a knob of {Path(str(notebook)).name}; its knobs "
                          f"are the names in its first cell: {', '.join(known)}.")
    return knobs


def run_recipe(notebook: str | Path, knobs: dict[str, object] | None = None, *,
               tag: str | tuple[str, ...] = RECIPE, namespace: dict | None = None,
               after_cell: Callable[[dict], None] | None = None) -> dict:
    """Execute the parameters cell, the ``knobs`` over it, then every cell tagged ``tag`` (or one of the
    tags); returns the namespace they ran in.

    ``namespace`` adds names the cells expect from cells left out (a benchmark's own model, say).
    ``after_cell(namespace)`` is called after each cell (the training command uses it to attach a meter
    to the trainer as soon as there is one)."""
    knobs = check_knobs(notebook, knobs or {})
    cells = code_cells(notebook, tag)
    if not cells:
        raise CourseError(f"{notebook} has no cell tagged {tag!r}.")
    scope = {**_fresh_namespace(), **(namespace or {})}
    exec(compile(code_cells(notebook, "parameters")[0], f"{notebook} [parameters]", "exec"), scope)
    scope.update(knobs)
    for i, source in enumerate(cells):
        exec(compile(source, f"{Path(str(notebook)).name} [{tag} cell {i + 1}]", "exec"), scope)
        if after_cell is not None:
            after_cell(scope)
    return scope


def _fresh_namespace() -> dict:
    try:
        from IPython.display import display  # the cells may call display(), as in Jupyter
    except ImportError:
        display = print
    return {"__name__": "__main__", "display": display}


def save_knobs(notebook: str | Path, namespace: dict, path: Path) -> Path:
    """Write the current value of each of the notebook's knobs (its first cell's names) as YAML: the same
    run again with ``python -m helpers.train --config``. Returns the path."""
    import yaml

    names = parameters(notebook)
    values = {name: _plain(namespace.get(name, default)) for name, default in names.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def _plain(value: object) -> object:
    """A knob value as YAML writes it plainly: tuples as lists."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def read_knobs(path: Path) -> dict[str, object]:
    """The knobs in a YAML or JSON file (``STEPS: 300``; names in any case)."""
    import yaml  # a dependency of accelerate, so always there

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise CourseError(f"Could not read the knobs in {path}: {err}") from None
    if not isinstance(data, dict):
        raise CourseError(f"{path} should hold knob: value lines (a mapping), not a {type(data).__name__}.")
    return {str(name).upper(): value for name, value in data.items()}


def parse_value(text: str) -> object:
    """A knob value from the command line: a Python literal (3, 2e-4, True, None, ("en",)) or a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def knob_flags(words: Iterable[str]) -> dict[str, object]:
    """``--steps 3 --lora-r 8`` as knobs {"STEPS": 3, "LORA_R": 8}."""
    words, knobs = list(words), {}
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--"):
            raise CourseError(f"Expected a knob such as --steps 3, got {word!r}.")
        name, eq, value = word[2:].partition("=")
        if not eq:
            if i + 1 >= len(words) or words[i + 1].startswith("--"):
                raise CourseError(f"The knob --{name} needs a value, e.g. --{name} 3.")
            value, i = words[i + 1], i + 1
        knobs[name.upper().replace("-", "_")] = parse_value(value)
        i += 1
    return knobs
