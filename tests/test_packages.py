from pathlib import Path

import tomllib

from helpers import packages

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_pins_equal_the_installer_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["dependencies"] == packages.CORE
    assert project["optional-dependencies"]["gpu"] == packages.GPU
    assert project["optional-dependencies"]["modelscope"] == packages.MODELSCOPE


def test_the_stack_unsloth_needs_is_pinned():
    assert "transformers==5.17.0" in packages.CORE and "trl==1.13.0" in packages.CORE
    assert "datasets>=4,<5" in packages.CORE


def test_is_satisfied_reads_installed_versions():
    assert packages.is_satisfied("transformers==5.17.0")
    assert not packages.is_satisfied("transformers==0.0.1")
    assert not packages.is_satisfied("surely-not-a-package-xyz>=1")


def test_nothing_is_installed_when_everything_is_present(capsys):
    assert packages.install_missing(gpu=False, dry_run=True) == []
    assert "nothing to install" in capsys.readouterr().out


def test_missing_packages_are_installed_from_the_chosen_mirror(monkeypatch):
    monkeypatch.setattr(packages, "CORE", packages.CORE + ["surely-not-a-package-xyz>=1"])
    commands = packages.install_missing(gpu=True, index_url=packages.PIP_MIRRORS["tuna"], dry_run=True)
    assert len(commands) == 1
    command = commands[0]
    assert "surely-not-a-package-xyz>=1" in command and "unsloth==2026.10.9" in command
    assert "transformers==5.17.0" not in command  # present already: skipped
    assert command[-2:] == ["-i", "https://pypi.tuna.tsinghua.edu.cn/simple"]
