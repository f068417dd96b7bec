"""The training of 03 (SFT) and 06 (GRPO), one step per function.

The notebooks call these steps one at a time, with a lesson between them; ``python -m helpers.train``
calls the same steps in a row, on one GPU or, through ``accelerate launch``, on several. One code path:
a change here changes both.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from helpers import datasets, rewards, training
from helpers.errors import CourseError
from helpers.generation import chat_prompt
from helpers.models import LORA_TARGETS, add_lora, load_text_model, save_adapter
from helpers.profiles import Profile

SFT_SOURCES = ("medical-o1-reasoning-SFT", "delicate_medical_r1_data")
GRPO_SOURCES = ("medical-o1-verifiable-problem", "cmb-exam", "medqa")
GRPO_SYSTEM_PROMPT = ("You are a careful medical expert. Reason step by step inside <think> </think>, "
                      "then give only the final answer: a few words, or the option letter.")
RULE_WEIGHTS = {"format_reward": 1.0, "reasoning_steps_reward": 0.5, "accuracy_reward": 2.0,
                "length_reward": 0.5}


def world_size() -> int:
    """How many processes train together (``accelerate launch`` and ``torchrun`` set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True in the one process that prints and saves (rank 0), and when there is only one."""
    return int(os.environ.get("RANK", "0")) == 0


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _optimizer() -> str:
    """AdamW with 8-bit moments on a GPU (a quarter of the memory); plain AdamW on a CPU and under FSDP,
    which shards the optimizer itself and cannot gather bitsandbytes' 8-bit state into a checkpoint."""
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    return "adamw_8bit" if _on_gpu() and not fsdp else "adamw_torch"


# --- SFT (03) ----------------------------------------------------------------------------------

@dataclass
class SFTPlan:
    """Every choice of an SFT run: the profile's values, with the notebook's knobs applied."""

    profile: Profile
    model_name: str
    sources: tuple[str, ...]
    languages: tuple[str, ...]
    examples: int
    held_out: int
    max_seq_length: int
    full_finetune: bool
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    learning_rate: float
    steps: int
    save_every: int
    tracking: str
    seed: int
    backend: str = "auto"

    @property
    def weights(self) -> str:
        return "4-bit" if self.profile.load_in_4bit and not self.full_finetune else self.profile.dtype

    def describe(self) -> list[str]:
        """The plan in four lines, for the notebook and the script to print."""
        p = self.profile
        lora = f"LoRA r={self.lora_r}, alpha={self.lora_alpha}"
        method = "full fine-tuning" if self.full_finetune else lora
        return [f"model: {self.model_name} ({self.weights})", f"method: {method}",
                f"data: {self.examples} training examples + {self.held_out} held out in "
                f"{'+'.join(self.languages)}, at most {self.max_seq_length} tokens",
                f"steps: {self.steps} × batch {p.sft_batch_size} × accumulation {p.sft_grad_accum}"
                f"{f' × {world_size()} processes' if world_size() > 1 else ''}, "
                f"learning rate {self.learning_rate:g}, a checkpoint every {self.save_every} steps"]


def plan_sft(profile: Profile, *, model: str = "", sources: tuple[str, ...] = SFT_SOURCES,
             languages: tuple[str, ...] | None = None, examples: int | None = None, held_out: int = 16,
             max_seq_length: int | None = None, full_finetune: bool = False, lora_r: int | None = None,
             lora_alpha: int | None = None, lora_dropout: float = 0.0, learning_rate: float | None = None,
             steps: int | None = None, save_every: int | None = None, tracking: str = "auto",
             seed: int = 0, backend: str = "auto") -> SFTPlan:
    """The plan for ``profile``; every knob left at None takes the profile's value.

    ``backend``: "auto" is unsloth on one CUDA GPU and transformers + peft elsewhere, on several GPUs
    and for full fine-tuning; "transformers" or "unsloth" to choose."""
    if full_finetune and not profile.full_finetune_ok:
        raise CourseError(f"Full fine-tuning does not fit the {profile.name} profile: "
                          "set FULL_FINETUNE = False.")
    steps = steps or profile.sft_steps
    return SFTPlan(
        profile=profile, model_name=model or profile.text_model, sources=tuple(sources),
        languages=tuple(languages or profile.sft_languages), examples=examples or profile.sft_examples,
        held_out=held_out, max_seq_length=max_seq_length or profile.max_seq_length,
        full_finetune=full_finetune, lora_r=lora_r or profile.lora_r,
        lora_alpha=lora_alpha or profile.lora_alpha, lora_dropout=lora_dropout,
        # full fine-tuning moves every weight: a tenth of the LoRA rate, or it forgets what it knew
        learning_rate=learning_rate or profile.sft_learning_rate / (10 if full_finetune else 1),
        steps=steps, save_every=save_every or max(1, steps // 4), tracking=tracking, seed=seed,
        backend=backend)


def load_sft_examples(plan: SFTPlan) -> tuple[datasets.SFTSet, list, list]:
    """(the loaded set with its report, held-out examples, training examples)."""
    sft = datasets.load_sft_examples(plan.sources, plan.languages, limit=plan.examples + plan.held_out,
                                     seed=plan.seed)
    return sft, sft.examples[:plan.held_out], sft.examples[plan.held_out:]


def load_sft_model(plan: SFTPlan):
    """(model, tokenizer): unsloth on one CUDA GPU, transformers + peft elsewhere and on several GPUs."""
    backend = plan.backend
    if plan.full_finetune or (backend == "auto" and world_size() > 1):
        backend = "transformers"  # unsloth's fast path is for LoRA on one GPU
    return load_text_model(
        plan.model_name, max_seq_length=plan.max_seq_length, dtype=plan.profile.dtype,
        load_in_4bit=False if plan.full_finetune else plan.profile.load_in_4bit, backend=backend)


def sft_rows(tokenizer, examples: list, max_seq_length: int) -> tuple[list[dict], list[int], int]:
    """(prompt/completion rows that fit, every example's token count, how many were too long)."""
    rows = [datasets.to_prompt_completion(tokenizer, ex) for ex in examples]
    lengths = datasets.count_tokens(tokenizer, rows)
    kept, n_overlong = datasets.drop_overlong(rows, lengths, max_seq_length)
    return kept, lengths, n_overlong


def prepare_sft_model(plan: SFTPlan, model):
    """The model ready to train: LoRA adapters added, or every weight unfrozen for full fine-tuning."""
    if plan.full_finetune:
        model.requires_grad_(True)
        return model
    return add_lora(model, r=plan.lora_r, alpha=plan.lora_alpha, dropout=plan.lora_dropout,
                    targets=LORA_TARGETS, seed=plan.seed,
                    gradient_checkpointing=_on_gpu())  # recompute activations: saves GPU memory, costs time


def sft_arguments(plan: SFTPlan, output_dir: Path, *, padding_free: bool):
    """TRL's ``SFTConfig`` for the plan: the arguments that matter, each with the reason for its value."""
    from trl import SFTConfig

    on_gpu, p = _on_gpu(), plan.profile
    return SFTConfig(
        output_dir=str(output_dir),  # checkpoints go here; rerunning training resumes from them
        max_steps=plan.steps, per_device_train_batch_size=p.sft_batch_size,
        gradient_accumulation_steps=p.sft_grad_accum,  # effective batch = batch size × accumulation
        learning_rate=plan.learning_rate, lr_scheduler_type="cosine", warmup_steps=max(1, plan.steps // 10),
        optim=_optimizer(),  # 8-bit optimizer moments on a GPU: a quarter of the memory
        bf16=p.dtype == "bfloat16", fp16=p.dtype == "float16",  # the cpu profile trains in fp32
        completion_only_loss=True,  # loss on the completion (think block + answer), never on the prompt
        padding_free=padding_free,  # examples end to end, no padding (unsloth keeps them apart)
        max_length=None if padding_free else plan.max_seq_length,  # overlong examples were dropped already
        train_sampling_strategy="random" if padding_free else "group_by_length",  # similar lengths per batch
        gradient_checkpointing=on_gpu and plan.full_finetune,  # for LoRA, add_lora already arranged it
        logging_steps=max(1, plan.steps // 20), save_steps=plan.save_every, save_total_limit=2,
        report_to=training.report_to(plan.tracking, log_dir=output_dir.parent / "swanlog"), seed=plan.seed,
        dataloader_pin_memory=on_gpu,  # pinned memory speeds copies to a GPU; there is none on cpu
        use_cpu=not on_gpu,  # on a CPU, several processes then train one model together (gloo)
        ddp_find_unused_parameters=False,  # every adapter weight gets a gradient: skip DDP's search
    )


def sft_trainer(plan: SFTPlan, model, tokenizer, rows: list[dict], run: Path):
    """TRL's ``SFTTrainer`` on the rows, with the plan's arguments."""
    from datasets import Dataset
    from trl import SFTTrainer

    padding_free = model.course_backend == "unsloth"  # plain PyTorch attention would mix the examples
    args = sft_arguments(plan, run / "sft-checkpoints", padding_free=padding_free)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)
    training.fp32_adapters_for_fp16(trainer)  # a T4 trains in fp16, which needs fp32 adapters
    return trainer


def save_sft_result(plan: SFTPlan, model, tokenizer, run: Path) -> Path:
    """Save the adapter (or, after full fine-tuning, the whole model) where 04 and 06 look for it."""
    return save_adapter(model, tokenizer, run / ("sft-model" if plan.full_finetune else "sft-adapter"))


# --- GRPO (06) ---------------------------------------------------------------------------------

@dataclass
class GRPOPlan:
    """Every choice of a GRPO run: the profile's values, with the notebook's knobs applied."""

    profile: Profile
    model_name: str
    from_sft: bool
    sources: tuple[str, ...]
    offline: bool
    prompts: int
    check_prompts: int
    steps: int
    num_generations: int
    prompts_per_step: int
    max_completion_length: int
    temperature: float
    beta: float
    learning_rate: float
    lora_r: int
    lora_alpha: int
    prefill_think: bool
    rule_weights: dict[str, float] = field(default_factory=lambda: dict(RULE_WEIGHTS))
    teacher_share: float = 0.0
    sample_every: int = 1
    seed: int = 0

    def describe(self) -> str:
        return (f"{self.steps} steps × {self.prompts_per_step} question(s) × {self.num_generations} answers "
                f"of at most {self.max_completion_length} tokens · temperature {self.temperature}"
                f" · beta {self.beta} · learning rate {self.learning_rate:g}"
                f"{f' · {world_size()} processes' if world_size() > 1 else ''}")


def plan_grpo(profile: Profile, *, model: str = "", from_sft: bool = True,
              sources: tuple[str, ...] = GRPO_SOURCES, offline: bool = False, prompts: int | None = None,
              check_prompts: int = 8, steps: int | None = None, num_generations: int | None = None,
              prompts_per_step: int = 1, max_completion_length: int | None = None, temperature: float = 1.0,
              beta: float = 0.04, learning_rate: float | None = None, lora_r: int | None = None,
              lora_alpha: int | None = None, prefill_think: bool = True,
              rule_weights: dict[str, float] | None = None, teacher_share: float = 0.0,
              sample_every: int | None = None, seed: int = 0) -> GRPOPlan:
    """The plan for ``profile``; every knob left at None takes the profile's value."""
    steps = steps or profile.grpo_steps
    return GRPOPlan(
        profile=profile, model_name=model, from_sft=from_sft, sources=tuple(sources), offline=offline,
        prompts=prompts or profile.grpo_prompts, check_prompts=check_prompts, steps=steps,
        num_generations=num_generations or profile.grpo_generations, prompts_per_step=prompts_per_step,
        max_completion_length=max_completion_length or profile.grpo_max_completion, temperature=temperature,
        beta=beta,
        # GRPO updates are noisy: small steps on a GPU; on cpu a dozen steps must show a change
        learning_rate=learning_rate or (5e-6 if _on_gpu() else 2e-4),
        lora_r=lora_r or profile.lora_r, lora_alpha=lora_alpha or profile.lora_alpha,
        prefill_think=prefill_think, rule_weights=dict(rule_weights or RULE_WEIGHTS),
        teacher_share=teacher_share, sample_every=sample_every or max(1, steps // 4), seed=seed)


def load_grpo_items(plan: GRPOPlan, run: Path) -> tuple[list, list, list[dict]]:
    """(training questions, held-out questions, the loading report per source).

    The exam items of 01's evaluation set are held out of training (04 scores them)."""
    held_out = datasets.evaluation_questions(run)
    items, report = datasets.load_grpo_items(plan.sources, plan.prompts + plan.check_prompts,
                                             offline=plan.offline, held_out=held_out, seed=plan.seed)
    n_check = min(plan.check_prompts, len(items) // 3)  # never more than a third of what there is
    return items[:len(items) - n_check], items[len(items) - n_check:], report


def grpo_rewards(plan: GRPOPlan) -> tuple[list, dict[str, float]]:
    """(the reward functions, their weights): the four rules, plus the teacher when it has a share."""
    funcs = [rewards.format_reward, rewards.reasoning_steps_reward, rewards.accuracy_reward,
             # the length rule scores against the trainer's own token limit
             partial(rewards.length_reward, max_tokens=plan.max_completion_length)]
    if plan.teacher_share > 0:
        if not rewards.teacher_available():
            raise CourseError("TEACHER_SHARE is above 0 but no judge is set up: set JUDGE_API_KEY (and "
                              "JUDGE_BASE_URL, JUDGE_MODEL) in the environment, or set TEACHER_SHARE = 0.")
        funcs.append(rewards.teacher_reward)  # the judge in helpers/judge.py, cached on disk
    return funcs, rewards.mix_weights(plan.rule_weights, plan.teacher_share)


def load_grpo_policy(plan: GRPOPlan, run: Path):
    """(model with trainable LoRA adapters, tokenizer, where it started): the SFT adapter of 03 if any."""
    from helpers import grpo

    fast_generation = _on_gpu() and world_size() == 1 and grpo.vllm_available()
    model, tokenizer, started_from = grpo.load_policy(
        plan.profile, run, model_id=plan.model_name, lora_r=plan.lora_r, lora_alpha=plan.lora_alpha,
        from_sft=plan.from_sft, fast_generation=fast_generation, gradient_checkpointing=_on_gpu(),
        backend="transformers" if world_size() > 1 else "auto")
    return model, tokenizer, started_from


def grpo_row(plan: GRPOPlan, tokenizer, item) -> dict:
    """One training row: the chat prompt (with the think block opened) and the columns the rewards read."""
    prompt = chat_prompt(tokenizer, item.question, system=GRPO_SYSTEM_PROMPT)
    prompt += "<think>\n" if plan.prefill_think else ""
    # Every column but "prompt" reaches the reward functions as a keyword argument.
    return {"prompt": prompt, "answer": item.answer, "choices": item.choices, "question": item.question}


def grpo_arguments(plan: GRPOPlan, output_dir: Path, reward_funcs: list, weights: dict[str, float]):
    """TRL's ``GRPOConfig`` for the plan: the knobs of GRPO, each with the reason for its value."""
    from trl import GRPOConfig

    on_gpu, p = _on_gpu(), plan.profile
    return GRPOConfig(
        output_dir=str(output_dir), max_steps=plan.steps, seed=plan.seed,
        num_generations=plan.num_generations,  # the group: answers sampled per question, compared together
        per_device_train_batch_size=plan.prompts_per_step * plan.num_generations,  # whole groups per step
        temperature=plan.temperature,  # the group needs variety to compare
        max_completion_length=plan.max_completion_length,  # tokens per answer; longer are cut (and penalised)
        beta=plan.beta,  # KL penalty towards the reference (the model we started from)
        reward_weights=[weights[rewards.reward_name(fn)] for fn in reward_funcs],
        learning_rate=plan.learning_rate, lr_scheduler_type="constant", warmup_steps=0,
        optim=_optimizer(),  # 8-bit optimizer moments on a GPU: a quarter of the memory
        bf16=p.dtype == "bfloat16", fp16=p.dtype == "float16",  # the cpu profile trains in fp32
        gradient_checkpointing=False,  # add_lora arranged it where it pays (on a GPU)
        logging_steps=1, report_to="none",  # every step is logged for the plots
        save_steps=max(1, plan.steps // 4), save_total_limit=2,  # a rerun resumes from the last checkpoint
        dataloader_pin_memory=on_gpu,  # page-locked memory speeds up copies to a GPU; a CPU has none
        use_cpu=not on_gpu,  # on a CPU, several processes then train one model together (gloo)
        ddp_find_unused_parameters=False,  # every adapter weight gets a gradient: skip DDP's search
    )


def grpo_trainer(plan: GRPOPlan, model, tokenizer, train_rows: list[dict], run: Path,
                 reward_funcs: list, weights: dict[str, float]):
    """TRL's ``GRPOTrainer`` on the rows, paid by ``reward_funcs`` (from ``grpo_rewards``)."""
    from datasets import Dataset
    from trl import GRPOTrainer

    args = grpo_arguments(plan, run / "grpo-checkpoints", reward_funcs, weights)
    trainer = GRPOTrainer(model=model, args=args, reward_funcs=reward_funcs,
                          train_dataset=Dataset.from_list(train_rows), processing_class=tokenizer)
    training.fp32_adapters_for_fp16(trainer)  # a T4 trains in fp16, which needs fp32 adapters
    return trainer


def plan_record(plan: SFTPlan | GRPOPlan) -> dict:
    """The plan as plain data, for the metrics file (the profile by name)."""
    record = asdict(plan)
    record["profile"] = plan.profile.name
    return record


# Plan fields whose knob has another name in the notebooks' first cells ("model" is the loaded model there).
_KNOB_NAMES = {"model_name": "model"}
_PROFILE_SIZES = {SFTPlan: ("sft_batch_size", "sft_grad_accum"), GRPOPlan: ()}


def save_knobs(plan: SFTPlan | GRPOPlan, path: Path, run_name: str = "") -> Path:
    """Write the plan as a knob file for ``python -m helpers.train --config``: the same training again,
    from a terminal or on several GPUs. Returns the path."""
    import yaml

    knobs = {"profile": plan.profile.name, "run_name": run_name}
    for name, value in asdict(plan).items():
        if name != "profile":
            knobs[_KNOB_NAMES.get(name, name)] = list(value) if isinstance(value, tuple) else value
    for name in _PROFILE_SIZES[type(plan)]:  # batch sizes live in the profile
        knobs[name] = getattr(plan.profile, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(knobs, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def launch_command(kind: str, knobs: Path) -> str:
    """The ``accelerate launch`` line that trains a knob file on this machine's GPUs, or, with fewer than
    two here, on a machine with two."""
    import torch

    gpus = torch.cuda.device_count()
    where = f"this machine's {gpus} GPUs" if gpus > 1 else f"a machine with 2 GPUs (this one has {gpus})"
    return (f"From a terminal in the course folder, on {where}:\n"
            f"  accelerate launch --num_processes {max(gpus, 2)} -m helpers.train {kind} --config {knobs}")
