"""Load a text model, give it LoRA adapters, save and reload them: one API, two backends.

On a CUDA GPU with unsloth installed the fast path is unsloth's ``FastLanguageModel``; anywhere
else (CPU, an unsupported GPU, an architecture unsloth cannot load) it is transformers + peft,
with bitsandbytes for 4-bit on CUDA. 03 and 05 write their LoRA call out in a cell; ``add_lora`` makes the
same adapters (tests/test_lora_cells.py) for 06's policy, the benchmarks and the tests.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from helpers.errors import CourseError
from helpers.files import atomic_path
from helpers.hub import resolve_model
from helpers.profiles import PROFILES, Profile

# Every linear layer of attention and MLP: the usual choice for Llama/Qwen-style models.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BACKENDS = ("auto", "unsloth", "transformers")


def pick_backend(requested: str = "auto") -> str:
    """'unsloth' on CUDA where it is installed, else 'transformers'."""
    if requested not in BACKENDS:
        raise CourseError(f"Unknown backend {requested!r}: choose one of {', '.join(BACKENDS)}.")
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("unsloth") is not None:
        return "unsloth"
    return "transformers"


def _torch_dtype(name: str | None):
    import torch

    if name is None:
        return None
    if name not in ("float32", "float16", "bfloat16"):
        raise CourseError(f"Unknown dtype {name!r}: choose float32, float16 or bfloat16.")
    return getattr(torch, name)


def require_safetensors(folder: Path) -> None:
    """Refuse a checkpoint whose weights are only pickle files (``.bin``, ``.pt``): unpickling can run code.

    Safetensors files hold tensors and nothing else; every model this course names ships them.
    """
    folder = Path(folder)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for pattern in ("*.bin", "*.pt", "*.pth") for p in folder.glob(pattern))
    if pickles:
        raise CourseError(f"{folder} has only pickle weights ({pickles[0]}), which can run code when "
                          "loaded: use a checkpoint with .safetensors files, or convert this one with "
                          "save_pretrained.")


class Loaded(NamedTuple):
    """What a loader loaded: ``model, tokenizer, backend = load_text_model(...)``."""

    model: Any
    tokenizer: Any  # a processor (tokenizer and image processor) for a vision-language model
    backend: str  # "unsloth" or "transformers": the one that loaded it, after any fall back


def load_with_backend(name: str, backend: str, with_unsloth: Callable[[], tuple],
                      with_transformers: Callable[[], tuple]) -> Loaded:
    """Load through unsloth where ``backend`` picks it, else (or when unsloth cannot) transformers.

    Shared by the text and the vision-language loaders; each passes its two ways of loading."""
    chosen = pick_backend(backend)
    loaded = None
    if chosen == "unsloth":
        try:
            loaded = with_unsloth()
        except Exception as err:  # unsloth cannot load every architecture: fall back, say why
            print(f"unsloth could not load {name} ({type(err).__name__}: {err}); using transformers + peft.")
            chosen = "transformers"
    model, tokenizer = loaded or with_transformers()
    clear_max_length(model)
    return Loaded(model, tokenizer, chosen)


def from_pretrained_kwargs(load_in_4bit: bool, dtype: str | None,
                           skip_modules: list[str] | None = None) -> dict:
    """``from_pretrained`` arguments for transformers: the dtype, bitsandbytes 4-bit where it can run
    (a CUDA GPU), and this process's GPU. ``skip_modules`` stay unquantized (a VL model's vision tower)."""
    import torch

    cuda = torch.cuda.is_available()
    kwargs: dict = {"dtype": _torch_dtype(dtype) or (torch.bfloat16 if cuda else torch.float32)}
    if load_in_4bit and not (cuda and importlib.util.find_spec("bitsandbytes")):
        print("4-bit loading needs a CUDA GPU and bitsandbytes: loading the full-precision weights instead.")
        load_in_4bit = False
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"], llm_int8_skip_modules=skip_modules,
        )
    if cuda:  # each training process (accelerate launch, torchrun) on its own GPU
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return kwargs


def load_text_model(
    model: str | Profile = "embedded",
    *,
    max_seq_length: int | None = None,
    load_in_4bit: bool | None = None,
    dtype: str | None = None,
    backend: str = "auto",
    source: str | None = None,
) -> Loaded:
    """The model, its tokenizer and the backend that loaded them, for a profile, a profile name,
    a hub id, a local folder or "embedded".

    A profile supplies the model id, 4-bit choice, dtype and sequence length; keyword arguments
    override it.
    """
    profile = PROFILES.get(model) if isinstance(model, str) else model
    if profile is not None:
        model = profile.text_model
        max_seq_length = max_seq_length or profile.max_seq_length
        load_in_4bit = profile.load_in_4bit if load_in_4bit is None else load_in_4bit
        dtype = dtype or profile.dtype
    path = resolve_model(model, source=source).path
    require_safetensors(path)

    def with_unsloth():
        from unsloth import FastLanguageModel

        return FastLanguageModel.from_pretrained(model_name=str(path), max_seq_length=max_seq_length or 2048,
                                                 load_in_4bit=bool(load_in_4bit), dtype=_torch_dtype(dtype))

    def with_transformers():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = from_pretrained_kwargs(bool(load_in_4bit), dtype)
        return AutoModelForCausalLM.from_pretrained(path, **kwargs), AutoTokenizer.from_pretrained(path)

    loaded = load_with_backend(str(model), backend, with_unsloth, with_transformers)
    if loaded.tokenizer.pad_token is None:
        loaded.tokenizer.pad_token = loaded.tokenizer.eos_token
    return loaded


def clear_max_length(model) -> None:
    """Forget a ``max_length`` stored in the generation config (unsloth stores the context size there).

    Every ``generate`` call names ``max_new_tokens``; with ``max_length`` also set, transformers warns
    on each call that both were given. The context size is still enforced by the model's config."""
    config = getattr(model, "generation_config", None)
    if config is not None and getattr(config, "max_length", None) is not None:
        config.max_length = None


def add_lora(
    model,
    r: int = 16,
    alpha: int = 16,
    targets: tuple[str, ...] = LORA_TARGETS,
    dropout: float = 0.0,
    *,
    backend: str = "transformers",
    gradient_checkpointing: bool = True,
    seed: int = 3407,
):
    """The model wrapped with LoRA adapters of rank ``r`` on ``targets``; only those train.

    ``backend`` is the one that loaded the model (``Loaded.backend``): unsloth makes its own adapters."""
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        return FastLanguageModel.get_peft_model(
            model, r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
            bias="none", use_gradient_checkpointing="unsloth" if gradient_checkpointing else False,
            random_state=seed,
        )
    from peft import LoraConfig, get_peft_model

    model = prepare_for_lora(model, gradient_checkpointing)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def prepare_for_lora(model, gradient_checkpointing: bool):
    """The model ready for peft's LoRA (unsloth's ``get_peft_model`` does this itself): 4-bit weights
    prepared for training, and activations recomputed in the backward pass when ``gradient_checkpointing``
    (less memory, about a third more time)."""
    from peft import prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False):
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # checkpointed LoRA layers need grads flowing from the inputs
    return model


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def save_adapter(model, tokenizer, path: str | Path) -> Path:
    """Save only the LoRA adapter (a few MB) and the tokenizer; nothing half-written on failure."""
    path = Path(path)
    with atomic_path(path, directory=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return path


def load_adapter(model, path: str | Path, made_by: str = "the training notebook"):
    """The base ``model`` with the saved adapter at ``path`` applied, ready for generation."""
    from peft import PeftModel

    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise CourseError(f"No adapter at {path}: run {made_by} first.")
    return PeftModel.from_pretrained(model, path, is_trainable=False)
