"""Where the course is published: the one repository address that the Colab links and the notebooks'
first cells use, and the command that moves it (``python -m helpers.course set-repo URL``).

The links work only once the course has been pushed to that address as a public repository.
"""

from __future__ import annotations

import re
from pathlib import Path

from helpers.errors import CourseError

COURSE_REPO = "https://github.com/medical-llm-course/medical-llm-course"
_GITHUB = re.compile(r"https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?$")


def colab_link(notebook: str, repo: str = COURSE_REPO) -> str:
    """The "Open in Colab" address of a notebook of the course published at ``repo``."""
    owner, name = _owner_and_name(repo)
    return f"https://colab.research.google.com/github/{owner}/{name}/blob/main/{notebook}"


def _owner_and_name(repo: str) -> tuple[str, str]:
    match = _GITHUB.match(repo)
    if match is None:
        raise CourseError(f"{repo!r} is not a GitHub repository address such as "
                          "https://github.com/you/medical-llm-course: Colab opens notebooks from GitHub.")
    return match.group(1), match.group(2)


def files_naming_the_repo(folder: Path) -> list[Path]:
    """The numbered notebooks, the README and this module: every file that holds the address."""
    notebooks = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    return [*notebooks, folder / "README.md", folder / "helpers" / "publish.py"]


def repo_addresses(text: str) -> set[str]:
    """The course-repository addresses in ``text``: clone addresses and those inside Colab links."""
    owners = re.findall(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/blob/", text)
    clones = re.findall(r"git clone (?:-q )?(?:--depth 1 )?(https://github\.com/[\w.-]+/[\w.-]+)", text)
    return {f"https://github.com/{o}" for o in owners} | set(clones)


def set_repository(repo: str, folder: Path) -> list[Path]:
    """Rewrite the course's address to ``repo`` everywhere it appears; the files changed."""
    owner, name = _owner_and_name(repo)
    new = f"https://github.com/{owner}/{name}"
    old_owner, old_name = _owner_and_name(COURSE_REPO)
    changed = []
    for path in files_naming_the_repo(folder):
        text = path.read_text(encoding="utf-8")
        updated = text.replace(COURSE_REPO, new).replace(f"github/{old_owner}/{old_name}/blob/",
                                                           f"github/{owner}/{name}/blob/")
        updated = updated.replace(f"&& cd {old_name}", f"&& cd {name}")
        if updated != text:
            path.write_text(updated, encoding="utf-8")
            changed.append(path)
    return changed
