"""Vision-language models: load one (or build a tiny one), add LoRA, batch image + report pairs, caption.

On a CUDA GPU with unsloth installed the fast path is unsloth's ``FastVisionModel``; anywhere else
it is transformers + peft. On the ``cpu`` profile the model is a tiny, randomly initialised Qwen-VL
built here on first use (no download): the real architecture, shrunk until a few training steps
take seconds on a laptop. It cannot see anything yet; the notebook shows it learning to caption.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from helpers.datasets import vl_messages
from helpers.errors import CourseError
from helpers.files import atomic_path
from helpers.hub import cache_dir, embedded_model_dir, resolve_model
from helpers.models import (
    Loaded,
    _torch_dtype,
    from_pretrained_kwargs,
    load_with_backend,
    prepare_for_lora,
    require_safetensors,
)
from helpers.profiles import PROFILES, TINY_VL_MODEL, Profile

# The special tokens Qwen-VL models use to place an image (or video) inside the text.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
IMAGE_MARKUP = "<|vision_start|><|image_pad|><|vision_end|>"  # the processor widens <|image_pad|>
REPORT_START = "<|im_start|>assistant\n"  # the report (the assistant's turn) begins after this
TURN_END = "<|im_end|>"

# Qwen-VL chat markup: every turn is <|im_start|>role ... <|im_end|>; an image part becomes the
# vision markup. Content is either a string or a list of {"type": "image"} / {"type": "text"} parts.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '" + IMAGE_MARKUP + "' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# Architectures built locally. "tiny" sizes train a step in well under a second on two CPU cores;
# the published sizes (from each model's config.json) are for speed and memory measurements.
# The tiny text model starts with larger random weights than a real one (initializer_range 0.1, not
# 0.02): its frozen output layer must be able to make one word of 49k stand out, or no amount of
# LoRA training can bring the loss down.
FAMILIES = ("qwen3_vl", "qwen2_5_vl")
TINY_SHAPES: dict[str, dict] = {
    "qwen3_vl": dict(
        text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, max_position_embeddings=4096, rms_norm_eps=1e-6,
                  rope_parameters=dict(rope_type="default", rope_theta=5_000_000.0,
                                       mrope_section=[8, 4, 4], mrope_interleaved=True),
                  tie_word_embeddings=True, initializer_range=0.1),
        vision=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, patch_size=16,
                    spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=128,
                    num_position_embeddings=256, deepstack_visual_indexes=[1]),
    ),
    "qwen2_5_vl": dict(
        text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
                  rope_parameters=dict(rope_type="default", rope_theta=1_000_000.0, mrope_section=[4, 6, 6]),
                  tie_word_embeddings=True, initializer_range=0.1),
        vision=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, patch_size=14,
                    spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=128, window_size=112,
                    fullatt_block_indexes=[1]),
    ),
}
QWEN3_VL_SHAPES: dict[str, dict] = {
    "Qwen/Qwen3-VL-2B-Instruct": dict(
        text=dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=128, max_position_embeddings=262144, rms_norm_eps=1e-6,
                  rope_parameters=dict(rope_type="default", rope_theta=5_000_000.0,
                                       mrope_section=[24, 20, 20], mrope_interleaved=True),
                  tie_word_embeddings=True, vocab_size=151936),
        vision=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, patch_size=16,
                    spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=2048,
                    num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17]),
    ),
    "Qwen/Qwen3-VL-4B-Instruct": dict(
        text=dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                  num_key_value_heads=8, head_dim=128, max_position_embeddings=262144, rms_norm_eps=1e-6,
                  rope_parameters=dict(rope_type="default", rope_theta=5_000_000.0,
                                       mrope_section=[24, 20, 20], mrope_interleaved=True),
                  tie_word_embeddings=True, vocab_size=151936),
        vision=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, patch_size=16,
                    spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=2560,
                    num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17]),
    ),
}
TINY_MAX_PIXELS = 256 * 256  # at most 64 image tokens per picture on the cpu profile
REAL_MAX_PIXELS = 512 * 512  # the course's budget for real models: ~256 image tokens, fits a T4


# --- the processor: tokenizer with vision tokens + image processor + chat template --------------

def _processor_class(family: str):
    """The family's processor, accepted without torchvision (which only its video half needs)."""
    import transformers
    from transformers.video_processing_utils import BaseVideoProcessor

    base = {"qwen3_vl": transformers.Qwen3VLProcessor, "qwen2_5_vl": transformers.Qwen2_5_VLProcessor}[family]

    def check_argument_for_proper_class(self, argument_name, argument):
        # Without torchvision, transformers swaps BaseVideoProcessor for a placeholder and would
        # reject the real (unused) video processor: accept any genuine one.
        if argument_name == "video_processor" and isinstance(argument, BaseVideoProcessor):
            return type(argument)
        return base.check_argument_for_proper_class(self, argument_name, argument)

    # Same name as the base class, so a saved processor_config.json names the real class.
    return type(base.__name__, (base,), {"check_argument_for_proper_class": check_argument_for_proper_class})


def _video_processor_class(family: str):
    # Only images are used here; Qwen3-VL's video processor imports without torchvision, so both
    # families carry it (Qwen2-VL's own needs torchvision at import).
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    return Qwen3VLVideoProcessor


def build_vl_processor(family: str = "qwen3_vl", *, patch_size: int | None = None,
                       max_pixels: int = TINY_MAX_PIXELS, tokenizer_dir: str | Path | None = None):
    """A Qwen-VL processor built locally: the embedded model's tokenizer plus the vision tokens,
    an image processor that needs no torchvision, and the Qwen-VL chat template."""
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if family not in FAMILIES:
        raise CourseError(f"Unknown model family {family!r}: choose one of {', '.join(FAMILIES)}.")
    patch_size = patch_size or TINY_SHAPES[family]["vision"]["patch_size"]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or embedded_model_dir())
    tokenizer.add_special_tokens({"additional_special_tokens": list(VISION_TOKENS)})
    tokenizer.chat_template = CHAT_TEMPLATE
    factor = patch_size * 2  # one image token covers 2×2 patches after merging
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch_size, merge_size=2, temporal_patch_size=2,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
        min_pixels=4 * factor * factor, max_pixels=max_pixels,
    )
    video_processor = _video_processor_class(family)(patch_size=patch_size, merge_size=2,
                                                     temporal_patch_size=2)
    return _processor_class(family)(image_processor=image_processor, tokenizer=tokenizer,
                                    video_processor=video_processor, chat_template=CHAT_TEMPLATE)


def load_vl_processor(folder: str | Path):
    """The processor saved in ``folder``: AutoProcessor where torchvision is installed, else built by hand."""
    from transformers import AutoProcessor, AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    folder = Path(folder)
    if importlib.util.find_spec("torchvision") is not None:
        return AutoProcessor.from_pretrained(folder)
    family = json.loads((folder / "config.json").read_text())["model_type"] \
        if (folder / "config.json").is_file() else "qwen3_vl"
    family = family if family in FAMILIES else "qwen3_vl"
    template = folder / "chat_template.jinja"
    return _processor_class(family)(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(folder),
        tokenizer=AutoTokenizer.from_pretrained(folder),
        video_processor=_video_processor_class(family).from_pretrained(folder),
        chat_template=template.read_text() if template.is_file() else CHAT_TEMPLATE,
    )


# --- configs and checkpoints built locally --------------------------------------------------------

def vl_config(family: str, shape: dict, processor):
    """The transformers config of a Qwen-VL ``family`` with ``shape``, wired to the processor's tokens."""
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    tokenizer = processor.tokenizer
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"))}
    # A real shape keeps its published vocabulary size; a tiny one needs just the tokenizer's
    # (rounded up to a multiple of 64, as checkpoints usually are).
    text = {"vocab_size": -(-len(tokenizer) // 64) * 64, **shape["text"],
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}
    config_class = {"qwen3_vl": Qwen3VLConfig, "qwen2_5_vl": Qwen2_5_VLConfig}[family]
    config = config_class(text_config=text, vision_config=dict(shape["vision"]),
                          tie_word_embeddings=text["tie_word_embeddings"], **ids)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):  # the trainer checks these agree
        setattr(config, name, getattr(tokenizer, name))
    return config


def _save_atomically(model, processor, dest: Path) -> Path:
    with atomic_path(dest, directory=True) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return dest


def make_tiny_vl_model(dest: str | Path | None = None, family: str = "qwen3_vl", seed: int = 0) -> Path:
    """A tiny randomly initialised Qwen-VL and its processor, saved once (a few MB) and reused."""
    import torch
    from transformers import AutoModelForImageTextToText

    dest = Path(dest) if dest else cache_dir() / f"tiny-random-{family.replace('_', '-')}"
    if (dest / "config.json").is_file():
        return dest
    processor = build_vl_processor(family)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(vl_config(family, TINY_SHAPES[family], processor),
                                                    dtype=torch.float32)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.generation_config, name, getattr(processor.tokenizer, name))
    return _save_atomically(model, processor, dest)


def make_random_vl_checkpoint(model_id: str, dest: str | Path, dtype: str = "bfloat16",
                              processor=None) -> Path:
    """Random weights of a published Qwen3-VL shape with a locally built processor (benchmarks only)."""
    import torch
    from transformers import AutoModelForImageTextToText

    if model_id not in QWEN3_VL_SHAPES:
        raise CourseError(f"No shape for {model_id}: known are {', '.join(QWEN3_VL_SHAPES)}.")
    dest = Path(dest)
    if (dest / "config.json").is_file():
        return dest
    processor = processor or build_vl_processor("qwen3_vl", max_pixels=REAL_MAX_PIXELS)
    torch.manual_seed(0)
    config = vl_config("qwen3_vl", QWEN3_VL_SHAPES[model_id], processor)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # drawing weights: seconds on a GPU
        model = AutoModelForImageTextToText.from_config(config, dtype=getattr(torch, dtype))
    model.generation_config.eos_token_id = processor.tokenizer.convert_tokens_to_ids(TURN_END)
    saved = _save_atomically(model, processor, dest)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the caller measures memory next
    return saved


# --- loading and LoRA -------------------------------------------------------------------------

def vl_model_folder(name: str, source: str | None = None) -> Path:
    """The local folder of a VL model: the tiny one built here, or a hub id downloaded (tiny offline)."""
    if name == TINY_VL_MODEL:
        return make_tiny_vl_model()
    try:
        return resolve_model(name, source=source, fallback=False).path
    except CourseError as err:
        if "no hub is reachable" not in str(err):
            raise
        print(f"No hub reachable: using the tiny random {TINY_VL_MODEL} instead of {name}.")
        return make_tiny_vl_model()


def load_vl_model(model: str | Profile = TINY_VL_MODEL, *, load_in_4bit: bool | None = None,
                  dtype: str | None = None, backend: str = "auto", source: str | None = None) -> Loaded:
    """The model, its processor and the backend that loaded them, for a profile, a profile name,
    a hub id, a local folder or the tiny model: ``model, processor, backend = load_vl_model(...)``."""
    profile = PROFILES.get(model) if isinstance(model, str) else model
    if profile is not None:
        model = profile.vl_model
        load_in_4bit = profile.load_in_4bit if load_in_4bit is None else load_in_4bit
        dtype = dtype or profile.dtype
    folder = vl_model_folder(model, source)
    require_safetensors(folder)

    def with_unsloth():
        from unsloth import FastVisionModel

        return FastVisionModel.from_pretrained(str(folder), load_in_4bit=bool(load_in_4bit),
                                               dtype=_torch_dtype(dtype),
                                               use_gradient_checkpointing="unsloth")

    def with_transformers():
        from transformers import AutoModelForImageTextToText

        # the vision tower and the output layer stay in 16-bit: quantizing them costs accuracy, saves little
        kwargs = from_pretrained_kwargs(bool(load_in_4bit), dtype, skip_modules=["visual", "lm_head"])
        return AutoModelForImageTextToText.from_pretrained(folder, **kwargs), load_vl_processor(folder)

    return load_with_backend(str(model), backend, with_unsloth, with_transformers)


# Linear layers by part of the model; names as in transformers' Qwen2.5-VL and Qwen3-VL.
ATTENTION_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv", "attn.proj")
MLP_LAYERS = ("gate_proj", "up_proj", "down_proj", "linear_fc1", "linear_fc2")


def lora_target_pattern(vision_layers: bool, language_layers: bool, attention: bool, mlp: bool) -> str:
    """A regular expression naming the linear layers LoRA adapts, as peft's ``target_modules`` takes it."""
    towers = (["visual"] if vision_layers else []) + (["language_model"] if language_layers else [])
    layers = (list(ATTENTION_LAYERS) if attention else []) + (list(MLP_LAYERS) if mlp else [])
    if not towers or not layers:
        raise CourseError("LoRA needs at least one of vision/language layers and one of attention/MLP "
                          "modules: set at least one switch of each pair to True.")
    return rf".*({'|'.join(towers)}).*\.({'|'.join(re.escape(layer) for layer in layers)})"


def add_vl_lora(model, r: int = 16, alpha: int = 16, *, vision_layers: bool = True,
                language_layers: bool = True, attention: bool = True, mlp: bool = True,
                dropout: float = 0.0, backend: str = "transformers",
                gradient_checkpointing: bool | str = True, seed: int = 3407):
    """The model with LoRA adapters of rank ``r`` on the chosen parts; only those train.

    ``backend`` is the one that loaded the model (``Loaded.backend``): unsloth makes its own adapters.
    ``gradient_checkpointing`` True on unsloth is its "unsloth" mode (the activations kept for the backward
    pass wait in CPU memory); "gpu" keeps them on the GPU (its plain mode); elsewhere any true value is on."""
    if backend == "unsloth":
        from unsloth import FastVisionModel

        peft_model = FastVisionModel.get_peft_model(
            model, finetune_vision_layers=vision_layers, finetune_language_layers=language_layers,
            finetune_attention_modules=attention, finetune_mlp_modules=mlp, r=r, lora_alpha=alpha,
            lora_dropout=dropout, bias="none", random_state=seed,
            use_gradient_checkpointing={True: "unsloth", "gpu": True, False: False}[gradient_checkpointing],
        )
        FastVisionModel.for_training(peft_model)
        return peft_model
    from peft import LoraConfig, get_peft_model

    model = prepare_for_lora(model, bool(gradient_checkpointing))
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                        target_modules=lora_target_pattern(vision_layers, language_layers, attention, mlp))
    return get_peft_model(model, config)


# --- batches: image + report pairs, loss on the report only -------------------------------------

def chat_text(processor, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation rendered with the processor's chat template (image parts become vision markup)."""
    return processor.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


class ReportCollator:
    """Turns examples {"messages": [...], "images": [PIL, ...]} into a training batch.

    Labels are -100 (ignored by the loss) everywhere except the report: the tokens of the
    assistant's turn after ``REPORT_START``, up to and including its ``<|im_end|>``, so the model
    learns to write reports and to stop, not to predict the instruction or the image placeholders.
    """

    def __init__(self, processor, report_start: str = REPORT_START, turn_end: str = TURN_END):
        self.processor = processor
        tokenizer = processor.tokenizer
        self.start_ids = tokenizer(report_start, add_special_tokens=False)["input_ids"]
        self.end_id = tokenizer.convert_tokens_to_ids(turn_end)
        self.pad_id = tokenizer.pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        texts = [chat_text(self.processor, example["messages"]) for example in examples]
        images = [example["images"] for example in examples]
        self.processor.tokenizer.padding_side = "right"  # labels line up with the text's start
        batch = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        batch["labels"] = self.report_labels(batch["input_ids"], batch["attention_mask"])
        return batch

    def report_labels(self, input_ids, attention_mask):
        """-100 everywhere except the report tokens (the last assistant turn, its <|im_end|> included)."""
        import torch

        labels = torch.full_like(input_ids, -100)
        width = len(self.start_ids)
        for row, ids in enumerate(input_ids.tolist()):
            length = int(attention_mask[row].sum())
            starts = [i + width for i in range(length - width + 1) if ids[i:i + width] == self.start_ids]
            if not starts:
                continue  # no report in this example: nothing to learn from it
            begin = starts[-1]
            end = next((i + 1 for i in range(begin, length) if ids[i] == self.end_id), length)
            labels[row, begin:end] = input_ids[row, begin:end]
        return labels


# --- captions -------------------------------------------------------------------------------

def generate_captions(model, processor, images: list, instruction: str | list[str], *,
                      max_new_tokens: int = 64, batch_size: int = 4, **generate_kwargs) -> list[str]:
    """A report for each image, greedy, ``batch_size`` images at a time (``generate_kwargs`` go on to
    ``generate``: benchmarks/vl_step.py --generate compares its settings). ``instruction``: one for every
    image, or a list with each image's own (prompts of different lengths share a batch, left-padded)."""
    from helpers.generation import generate_batch, generating

    instructions = [instruction] * len(images) if isinstance(instruction, str) else list(instruction)
    if len(instructions) != len(images):
        raise ValueError(f"{len(images)} images but {len(instructions)} instructions: "
                         "give one instruction, or one for each image")
    tokenizer = processor.tokenizer
    prompts = [chat_text(processor, vl_messages(None, text), add_generation_prompt=True)
               for text in instructions]
    stop = tokenizer.convert_tokens_to_ids(TURN_END)
    captions: list[str] = []
    with generating(model, tokenizer):
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            inputs = processor(text=prompts[start:start + batch_size], images=[[image] for image in batch],
                               padding=True, return_tensors="pt")
            new_ids = generate_batch(model, tokenizer, inputs, max_new_tokens,
                                     **{"do_sample": False, "eos_token_id": stop, **generate_kwargs})
            captions += [text.strip() for text in tokenizer.batch_decode(new_ids, skip_special_tokens=True)]
    return captions


# --- scores: findings-keyword recall (ROUGE-L is helpers.metrics.rouge_l) -------------------------
