"""Export the fine-tuned model for runtimes outside Python: one GGUF file for llama.cpp and Ollama (07).

03 saves the merged 16-bit model (``sft-merged/``), which transformers, vLLM and ``transformers serve``
load as it is. llama.cpp reads GGUF instead. unsloth's exporter writes it, after building llama.cpp
from its sources, so it needs unsloth on a CUDA GPU and network access; where one of them is missing,
``gguf_blocker`` names it and ``llama_cpp_commands`` gives the commands that do the same elsewhere.
"""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

from helpers.hub import host_reachable

GGUF_QUANTIZATION = "q4_k_m"  # about 4.8 bits per weight: a 1.7B model in ~1.1 GB, the usual laptop choice


def gguf_blocker() -> str:
    """What keeps unsloth's GGUF exporter from running here, as a phrase, or '' when nothing does."""
    if importlib.util.find_spec("unsloth") is None:
        return "unsloth is not installed (it needs a CUDA GPU)"
    import torch

    if not torch.cuda.is_available():
        return "there is no CUDA GPU"
    if not host_reachable("github.com"):
        return "there is no network: the exporter downloads and builds llama.cpp first"
    return ""


def llama_cpp_commands(merged: str | Path, dest: str | Path,
                       quantization: str = GGUF_QUANTIZATION) -> list[str]:
    """Shell commands that turn the merged folder into one quantized GGUF file with llama.cpp itself."""
    merged, dest = Path(merged), Path(dest)
    f16 = dest.with_suffix(".f16.gguf")
    return [
        "git clone --depth 1 https://github.com/ggml-org/llama.cpp",
        "pip install -r llama.cpp/requirements.txt",
        f"python llama.cpp/convert_hf_to_gguf.py {shlex.quote(str(merged))} --outtype f16 "
        f"--outfile {shlex.quote(str(f16))}",
        "cmake -S llama.cpp -B llama.cpp/build && cmake --build llama.cpp/build --target llama-quantize -j",
        f"llama.cpp/build/bin/llama-quantize {shlex.quote(str(f16))} {shlex.quote(str(dest))} "
        f"{quantization.upper()}",
    ]


def export_gguf(merged: str | Path, dest_dir: str | Path,
                quantization: str = GGUF_QUANTIZATION) -> list[Path]:
    """Export the merged model with unsloth's exporter; returns the GGUF files written in ``dest_dir``."""
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(str(merged), load_in_4bit=False)
    model.save_pretrained_gguf(str(dest_dir), tokenizer, quantization_method=quantization)
    return sorted(Path(dest_dir).glob("*.gguf"))
