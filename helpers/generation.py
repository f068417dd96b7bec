"""Generate chat replies in batches, greedy by default, and time them.

``generate_replies`` answers a list of questions; ``generate_to_jsonl`` does the same for an
evaluation set, appending each reply to a JSON Lines file so that a rerun resumes where it
stopped. Both use vLLM when the model is a vLLM engine (``vllm.LLM``, or an unsloth model
loaded with ``fast_inference=True``), and transformers' ``generate`` otherwise.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from helpers.answers import split_think
from helpers.clock import fits_before
from helpers.errors import OutOfMemory, free_gpu_memory, is_out_of_memory
from helpers.files import atomic_path

DISCLAIMER = ("For teaching only: model output is not medical advice. In an emergency call your "
              "local emergency number (120 in China, 911 in the US, 112 in Europe).")


GENERATION_KNOBS = ("lower BATCH_SIZE or MAX_NEW_TOKENS, or set HALVE_BATCH_ON_OOM = True to retry with "
                    "half the batch")


@dataclass
class Reply:
    """One generated answer with how long it took and how many tokens it has."""

    question: str
    text: str
    new_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def chat_prompt(tokenizer, question: str | list[dict], system: str | None = None,
                thinking: bool | None = None) -> str:
    """The question rendered with the model's own chat template, ready for generation.

    ``question`` is one user message, or a whole conversation (a list of ``{"role", "content"}``
    messages ending with the user's turn), as a chat sends it again at every turn.
    """
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": question}] if isinstance(question, str) else list(question)
    extra = {} if thinking is None else {"enable_thinking": thinking}  # Qwen3 templates read this
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)


def generate_replies(
    model,
    tokenizer,
    questions: list[str],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    system: str | None = None,
    thinking: bool | None = None,
    do_sample: bool = False,
    lora_request=None,
) -> list[Reply]:
    """Replies to ``questions``, generated ``batch_size`` at a time with left padding.

    With a vLLM engine the whole list goes in at once (vLLM batches by itself); ``lora_request``
    names the adapter vLLM should apply.
    """
    if uses_vllm(model, lora_request):
        return _generate_with_vllm(model, tokenizer, questions, max_new_tokens=max_new_tokens, system=system,
                                   thinking=thinking, do_sample=do_sample, lora_request=lora_request)
    replies: list[Reply] = []
    with generating(model, tokenizer):
        for start in range(0, len(questions), batch_size):
            batch = questions[start:start + batch_size]
            prompts = [chat_prompt(tokenizer, q, system, thinking) for q in batch]
            inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            began = time.perf_counter()
            new_ids = generate_batch(model, tokenizer, inputs, max_new_tokens, do_sample=do_sample)
            seconds = (time.perf_counter() - began) / len(batch)
            for question, ids in zip(batch, new_ids, strict=True):
                text = tokenizer.decode(ids, skip_special_tokens=True).strip()
                replies.append(Reply(question, text, len(ids), seconds))
    return replies


# --- the one generation loop: every batch of every notebook goes through these two -----------

def unsloth_class(model):
    """unsloth's ``FastLanguageModel`` or ``FastVisionModel`` when unsloth loaded ``model``, else None.

    unsloth replaces the ``generate`` of each model it loads (under any LoRA wrapper) with its own."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = getattr(getattr(base, "generate", None), "__name__", "")
    if name == "unsloth_fast_generate":
        from unsloth import FastLanguageModel

        return FastLanguageModel
    if name == "unsloth_base_fast_generate":
        from unsloth import FastVisionModel

        return FastVisionModel
    return None


@contextmanager
def generating(model, tokenizer):
    """``model`` ready to generate: evaluation mode (unsloth's inference kernels too) and left padding,
    each put back as it was afterwards, since a trainer may go on with the same model and collator."""
    fast, was_training, side = unsloth_class(model), model.training, tokenizer.padding_side
    if fast is not None:
        fast.for_inference(model)
    model.eval()
    tokenizer.padding_side = "left"  # generation continues from the last token of every row
    try:
        yield model
    finally:
        tokenizer.padding_side = side
        if fast is not None and was_training:
            fast.for_training(model)  # gradient checkpointing back on, as unsloth set it up
        model.train(was_training)


def generate_batch(model, tokenizer, inputs, max_new_tokens: int, **generate_kwargs) -> list[list[int]]:
    """The new token ids of each row of one encoded batch (padding dropped), under ``generating``.

    Running out of GPU memory becomes ``OutOfMemory``, which names the knobs that make a batch smaller."""
    import torch

    inputs = inputs.to(model.device)
    try:
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens,
                                    pad_token_id=tokenizer.pad_token_id, **generate_kwargs)
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        free_gpu_memory()
        rows = len(inputs["input_ids"])
        raise OutOfMemory(f"generating {rows} answers at once", GENERATION_KNOBS) from None
    new = output[:, inputs["input_ids"].shape[1]:].tolist()
    return [[token for token in row if token != tokenizer.pad_token_id] for row in new]


def uses_vllm(model, lora_request=None) -> bool:
    """Whether ``model`` generates through vLLM: a ``vllm.LLM``, or unsloth's ``fast_inference`` model.

    An unsloth model wrapped with a PEFT adapter only applies that adapter in vLLM when given a
    ``lora_request``; without one, transformers generates, so the adapter is never silently dropped.
    """
    if type(model).__module__.split(".")[0] == "vllm":
        return True
    # unsloth gives every model a fast_generate; only a fast_inference one has a vLLM engine behind it
    has_engine = getattr(model, "vllm_engine", None) is not None
    return has_engine and (lora_request is not None or not hasattr(model, "peft_config"))


def _generate_with_vllm(model, tokenizer, questions, *, max_new_tokens, system, thinking, do_sample,
                        lora_request) -> list[Reply]:
    from vllm import SamplingParams

    tokenizer = tokenizer or model.get_tokenizer()
    # temperature 0 is greedy decoding in vLLM, as do_sample=False is in transformers
    params = SamplingParams(temperature=0.7 if do_sample else 0.0, max_tokens=max_new_tokens)
    prompts = [chat_prompt(tokenizer, q, system, thinking) for q in questions]
    generate = model.fast_generate if hasattr(model, "fast_generate") else model.generate
    extra = {"lora_request": lora_request} if lora_request is not None else {}
    began = time.perf_counter()
    outputs = generate(prompts, sampling_params=params, use_tqdm=False, **extra)
    seconds = (time.perf_counter() - began) / max(len(prompts), 1)
    return [Reply(q, out.outputs[0].text.strip(), len(out.outputs[0].token_ids), seconds)
            for q, out in zip(questions, outputs, strict=True)]


def vllm_installed() -> bool:
    """Whether vLLM can generate here: the package is installed and a CUDA GPU is present."""
    try:
        found = importlib.util.find_spec("vllm") is not None
    except ValueError:  # a module without a spec, e.g. one a test put in sys.modules
        found = "vllm" in __import__("sys").modules
    if not found:
        return False
    import torch

    return torch.cuda.is_available()


def load_vllm(profile, *, gpu_memory_utilization: float = 0.85):
    """The profile's text model as a vLLM engine with LoRA enabled: adapters are applied per request.

    4-bit profiles load the weights with bitsandbytes, as ``load_text_model`` does; the context holds
    the profile's sequence length plus its longest answer.
    """
    from vllm import LLM

    from helpers.hub import resolve_model

    rank = max(8, 1 << (profile.lora_r - 1).bit_length())  # vLLM takes ranks 8, 16, 32, 64, …
    extra = {"quantization": "bitsandbytes"} if profile.load_in_4bit else {}
    return LLM(model=str(resolve_model(profile.text_model).path), dtype=profile.dtype,
               max_model_len=profile.max_seq_length + profile.max_new_tokens, enable_lora=True,
               max_lora_rank=rank, gpu_memory_utilization=gpu_memory_utilization, seed=0, **extra)


def lora_request(label: str, index: int, path: str | Path):
    """What tells a vLLM engine to apply the adapter at ``path`` (``index``: a unique number ≥ 1)."""
    from vllm.lora.request import LoRARequest

    return LoRARequest(label, index, str(path))


# --- evaluation sets: predictions in a JSON Lines file, resumed on rerun --------------------

def adapter_fingerprint(path: str | Path) -> str:
    """A short hash of an adapter's files, so predictions of another adapter are never reused."""
    digest = hashlib.sha256()
    for file in sorted(Path(path).glob("adapter_*")):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def read_predictions(path: Path) -> tuple[dict[str, dict], int]:
    """(records by id, unreadable lines) of a predictions file; the last record of an id wins."""
    records, unreadable = {}, 0
    if Path(path).is_file():
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                records[record["id"]] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                unreadable += 1  # e.g. half a line written when the kernel was stopped
    return records, unreadable


def _progress(total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="item")


def answered(items: list, *record_lists: list[dict]) -> list:
    """The items with a reply in every record list (all of them unless a time budget cut some)."""
    ids = set.intersection(*({r["id"] for r in records} for records in record_lists))
    return [item for item in items if item.id in ids]


def generate_to_jsonl(
    model,
    tokenizer,
    items: list[dict],
    path: str | Path,
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    system: str | None = None,
    thinking: bool | None = None,
    do_sample: bool = False,
    tag: dict | None = None,
    lora_request=None,
    desc: str = "generating",
    halve_batch_on_oom: bool = False,
    deadline: float | None = None,
) -> list[dict]:
    """A reply for every item (a dict with "id" and "prompt"), in the order of ``items``.

    Replies are appended to the JSON Lines file ``path`` batch by batch, so a rerun generates only
    what is missing. A saved reply is reused only when its prompt and ``tag`` (model, adapter,
    settings) are the same as now. Each record keeps the whole reply, its think block, and the
    answer after the think block: the part that is scored. Out of GPU memory, it stops with one
    sentence naming the knobs, or with ``halve_batch_on_oom`` goes on with half the batch.

    With a ``deadline`` (``time.monotonic()``, from ``clock.Budget.deadline``) it starts no batch that
    would end after it, says what it cut, and returns the replies it has. The items then keep their
    order, so what is cut is the end of the (shuffled) list, not the longest questions.
    """
    path = Path(path)
    tag = {**(tag or {}), "max_new_tokens": max_new_tokens, "thinking": thinking, "do_sample": do_sample}
    saved, unreadable = read_predictions(path)
    wanted = {item["id"]: item for item in items}
    kept = {i: r for i, r in saved.items()
            if i in wanted and r.get("prompt") == wanted[i]["prompt"] and r.get("tag") == tag}
    if unreadable or len(kept) != len(saved):
        dropped = len(saved) - len(kept) + unreadable
        print(f"{path.name}: {len(kept)} saved replies reused; {dropped} made with other settings, "
              "for other items or unreadable were dropped.")
        with atomic_path(path) as tmp:  # an interrupt here must not lose the replies kept
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept.values()),
                           encoding="utf-8")
    elif kept:
        print(f"{path.name}: resuming, {len(kept)} of {len(items)} replies already saved.")
    todo = [item for item in items if item["id"] not in kept]
    if deadline is None:  # similar lengths in one batch waste less time on padding; greedy output is the same
        todo.sort(key=lambda item: len(item["prompt"]))
    step = len(todo) if uses_vllm(model, lora_request) else batch_size
    path.parent.mkdir(parents=True, exist_ok=True)
    with _progress(len(items), len(items) - len(todo), desc) as bar, path.open("a", encoding="utf-8") as out:
        start, step, batch_seconds = 0, max(step, 1), 0.0
        while start < len(todo):
            batch = todo[start:start + step]
            if start and not fits_before(deadline, batch_seconds):
                print(f"TIME_BUDGET_MIN: {desc}: {len(kept)} of {len(items)} answered, the last "
                      f"{len(todo) - start} cut (each batch takes about {batch_seconds:.0f} s).")
                break
            started = time.monotonic()
            try:
                replies = generate_replies(model, tokenizer, [item["prompt"] for item in batch],
                                           max_new_tokens=max_new_tokens, batch_size=len(batch),
                                           system=system, thinking=thinking, do_sample=do_sample,
                                           lora_request=lora_request)
            except OutOfMemory:
                if not halve_batch_on_oom or len(batch) == 1:
                    raise
                step = len(batch) // 2
                print(f"Out of GPU memory with {len(batch)} answers at once: going on with {step}.")
                continue
            start += len(batch)
            batch_seconds = max(batch_seconds, time.monotonic() - started)
            for item, reply in zip(batch, replies, strict=True):
                think, answer = split_think(reply.text)
                record = {"id": item["id"], "prompt": item["prompt"], "reply": reply.text, "think": think,
                          "answer": answer, "new_tokens": reply.new_tokens,
                          "seconds": round(reply.seconds, 3), "tag": tag}
                kept[item["id"]] = record
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()  # a stopped kernel loses at most the batch in progress
            bar.update(len(batch))
    return [kept[item["id"]] for item in items if item["id"] in kept]
