import json
import sys
import types
from pathlib import Path

import pytest

from helpers import generation
from helpers.generation import (
    Reply,
    adapter_fingerprint,
    generate_replies,
    generate_to_jsonl,
    read_predictions,
    uses_vllm,
)

ITEMS = [{"id": f"q{i}", "prompt": f"question {i}" + "?" * i} for i in range(5)]


@pytest.fixture
def fake_generate(monkeypatch):
    """generate_replies replaced by a recorder: tests of bookkeeping need no model."""
    calls = []

    def fake(model, tokenizer, questions, **kwargs):
        calls.append(list(questions))
        return [Reply(q, f"<think>about {q}</think>Answer: B", 7, 0.5) for q in questions]

    monkeypatch.setattr(generation, "generate_replies", fake)
    return calls


def test_replies_are_saved_with_the_think_block_apart(tmp_path, fake_generate):
    path = tmp_path / "preds.jsonl"
    records = generate_to_jsonl(None, None, ITEMS, path, batch_size=2, tag={"model": "m"})
    assert [r["id"] for r in records] == [i["id"] for i in ITEMS]  # the order of the items
    assert [len(batch) for batch in fake_generate] == [2, 2, 1]
    first = records[0]
    assert first["reply"] == "<think>about question 0</think>Answer: B"
    assert first["think"] == "about question 0" and first["answer"] == "Answer: B"
    assert first["tag"] == {"model": "m", "max_new_tokens": 128, "thinking": None, "do_sample": False}
    assert len(path.read_text().splitlines()) == 5


def test_a_rerun_resumes_and_generates_only_what_is_missing(tmp_path, fake_generate):
    path = tmp_path / "preds.jsonl"
    generate_to_jsonl(None, None, ITEMS[:3], path, batch_size=8)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + '\n{"id": "q2", "pro')  # stopped half-way through a line
    fake_generate.clear()
    records = generate_to_jsonl(None, None, ITEMS, path, batch_size=8)
    assert fake_generate == [["question 2??", "question 3???", "question 4????"]]
    assert len(records) == 5 and read_predictions(path) == ({r["id"]: r for r in records}, 0)
    fake_generate.clear()
    generate_to_jsonl(None, None, ITEMS, path, batch_size=8)
    assert fake_generate == []  # everything was saved: nothing to generate


def test_replies_made_with_other_settings_or_prompts_are_not_reused(tmp_path, fake_generate):
    path = tmp_path / "preds.jsonl"
    generate_to_jsonl(None, None, ITEMS, path, tag={"model": "base"})
    fake_generate.clear()
    generate_to_jsonl(None, None, ITEMS, path, tag={"model": "sft"})
    assert len(fake_generate[0]) == 5
    fake_generate.clear()
    changed = [dict(ITEMS[0], prompt="a new prompt"), *ITEMS[1:]]
    generate_to_jsonl(None, None, changed, path, tag={"model": "sft"})
    assert fake_generate == [["a new prompt"]]
    fake_generate.clear()
    generate_to_jsonl(None, None, changed, path, tag={"model": "sft"}, max_new_tokens=64)
    assert len(fake_generate[0]) == 5
    assert len(read_predictions(path)[0]) == 5


def test_real_generation_matches_generate_replies(embedded, tmp_path):
    model, tokenizer, _ = embedded
    items = [{"id": "a", "prompt": "What organ pumps blood?"}, {"id": "b", "prompt": "Name one vitamin."}]
    records = generate_to_jsonl(model, tokenizer, items, tmp_path / "p.jsonl", max_new_tokens=8, batch_size=2)
    direct = generate_replies(model, tokenizer, [i["prompt"] for i in items], max_new_tokens=8, batch_size=2)
    assert [r["reply"] for r in records] == [r.text for r in direct]
    assert all(0 < r["new_tokens"] <= 8 and r["answer"] == r["reply"] for r in records)


def test_adapter_fingerprint_changes_with_the_weights(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"one")
    (tmp_path / "tokenizer.json").write_text("{}")
    first = adapter_fingerprint(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"x": 1}')
    assert adapter_fingerprint(tmp_path) == first  # only the adapter's own files count
    (tmp_path / "adapter_model.safetensors").write_bytes(b"two")
    assert adapter_fingerprint(tmp_path) != first


class _Output:
    def __init__(self, text):
        self.outputs = [types.SimpleNamespace(text=f" {text} ", token_ids=[1, 2, 3])]


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in for the vllm package: records what the course asks of it."""
    module = types.ModuleType("vllm")
    seen = {}

    class SamplingParams:
        def __init__(self, **kwargs):
            seen["params"] = kwargs

    class LLM:
        def generate(self, prompts, sampling_params=None, use_tqdm=True, **kwargs):
            seen["prompts"], seen["kwargs"] = prompts, kwargs
            return [_Output(f"reply {i}") for i, _ in enumerate(prompts)]

    LLM.__module__ = "vllm.entrypoints.llm"
    module.SamplingParams, module.LLM = SamplingParams, LLM
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module, seen


def test_a_vllm_engine_generates_greedily_with_the_chat_template(fake_vllm, embedded):
    module, seen = fake_vllm
    _, tokenizer, _ = embedded
    llm = module.LLM()
    assert uses_vllm(llm)
    replies = generate_replies(llm, tokenizer, ["Hi", "Bye"], max_new_tokens=12, lora_request="sft")
    assert [r.text for r in replies] == ["reply 0", "reply 1"] and replies[0].new_tokens == 3
    assert seen["params"] == {"temperature": 0.0, "max_tokens": 12}
    assert seen["kwargs"] == {"lora_request": "sft"}
    assert seen["prompts"][0].startswith("<|im_start|>") and seen["prompts"][0].endswith("assistant\n")


def test_an_adapter_is_never_dropped_by_the_vllm_path():
    class FastModel:  # unsloth's fast_inference model
        vllm_engine = object()

        def fast_generate(self):
            pass

    class PeftFastModel(FastModel):  # …wrapped with a PEFT adapter
        peft_config = {}

    class UnslothModel:  # unsloth without fast_inference: fast_generate is plain generate, no engine
        vllm_engine = None

        def fast_generate(self):
            pass

    assert uses_vllm(FastModel()) and not uses_vllm(PeftFastModel())
    assert uses_vllm(PeftFastModel(), lora_request="sft") and not uses_vllm(object())
    assert not uses_vllm(UnslothModel()) and not uses_vllm(UnslothModel(), lora_request="sft")


def test_predictions_file_is_plain_jsonl(tmp_path, fake_generate):
    path = tmp_path / "p.jsonl"
    generate_to_jsonl(None, None, ITEMS[:1], path)
    assert json.loads(path.read_text())["id"] == "q0"


def test_vllm_needs_the_package_and_a_gpu(fake_vllm):
    assert not generation.vllm_installed()  # the package is there (a stand-in), but no CUDA here


def test_a_profile_loads_into_vllm_with_lora_enabled(fake_vllm, monkeypatch):
    from helpers.hub import embedded_model_dir
    from helpers.profiles import get_profile

    module, seen = fake_vllm

    class LLM:
        def __init__(self, **kwargs):
            seen["llm"] = kwargs

    module.LLM = LLM
    cpu = get_profile("cpu")
    generation.load_vllm(cpu)
    assert seen["llm"] == {"model": str(embedded_model_dir()), "dtype": "float32",
                           "max_model_len": cpu.max_seq_length + cpu.max_new_tokens,
                           "enable_lora": True, "max_lora_rank": 16, "gpu_memory_utilization": 0.85,
                           "seed": 0}
    generation.load_vllm(get_profile("t4", text_model="embedded", lora_r=12))
    assert seen["llm"]["quantization"] == "bitsandbytes" and seen["llm"]["max_lora_rank"] == 16
    assert seen["llm"]["dtype"] == "float16"
    request_module = types.ModuleType("vllm.lora.request")
    request_module.LoRARequest = lambda *args: ("request", *args)
    monkeypatch.setitem(sys.modules, "vllm.lora", types.ModuleType("vllm.lora"))
    monkeypatch.setitem(sys.modules, "vllm.lora.request", request_module)
    request = generation.lora_request("sft", 1, Path("out/sft-adapter"))
    assert request == ("request", "sft", 1, "out/sft-adapter")


def test_out_of_memory_stops_with_the_knobs_or_goes_on_with_half_the_batch(tmp_path, embedded, monkeypatch,
                                                                            capsys):
    import torch

    from helpers.errors import OutOfMemory

    model, tokenizer, _ = embedded
    real, sizes = model.generate, []

    def generate(**kwargs):  # a GPU with room for two answers at once
        sizes.append(kwargs["input_ids"].shape[0])
        if sizes[-1] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(**kwargs)

    monkeypatch.setattr(model, "generate", generate)
    path = tmp_path / "p.jsonl"
    with pytest.raises(OutOfMemory, match=r"while generating 4 answers at once: lower BATCH_SIZE"):
        generate_to_jsonl(model, tokenizer, ITEMS[:4], path, max_new_tokens=2, batch_size=4)
    assert not path.exists() or path.read_text() == ""  # nothing half-written
    records = generate_to_jsonl(model, tokenizer, ITEMS[:4], path, max_new_tokens=2, batch_size=4,
                                halve_batch_on_oom=True)
    assert sizes == [4, 4, 2, 2] and [r["id"] for r in records] == ["q0", "q1", "q2", "q3"]
    assert "Out of GPU memory with 4 answers at once: going on with 2." in capsys.readouterr().out


# --- the generation loop: the model and tokenizer are left as they were found ----------------

class _Recorder:
    """unsloth's FastLanguageModel as the loop sees it: it records the switches it is asked for."""

    calls: list[str] = []

    @classmethod
    def for_inference(cls, model):
        cls.calls.append("inference")

    @classmethod
    def for_training(cls, model):
        cls.calls.append("training")


def test_generating_leaves_the_model_and_padding_as_it_found_them(embedded):
    model, tokenizer, _ = embedded
    tokenizer.padding_side = "right"  # as a training collator leaves it
    model.train()
    with generation.generating(model, tokenizer):
        assert not model.training and tokenizer.padding_side == "left"
        [ids] = generation.generate_batch(model, tokenizer, tokenizer(["Hello"], return_tensors="pt"), 3,
                                          do_sample=False)
    assert model.training and tokenizer.padding_side == "right"
    assert 0 < len(ids) <= 3 and tokenizer.pad_token_id not in ids
    model.eval()


def test_an_unsloth_model_is_switched_to_inference_and_back_to_training(monkeypatch):
    def unsloth_fast_generate(*args, **kwargs):  # the name unsloth gives the generate it installs
        raise AssertionError("not called here")

    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=_Recorder))
    _Recorder.calls = []
    import torch

    model, tokenizer = torch.nn.Linear(2, 2), types.SimpleNamespace(padding_side="right")
    model.generate = unsloth_fast_generate
    assert generation.unsloth_class(model) is _Recorder
    with generation.generating(model, tokenizer):
        pass
    assert _Recorder.calls == ["inference", "training"] and model.training
    model.eval()
    with generation.generating(model, tokenizer):
        pass
    assert _Recorder.calls == ["inference", "training", "inference"] and not model.training
    assert generation.unsloth_class(torch.nn.Linear(2, 2)) is None
