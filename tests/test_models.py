import json

import pytest
import torch

from helpers import CourseError
from helpers.generation import generate_replies
from helpers.hub import embedded_model_dir
from helpers.models import (
    add_lora,
    count_parameters,
    load_adapter,
    load_text_model,
    pick_backend,
    save_adapter,
)

EXAMPLE = ("<|im_start|>user\nWhat is the first-line drug for type 2 diabetes?<|im_end|>\n"
           "<|im_start|>assistant\n<think>Type 2 diabetes; first line is metformin.</think>"
           "Metformin.<|im_end|>\n")


def test_the_embedded_folder_is_a_plain_trainable_model():
    config = json.loads((embedded_model_dir() / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama"


def test_embedded_model_loads_unquantized_with_chat_tokens(embedded):
    model, tokenizer, backend = embedded
    assert backend == "transformers"
    assert getattr(model, "hf_quantizer", None) is None
    assert model.dtype == torch.float32
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_on_cpu_the_backend_is_transformers():
    assert pick_backend("auto") == "transformers"
    with pytest.raises(CourseError, match="Unknown backend 'fast'"):
        pick_backend("fast")


def test_a_missing_model_folder_is_one_sentence():
    with pytest.raises(CourseError, match="No folder at ./models/none"):
        load_text_model("./models/none")


def test_4bit_on_cpu_says_so_and_loads_full_precision(capsys):
    model, _, _ = load_text_model("embedded", load_in_4bit=True)
    assert "4-bit loading needs a CUDA GPU" in capsys.readouterr().out
    assert model.dtype == torch.float32


def test_batched_left_padded_generation_matches_one_at_a_time(embedded):
    model, tokenizer, _ = embedded
    questions = ["What is anemia?", "List two symptoms of a heart attack that need emergency care.",
                 "Hi"]
    batched = generate_replies(model, tokenizer, questions, max_new_tokens=16, batch_size=3)
    single = [generate_replies(model, tokenizer, [q], max_new_tokens=16)[0] for q in questions]
    assert [r.text for r in batched] == [r.text for r in single]
    assert all(r.new_tokens > 0 and r.text for r in batched)


def test_generation_stops_at_the_end_of_the_turn(embedded):
    model, tokenizer, _ = embedded
    [reply] = generate_replies(model, tokenizer, ["Answer with one word: what organ pumps blood?"],
                               max_new_tokens=64)
    assert reply.new_tokens < 64, reply.text  # stopped on <|im_end|>, not on the token limit
    assert "heart" in reply.text.lower()


def _loss(model, batch) -> float:
    with torch.no_grad():
        return model(**batch, labels=batch["input_ids"]).loss.item()


def test_lora_trains_only_the_adapters_and_round_trips(tmp_path):
    model, tokenizer, _ = load_text_model("embedded")
    model = add_lora(model, r=8, alpha=16)
    trainable, total = count_parameters(model)
    assert 0 < trainable < 0.05 * total
    assert all("lora_" in name for name, p in model.named_parameters() if p.requires_grad)

    batch = tokenizer([EXAMPLE], return_tensors="pt")
    before = _loss(model, batch)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    for _ in range(6):
        model(**batch, labels=batch["input_ids"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    after = _loss(model, batch)
    assert after < 0.7 * before, (before, after)

    saved = save_adapter(model, tokenizer, tmp_path / "adapter")
    assert (saved / "adapter_config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temporary folder left
    base, _, _ = load_text_model("embedded")
    assert _loss(base, batch) == pytest.approx(before, rel=1e-4)  # the base itself was not changed
    reloaded = load_adapter(base, saved)
    assert _loss(reloaded, batch) == pytest.approx(after, rel=1e-4)


def test_loading_a_missing_adapter_names_the_notebook(embedded, tmp_path):
    model, _, _ = embedded
    with pytest.raises(CourseError, match="run 03_sft_llm.ipynb first"):
        load_adapter(model, tmp_path / "sft-adapter", made_by="03_sft_llm.ipynb")


def test_pickle_only_weights_are_refused_in_one_sentence(tmp_path):
    from helpers.models import require_safetensors

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04 a pickle")
    with pytest.raises(CourseError, match=r"only pickle weights \(pytorch_model.bin\), which can run code"):
        load_text_model(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"")
    require_safetensors(tmp_path)  # with safetensors beside it, the .bin is never read


def test_a_stored_max_length_is_cleared_so_generation_does_not_warn(embedded):
    """unsloth stores the context size as generation_config.max_length; every call with max_new_tokens
    then warned that both were set. The loaders clear it."""
    import logging

    from helpers.models import clear_max_length

    model, tokenizer, _ = embedded
    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logger = logging.getLogger("transformers.generation.utils")
    logger.addHandler(handler)
    try:
        model.generation_config.max_length = 40960  # what unsloth leaves behind
        generate_replies(model, tokenizer, ["Hi"], max_new_tokens=2)
        warned = [w for w in warnings if "max_length" in w]
        clear_max_length(model)
        warnings.clear()
        generate_replies(model, tokenizer, ["Hi"], max_new_tokens=2)
    finally:
        logger.removeHandler(handler)
        model.generation_config.max_length = None
    assert warned, "the warning this test guards against was not produced: the test would prove nothing"
    assert not [w for w in warnings if "max_length" in w]
