"""Keys come from the environment, Colab's secrets or a hidden prompt, and never show up in any output."""

import json
import os
import re
import sys
import types
from pathlib import Path

import pytest
from conftest import FAKE_KEYS

from helpers import secrets
from helpers.judge import judge_config

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(ROOT.glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture
def no_keys(monkeypatch):
    for name in [*secrets.KEYS, "OPENAI_API_KEY"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)


def _fake_colab(monkeypatch, stored: dict):
    google = types.ModuleType("google")
    colab = types.ModuleType("google.colab")
    colab.userdata = types.SimpleNamespace(get=lambda name: stored[name])  # KeyError when not stored
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)


def test_a_key_comes_from_the_environment_first(no_keys, monkeypatch):
    assert secrets.read_secret("JUDGE_API_KEY") is None and judge_config() is None
    monkeypatch.setenv("JUDGE_API_KEY", "sk-from-the-environment")
    assert judge_config().api_key == "sk-from-the-environment"
    assert "sk-from-the-environment" not in repr(judge_config())


def test_a_key_comes_from_colab_secrets_and_missing_ones_are_none(no_keys, monkeypatch):
    _fake_colab(monkeypatch, {"SWANLAB_API_KEY": "swanlab-from-colab-secrets"})
    assert secrets.read_secret("SWANLAB_API_KEY") == "swanlab-from-colab-secrets"
    assert os.environ["SWANLAB_API_KEY"] == "swanlab-from-colab-secrets"  # where swanlab looks for it
    assert secrets.read_secret("HF_TOKEN") is None  # not in the panel: as if absent, no error


def test_a_key_typed_at_the_hidden_prompt_stays_in_this_session(no_keys):
    asked = []
    typed = secrets.ask_secret("HF_TOKEN", prompt=lambda text: asked.append(text) or "hf_typed_in_secret")
    assert typed is True
    assert "Enter to skip" in asked[0] and secrets.read_secret("HF_TOKEN") == "hf_typed_in_secret"
    assert secrets.ask_secret("HF_TOKEN", prompt=lambda text: pytest.fail("asked twice")) is True
    assert secrets.ask_secret("JUDGE_API_KEY", prompt=lambda text: "  ") is False


def test_status_and_messages_never_show_a_key(no_keys, monkeypatch):
    monkeypatch.setenv("JUDGE_API_KEY", "sk-very-secret-value")
    status = secrets.key_status()
    assert status["JUDGE_API_KEY"].startswith("set") and status["HF_TOKEN"].startswith("not set")
    assert "sk-very-secret-value" not in json.dumps(status)
    assert secrets.hide_secrets("Bearer sk-very-secret-value rejected") == "Bearer *** rejected"


_KEY_IN_CODE = [
    re.compile(r"""(?i)\b(\w*api_key|\w*secret\w*|\w*password\w*|(hf|auth|access)_token|token)\s*=\s*["'][^"']{6,}["']"""),
    re.compile(r"""os\.environ\[\s*["']\w*(KEY|TOKEN|SECRET)\w*["']\s*\]\s*="""),
    re.compile(r"trust_remote_code\s*=\s*True"),
]


@pytest.mark.parametrize("path", NOTEBOOKS + sorted((ROOT / "helpers").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_key_is_written_in_code_and_remote_code_stays_off(path):
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    else:
        text = path.read_text(encoding="utf-8")
    for pattern in _KEY_IN_CODE:
        found = pattern.search(text)
        if found and path.name != "secrets.py":  # secrets.py is where keys are put in the environment
            pytest.fail(f"{path.name}: {found.group(0)!r}")


def test_no_key_appears_in_any_output_of_the_course(cpu_course):
    assert cpu_course.returncode == 0, cpu_course.log
    texts = {"the runner's log": cpu_course.log}
    for file in cpu_course.run.rglob("*"):
        if file.is_file() and file.suffix in {".ipynb", ".json", ".jsonl", ".md", ".txt", ".log", ".csv"}:
            texts[str(file.relative_to(cpu_course.run))] = file.read_text(encoding="utf-8", errors="replace")
    assert any(name.startswith("executed") for name in texts)  # the executed notebooks were read
    for name, key in FAKE_KEYS.items():
        leaks = [where for where, text in texts.items() if key in text]
        assert leaks == [], f"{name} appears in {leaks}"
