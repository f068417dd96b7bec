"""What machine the course runs on: GPU, memory, library versions, and the profile that fits."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

# The libraries whose versions matter when something breaks; read from package metadata,
# never imported, so that detection stays fast and works where unsloth would fail to import.
LIBRARIES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate",
             "unsloth", "unsloth_zoo", "bitsandbytes", "vllm", "swanlab", "modelscope")


@dataclass
class EnvReport:
    """A snapshot of the machine, as 00_env_setup shows it and saves it with the run."""

    python: str
    system: str
    host: str  # "colab", "autodl" or "local"
    cpu_count: int
    ram_gb: float
    cuda: str | None  # CUDA version torch was built with, None without a GPU
    gpu_name: str | None
    vram_gb: float
    compute_capability: str | None
    bf16: bool
    versions: dict[str, str | None] = field(default_factory=dict)
    profile: str = "cpu"

    def __str__(self) -> str:
        gpu = (f"{self.gpu_name}, {self.vram_gb:.1f} GB, compute {self.compute_capability}, "
               f"bf16 {'yes' if self.bf16 else 'no'}, CUDA {self.cuda}"
               if self.gpu_name else "none (CPU only)")
        lines = [
            f"host      {self.host} · {self.system} · Python {self.python}",
            f"cpu       {self.cpu_count} cores · {self.ram_gb:.1f} GB RAM",
            f"gpu       {gpu}",
            "libraries " + ", ".join(f"{k} {v}" for k, v in self.versions.items() if v),
            "missing   " + (", ".join(k for k, v in self.versions.items() if not v) or "none"),
            f"profile   {self.profile}",
        ]
        return "\n".join(lines)


def pick_profile(has_cuda: bool, vram_gb: float = 0.0, bf16: bool = False) -> str:
    """The profile (a name in helpers.profiles.PROFILES) for a machine: no CUDA → cpu; small or
    pre-Ampere GPUs → t4."""
    if not has_cuda:
        return "cpu"
    if vram_gb < 20 or not bf16:
        return "t4"
    if vram_gb < 48:
        return "24gb"
    return "80gb"


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    """Installed version of each library, or None where it is missing."""
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def detect_host(environ: os._Environ | dict = os.environ) -> str:
    """'colab', 'autodl' or 'local': the hosts whose install and mirror advice differ."""
    if "COLAB_RELEASE_TAG" in environ or "google.colab" in sys.modules:
        return "colab"
    if "AutoDLContainerUUID" in environ or Path("/root/autodl-tmp").is_dir():
        return "autodl"
    return "local"


def _ram_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError, AttributeError):
        return 0.0


def detect() -> EnvReport:
    """Look at this machine and choose its profile."""
    import torch

    cuda = torch.cuda.is_available()
    gpu_name, vram_gb, capability, bf16 = None, 0.0, None, False
    if cuda:
        props = torch.cuda.get_device_properties(0)
        gpu_name, vram_gb = props.name, props.total_memory / 1024**3
        capability = f"{props.major}.{props.minor}"
        # Native bf16 starts with Ampere (8.x); torch also reports emulated bf16 on a T4, which is slow.
        bf16 = props.major >= 8
    return EnvReport(
        python=platform.python_version(),
        system=f"{platform.system()} {platform.machine()}",
        host=detect_host(),
        cpu_count=os.cpu_count() or 1,
        ram_gb=_ram_gb(),
        cuda=torch.version.cuda if cuda else None,
        gpu_name=gpu_name,
        vram_gb=vram_gb,
        compute_capability=capability,
        bf16=bf16,
        versions=library_versions(),
        profile=pick_profile(cuda, vram_gb, bf16),
    )
