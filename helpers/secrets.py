"""API keys: from the environment, Colab's secrets or a hidden prompt, never from a notebook cell.

A key typed into a cell is saved in the notebook and shared with it. The course reads keys from
the environment first, then from Colab's secrets panel (the key icon on the left), and otherwise
asks with ``getpass``, which hides what you type. Whatever the source, a key is kept in this
session's environment only, and only its presence is ever printed.
"""

from __future__ import annotations

import getpass
import os
import sys

KEYS = {
    "SWANLAB_API_KEY": "SwanLab experiment tracking in 03 and 05",
    "JUDGE_API_KEY": "the LLM judge of 02, 04 and 06; JUDGE_BASE_URL and JUDGE_MODEL say which",
    "HF_TOKEN": "gated models and datasets on Hugging Face",
}


def _colab_secret(name: str) -> str | None:
    if "google.colab" not in sys.modules:
        return None
    try:
        from google.colab import userdata

        return userdata.get(name) or None
    except Exception:  # not set, or this notebook was not granted access: the same as absent
        return None


def read_secret(name: str) -> str | None:
    """The key ``name`` from the environment or Colab's secrets (then also put in the environment)."""
    value = os.environ.get(name) or _colab_secret(name)
    if value:
        os.environ[name] = value  # the libraries (swanlab, huggingface_hub) read the environment
    return value or None


def ask_secret(name: str, prompt=getpass.getpass) -> bool:
    """Ask for the key ``name`` with a hidden prompt when it is not set yet; Enter skips it."""
    if read_secret(name):
        return True
    value = prompt(f"{name} for {KEYS.get(name, 'this course')} (Enter to skip): ").strip()
    if value:
        os.environ[name] = value
    return bool(value)


def key_status() -> dict[str, str]:
    """Which keys are set, and for what: the values themselves are never shown."""
    return {name: ("set" if read_secret(name) else "not set") + f" ({use})" for name, use in KEYS.items()}


def hide_secrets(text: str) -> str:
    """``text`` with every key value that is set replaced by ``***`` (for error messages and logs)."""
    for name in KEYS:
        value = os.environ.get(name)
        if value and len(value) >= 8:  # a very short value would also hide ordinary words
            text = text.replace(value, "***")
    return text
