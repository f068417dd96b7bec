"""The course's repository address: one constant, the same in every notebook and link, moved by a command."""

import shutil
from pathlib import Path

import pytest

from helpers import publish
from helpers.course import main
from helpers.errors import CourseError

ROOT = Path(__file__).resolve().parent.parent


def test_every_notebook_and_link_names_the_one_address():
    for path in publish.files_naming_the_repo(ROOT)[:-1]:  # the notebooks and the README
        found = publish.repo_addresses(path.read_text(encoding="utf-8"))
        assert found == {publish.COURSE_REPO}, path.name
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for notebook in sorted(ROOT.glob("[0-9][0-9]_*.ipynb")):
        assert publish.colab_link(notebook.name) in readme


def test_set_repo_moves_the_address_everywhere(tmp_path, monkeypatch):
    for path in publish.files_naming_the_repo(ROOT):
        target = tmp_path / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    changed = publish.set_repository("https://github.com/a-teacher/med-course.git", tmp_path)
    assert len(changed) == len(publish.files_naming_the_repo(tmp_path))
    for path in changed[:-1]:
        moved = publish.repo_addresses(path.read_text(encoding="utf-8"))
        assert moved == {"https://github.com/a-teacher/med-course"}, path.name
    constant = changed[-1].read_text(encoding="utf-8")
    assert 'COURSE_REPO = "https://github.com/a-teacher/med-course"' in constant
    assert "&& cd med-course" in (tmp_path / "README.md").read_text(encoding="utf-8")


def test_an_address_colab_cannot_open_is_one_sentence(capsys):
    with pytest.raises(CourseError, match="not a GitHub repository address"):
        publish.colab_link("00_env_setup.ipynb", "https://gitlab.com/x/y")
    assert main(["set-repo", "not a url"]) == 2
    assert "not a GitHub repository address" in capsys.readouterr().err
