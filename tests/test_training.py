"""SFT plumbing: think blocks, the loss mask the trainer builds, checkpoints and resume, tracking, memory."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from callbacks import StepCounter
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, TrainerCallback
from trl import SFTConfig, SFTTrainer

from helpers import CourseError, datasets, memory, training
from helpers.datasets import SFTExample
from helpers.errors import is_out_of_memory
from helpers.hub import embedded_model_dir
from helpers.models import LORA_TARGETS, add_lora, count_parameters, load_text_model

EXAMPLES = [
    SFTExample("What is the first-line drug for type 2 diabetes?", "Type 2 diabetes: metformin first.",
               "Metformin.", "en", "medical-o1-reasoning-SFT"),
    SFTExample("Which artery is blocked in an inferior STEMI?", "Leads II, III, aVF: usually the RCA.",
               "The right coronary artery.", "en", "medical-o1-reasoning-SFT"),
    SFTExample("医生，我头痛三天了怎么办？", "嗯，头痛三天，先排除危险信号。",
               "多休息；如剧烈头痛或呕吐请就医。", "zh", "delicate_medical_r1_data"),
    SFTExample("What does a ferritin of 6 ng/mL mean?", "Very low ferritin means iron stores are empty.",
               "Iron deficiency.", "en", "medical-o1-reasoning-SFT"),
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with the embedded model's tokenizer: trains in milliseconds a step."""
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny")
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def rows_for(tokenizer) -> list[dict]:
    return [datasets.to_prompt_completion(tokenizer, ex) for ex in EXAMPLES]


def make_trainer(folder: Path, output_dir: Path, lr: float = 1e-3, steps: int = 4, callbacks=()):
    model, tokenizer, _ = load_text_model(str(folder))
    model = add_lora(model, r=4, alpha=8, gradient_checkpointing=False)
    args = SFTConfig(output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=2,
                     learning_rate=lr, logging_steps=1, save_steps=2, bf16=False, report_to="none",
                     completion_only_loss=True, max_length=256, gradient_checkpointing=False,
                     optim="adamw_torch", disable_tqdm=True, seed=0)
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows_for(tokenizer)),
                      processing_class=tokenizer, callbacks=list(callbacks))


# --- think blocks ---------------------------------------------------------------------------

def test_think_format_rate():
    assert training.think_format_rate(["<think>a</think>b", "b", "<think>c</think>", "<think>"]) == 0.5
    assert training.think_format_rate([]) == 0.0


# --- the loss mask --------------------------------------------------------------------------

def test_the_loss_sees_the_completion_only(tiny_dir, tmp_path):
    trainer = make_trainer(tiny_dir, tmp_path / "ck")
    tokenizer = trainer.processing_class
    prepared = trainer.train_dataset
    assert len(prepared) == len(EXAMPLES)  # nothing dropped
    by_ids = {tuple(r["input_ids"]): r["labels"] for r in prepared}
    for row in rows_for(tokenizer):
        prompt_ids = tokenizer(row["prompt"])["input_ids"]
        ids = tokenizer(row["prompt"] + row["completion"])["input_ids"]
        labels = by_ids[tuple(ids)]
        assert labels[:len(prompt_ids)] == [-100] * len(prompt_ids)  # the whole prompt is masked...
        assert labels[len(prompt_ids):] == ids[len(prompt_ids):]  # ...and every completion token is trained
        assert labels[-1] == tokenizer.eos_token_id  # the model learns to end its turn
        mask = training.loss_mask(tokenizer, {"input_ids": ids, "labels": labels})
        assert mask.trained == row["completion"] and mask.ignored == row["prompt"]
    batch = trainer.data_collator([prepared[0], prepared[2]])
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()  # padding is never trained


def test_loss_mask_refuses_rows_it_cannot_read():
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    with pytest.raises(CourseError, match="one label per input id"):
        training.loss_mask(tokenizer, {"input_ids": [1, 2, 3], "labels": [1, 2]})
    with pytest.raises(CourseError, match="not one prompt followed by one completion"):
        training.loss_mask(tokenizer, {"input_ids": [1, 2, 3], "labels": [-100, 2, -100]})


# --- checkpoints and resume -----------------------------------------------------------------

def test_an_interrupted_run_resumes_from_its_last_checkpoint(tiny_dir, tmp_path, capsys):
    folder = tmp_path / "ck"
    interrupted = StepCounter(stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        training.train(make_trainer(tiny_dir, folder, callbacks=[interrupted]))
    assert interrupted.steps == 3
    assert training.last_checkpoint(folder).name == "checkpoint-2"  # saved at step 2, lost step 3

    resumed = StepCounter()
    trainer = make_trainer(tiny_dir, folder, callbacks=[resumed])  # a fresh kernel: new model, new trainer
    training.train(trainer)
    assert "Resuming from checkpoint-2 (step 2 of 4)" in capsys.readouterr().out
    assert resumed.steps == 2 and trainer.state.global_step == 4  # steps 3 and 4 only
    assert [step for step, _ in training.loss_curve(trainer.state.log_history)] == [1, 2, 3, 4]

    again = StepCounter()  # rerunning the finished cell costs nothing
    training.train(make_trainer(tiny_dir, folder, callbacks=[again]))
    assert again.steps == 0 and "Resuming from checkpoint-4" in capsys.readouterr().out


@pytest.mark.parametrize("steps", [4, 5])  # 5 is not a whole number of epochs of the three batches
def test_rerunning_a_finished_run_restores_the_trained_adapter_and_trains_nothing(tiny_dir, tmp_path, steps):
    folder = tmp_path / "ck"
    first = make_trainer(tiny_dir, folder, steps=steps)
    training.train(first)
    trained = {k: v.clone() for k, v in first.model.state_dict().items() if "lora_B" in k}
    assert any(v.abs().sum() > 0 for v in trained.values())  # lora_B starts at zero: it did train
    counter = StepCounter()
    second = make_trainer(tiny_dir, folder, steps=steps, callbacks=[counter])
    training.train(second)  # resumes at the last step, loading the checkpoint's adapter
    assert counter.steps == 0 and second.state.global_step == steps
    assert training.loss_curve(second.state.log_history) == training.loss_curve(first.state.log_history)
    for name, value in second.model.state_dict().items():
        if "lora_B" in name:
            assert torch.equal(value, trained[name])


def test_changed_settings_start_over(tiny_dir, tmp_path, capsys):
    folder = tmp_path / "ck"
    training.train(make_trainer(tiny_dir, folder))
    counter = StepCounter()
    training.train(make_trainer(tiny_dir, folder, lr=5e-4, callbacks=[counter]))
    out = capsys.readouterr().out
    assert "settings changed" in out and "Training from the start: 4 steps" in out
    assert counter.steps == 4
    saved = json.loads((folder / training.SETTINGS_FILE).read_text())
    assert saved["args"]["learning_rate"] == "0.0005" and saved["adapter"]["r"] == 4


class OutOfMemoryAt(TrainerCallback):
    """The GPU runs out of memory at ``step`` while the batch is larger than ``fits`` rows."""

    def __init__(self, step: int, fits: int = 1):
        self.step, self.fits, self.raised = step, fits, 0

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step and args.per_device_train_batch_size > self.fits:
            self.raised += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")


def test_out_of_memory_ends_in_one_sentence_naming_the_knobs(tiny_dir, tmp_path):
    trainer = make_trainer(tiny_dir, tmp_path / "ck", callbacks=[OutOfMemoryAt(3)])
    with pytest.raises(CourseError) as error:
        training.train(trainer)
    message = str(error.value)
    assert message.startswith("The GPU ran out of memory while training at batch size 2: lower the batch")
    assert "HALVE_BATCH_ON_OOM = True" in message and "\n" not in message
    assert training.last_checkpoint(tmp_path / "ck").name == "checkpoint-2"  # the work so far is kept


def test_out_of_memory_retries_with_half_the_batch_from_the_last_checkpoint(tiny_dir, tmp_path, capsys):
    oom, counter = OutOfMemoryAt(3), StepCounter()
    trainer = make_trainer(tiny_dir, tmp_path / "ck", callbacks=[oom, counter])
    training.train(trainer, halve_batch_on_oom=True)
    out = capsys.readouterr().out
    assert "Out of GPU memory at batch size 2: retrying with batch size 1 and gradient accumulation 2" in out
    assert "Resuming from checkpoint-2 (step 2 of 4)" in out  # the settings still match: same rows per step
    assert oom.raised == 1 and trainer.state.global_step == 4 and counter.steps == 2 + 2
    assert training.effective_batch(trainer.args) == 2


class AdapterAtStart(TrainerCallback):
    """Records the adapter's weights each time training begins."""

    def __init__(self):
        self.seen = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.seen.append({n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n})


def test_out_of_memory_before_any_checkpoint_starts_again_from_scratch(tiny_dir, tmp_path, capsys):
    starts = AdapterAtStart()
    trainer = make_trainer(tiny_dir, tmp_path / "ck", callbacks=[OutOfMemoryAt(2), starts])
    training.train(trainer, halve_batch_on_oom=True)  # step 1 trained, step 2 ran out: no checkpoint yet
    out = capsys.readouterr().out
    assert out.count("Training from the start: 4 steps.") == 2 and trainer.state.global_step == 4
    first, retry = starts.seen
    assert all(torch.equal(first[name], retry[name]) for name in first)  # step 1's update was undone
    assert all(retry[name].abs().sum() == 0 for name in retry if "lora_B" in name)


def test_at_batch_size_one_there_is_nothing_left_to_halve(tiny_dir, tmp_path):
    trainer = make_trainer(tiny_dir, tmp_path / "ck", callbacks=[OutOfMemoryAt(1, fits=0)])
    with pytest.raises(CourseError, match="while training at batch size 1"):
        training.train(trainer, halve_batch_on_oom=True)


@pytest.mark.parametrize("error, expected", [
    (torch.OutOfMemoryError("CUDA out of memory."), True),
    (RuntimeError("CUDA error: out of memory"), True),
    (ValueError("Expected input batch_size (2) to match target batch_size (1)"), False),
])
def test_out_of_memory_is_recognised_by_type_or_message(error, expected):
    assert is_out_of_memory(error) is expected


def test_a_checkpoint_interrupted_while_saving_is_passed_over(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-10").mkdir()  # no trainer_state.json: the save never finished
    (tmp_path / "checkpoint-x").mkdir()
    assert training.last_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert training.last_checkpoint(tmp_path / "none") is None


class _Trainer:
    """What ``fp32_adapters_for_fp16`` reads of a trainer: its model and its precision."""

    def __init__(self, model, fp16: bool):
        self.model, self.args = model, SimpleNamespace(fp16=fp16)


def _bf16_adapters() -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)).to(torch.bfloat16)
    model[0].requires_grad_(False)  # a frozen base layer keeps its dtype
    return model


def test_fp16_training_gets_fp32_adapters_and_fp32_gradients():
    model = _bf16_adapters()
    assert training.fp32_adapters_for_fp16(_Trainer(model, fp16=True), "transformers") == 2  # weight and bias
    assert model[1].weight.dtype == torch.float32 and model[0].weight.dtype == torch.bfloat16
    model[1](torch.ones(1, 4)).sum().backward()
    # CUDA's gradient scaler (fp16 training) cannot unscale bf16 gradients; these are fp32.
    assert model[1].weight.grad.dtype == torch.float32


@pytest.mark.parametrize("backend, fp16", [("transformers", False), ("unsloth", True)])
def test_adapters_are_left_alone_in_bf16_training_and_under_unsloth(backend, fp16):
    model = _bf16_adapters()
    assert training.fp32_adapters_for_fp16(_Trainer(model, fp16=fp16), backend) == 0
    assert model[1].weight.dtype == torch.bfloat16


def test_loss_curve_reads_training_losses_in_step_order():
    history = [{"loss": 2.0, "step": 10}, {"eval_loss": 1.9, "step": 10}, {"loss": 3.0, "step": 5},
               {"train_loss": 2.5, "step": 10}, {"loss": 2.0, "step": 10}]
    assert training.loss_curve(history) == [(5, 3.0), (10, 2.0)]
    assert training.loss_curve([]) == []


# --- tracking -------------------------------------------------------------------------------

@pytest.fixture
def swanlab_env(monkeypatch, tmp_path):
    for name in ("SWANLAB_API_KEY", "SWANLAB_MODE", "SWANLAB_LOG_DIR", "SWANLAB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SWANLAB_ROOT", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_tracking_is_off_without_a_key_or_when_disabled(swanlab_env, tmp_path):
    assert training.report_to("auto") == "none"
    assert training.report_to("none") == "none"
    with pytest.raises(CourseError, match="No SwanLab key"):
        training.report_to("cloud")
    swanlab_env.setenv("SWANLAB_MODE", "disabled")  # what the course runner sets
    swanlab_env.setenv("SWANLAB_API_KEY", "k")
    assert training.report_to("auto") == "none" and training.report_to("local") == "none"
    with pytest.raises(CourseError, match="Unknown TRACKING 'wandb'"):
        training.report_to("wandb")


def test_tracking_uses_swanlab_with_a_key_or_locally(swanlab_env, tmp_path):
    import os

    assert training.report_to("local", log_dir=tmp_path / "swanlog") == "swanlab"
    assert os.environ["SWANLAB_MODE"] == "local"
    assert os.environ["SWANLAB_LOG_DIR"] == str(tmp_path / "swanlog")
    swanlab_env.delenv("SWANLAB_MODE")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".netrc").write_text("machine api.swanlab.cn login user password key\n")
    assert training.swanlab_key_saved()
    assert training.report_to("auto") == "swanlab" and os.environ["SWANLAB_MODE"] == "cloud"


# --- memory ---------------------------------------------------------------------------------

def test_lora_parameter_count_matches_peft(tiny_dir):
    model, _, _ = load_text_model(str(tiny_dir))
    counts = memory.count_parameter_kinds(model, LORA_TARGETS)
    assert counts.total == count_parameters(model)[1]
    trainable, _ = count_parameters(add_lora(model, r=4, alpha=8, gradient_checkpointing=False))
    assert trainable == 4 * counts.lora_per_rank


# --- a standalone model ---------------------------------------------------------------------

def test_the_merged_model_answers_like_the_adapter(tiny_dir, tmp_path):
    trainer = make_trainer(tiny_dir, tmp_path / "ck")
    trainer.train()
    model, tokenizer = trainer.model, trainer.processing_class
    ids = tokenizer("The heart pumps blood.", return_tensors="pt")["input_ids"]
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    training.save_merged(model, tokenizer, tmp_path / "merged")
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["dtype"] == "bfloat16"
    with torch.no_grad():
        got = reloaded(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=0.05)  # equal up to the 16-bit rounding of the weights
