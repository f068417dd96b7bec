"""Load a text model, give it LoRA adapters, save and reload them: one API, two backends.

On a CUDA GPU with unsloth installed the fast path is unsloth's ``FastLanguageModel``; anywhere
else (CPU, an unsupported GPU, an architecture unsloth cannot load) it is transformers + peft,
with bitsandbytes for 4-bit on CUDA. 03 and 05 write their LoRA call out in a cell; ``add_lora`` makes the
same adapters (tests/test_lora_cells.py) for 06's policy, the benchmarks and the tests.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

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


def load_text_model(
    model: str | Profile = "embedded",
    *,
    max_seq_length: int | None = None,
    load_in_4bit: bool | None = None,
    dtype: str | None = None,
    backend: str = "auto",
    source: str | None = None,
):
    """(model, tokenizer) for a profile, a profile name, a hub id, a local folder or "embedded".

    A profile supplies the model id, 4-bit choice, dtype and sequence length; keyword arguments
    override it. ``model.course_backend`` records which backend loaded it.
    """
    profile = PROFILES.get(model) if isinstance(model, str) else model
    if profile is not None:
        model = profile.text_model
        max_seq_length = max_seq_length or profile.max_seq_length
        load_in_4bit = profile.load_in_4bit if load_in_4bit is None else load_in_4bit
        dtype = dtype or profile.dtype
    resolved = resolve_model(model, source=source)
    require_safetensors(resolved.path)
    chosen = pick_backend(backend)
    if chosen == "unsloth":
        try:
            loaded = _load_with_unsloth(resolved.path, max_seq_length or 2048, bool(load_in_4bit), dtype)
        except Exception as err:  # unsloth cannot load every architecture: fall back, say why
            print(f"unsloth could not load {model} ({type(err).__name__}: {err}); using transformers + peft.")
            chosen = "transformers"
    if chosen == "transformers":
        loaded = _load_with_transformers(resolved.path, bool(load_in_4bit), dtype)
    model_obj, tokenizer = loaded
    model_obj.course_backend = chosen
    clear_max_length(model_obj)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model_obj, tokenizer


def clear_max_length(model) -> None:
    """Forget a ``max_length`` stored in the generation config (unsloth stores the context size there).

    Every ``generate`` call names ``max_new_tokens``; with ``max_length`` also set, transformers warns
    on each call that both were given. The context size is still enforced by the model's config."""
    config = getattr(model, "generation_config", None)
    if config is not None and getattr(config, "max_length", None) is not None:
        config.max_length = None


def _load_with_unsloth(path: Path, max_seq_length: int, load_in_4bit: bool, dtype: str | None):
    from unsloth import FastLanguageModel

    return FastLanguageModel.from_pretrained(
        model_name=str(path), max_seq_length=max_seq_length,
        load_in_4bit=load_in_4bit, dtype=_torch_dtype(dtype),
    )


def _load_with_transformers(path: Path, load_in_4bit: bool, dtype: str | None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cuda = torch.cuda.is_available()
    kwargs: dict = {"dtype": _torch_dtype(dtype) or (torch.bfloat16 if cuda else torch.float32)}
    if load_in_4bit and not (cuda and importlib.util.find_spec("bitsandbytes")):
        print("4-bit loading needs a CUDA GPU and bitsandbytes: loading the full-precision weights instead.")
        load_in_4bit = False
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"],
        )
    if cuda:  # each training process (accelerate launch, torchrun) on its own GPU
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model, AutoTokenizer.from_pretrained(path)


def add_lora(
    model,
    r: int = 16,
    alpha: int = 16,
    targets: tuple[str, ...] = LORA_TARGETS,
    dropout: float = 0.0,
    *,
    gradient_checkpointing: bool = True,
    seed: int = 3407,
):
    """The model wrapped with LoRA adapters of rank ``r`` on ``targets``; only those train."""
    if getattr(model, "course_backend", "transformers") == "unsloth":
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
    peft_model = get_peft_model(model, config)
    peft_model.course_backend = "transformers"
    return peft_model


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
    backend = getattr(model, "course_backend", "transformers")
    adapted = PeftModel.from_pretrained(model, path, is_trainable=False)
    adapted.course_backend = backend
    return adapted
