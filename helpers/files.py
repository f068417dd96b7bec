"""Writing a file or a folder so that a crash or an interrupt never leaves half of it behind."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_path(dest: str | Path, *, directory: bool = False) -> Iterator[Path]:
    """A temporary sibling of ``dest`` to write into; ``dest`` is replaced by it on a clean exit.

    With ``directory`` the sibling is an (empty) folder and the old ``dest`` folder is removed just
    before the rename; a file is swapped in by one ``os.replace``. On an exception the temporary
    path is removed and the old ``dest`` is left as it was. ``dest``'s parent is created.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Beside dest, so the rename stays on one file system; the process id keeps two writers apart.
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    _remove(tmp)  # left by an earlier crash of a process with the same id
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        if directory:
            # Two renames cannot be one atomic step; in between, dest is missing, never half-written.
            _remove(dest)
        os.replace(tmp, dest)
    except BaseException:  # an interrupt too: nothing half-written stays behind
        _remove(tmp)
        raise
