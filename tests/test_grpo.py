import json

import pytest
import torch

from helpers import CourseError, grpo, training
from helpers.models import add_lora, load_text_model, save_adapter
from helpers.profiles import get_profile

CPU = get_profile("cpu")
PROMPT = ("<|im_start|>user\nWhich drug reverses an opioid overdose?<|im_end|>\n"
          "<|im_start|>assistant\n<think>\n")


def _logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer([PROMPT], return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def test_without_an_sft_adapter_the_policy_is_the_base_model_with_fresh_adapters(embedded, tmp_path):
    model, tokenizer, backend, started = grpo.load_policy(CPU, tmp_path, lora_r=4, lora_alpha=8,
                                                          gradient_checkpointing=False)
    assert backend == "transformers"  # what loaded it on a CPU
    assert "base model" in started and "run 03_sft_llm.ipynb first" in started
    # the sentence names the adapter it lacks, yet 06 must not call this start "SFT" (it reads the beginning)
    assert "SFT adapter" in started and not started.startswith("the SFT adapter")
    assert model.peft_config["default"].r == 4
    base, _, _ = embedded
    assert torch.allclose(_logits(model, tokenizer), _logits(base, tokenizer), atol=1e-5)  # B starts at zero


def test_the_sft_adapter_is_loaded_trainable_with_its_own_rank(tmp_path):
    model, tokenizer, _ = load_text_model("embedded")
    sft = add_lora(model, r=8, alpha=16, gradient_checkpointing=False)
    with torch.no_grad():  # a trained adapter: B is no longer zero
        for name, param in sft.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    expected = _logits(sft, tokenizer)
    save_adapter(sft, tokenizer, tmp_path / grpo.SFT_ADAPTER)

    policy, tokenizer, _, started = grpo.load_policy(CPU, tmp_path, lora_r=4, gradient_checkpointing=False)
    assert started.startswith("the SFT adapter")  # what 06 reads to call this start "SFT"
    assert policy.peft_config["default"].r == 8  # the adapter's own rank, not lora_r
    assert torch.allclose(_logits(policy, tokenizer), expected, atol=1e-5)
    assert any(p.requires_grad for name, p in policy.named_parameters() if "lora_B" in name)

    fresh, _, _, started = grpo.load_policy(CPU, tmp_path, from_sft=False, gradient_checkpointing=False)
    assert "FROM_SFT is False" in started


def test_an_sft_adapter_of_another_model_is_one_sentence(tmp_path):
    folder = tmp_path / grpo.SFT_ADAPTER
    folder.mkdir()
    config = {"r": 4, "lora_alpha": 4, "target_modules": ["q_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    from safetensors.torch import save_file

    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    save_file({key: torch.zeros(4, 7)}, folder / "adapter_model.safetensors")  # wrong width
    with pytest.raises(CourseError, match="does not fit"):
        grpo.load_policy(CPU, tmp_path, gradient_checkpointing=False)


def test_format_step_is_one_short_line():
    line = grpo.format_step(3, 12, {"reward": 0.25, "rewards/format_reward/mean": 0.5,
                                    "rewards/accuracy_reward/mean": 0.0, "kl": 0.0012,
                                    "completions/mean_length": 40.5, "step_time": 5.25})
    assert line == ("step   3/12 · reward +0.250 · format +0.50 · accuracy +0.00 · KL 0.0012 · length 40 · "
                    "5.2 s")


def test_reward_history_keeps_the_steps_that_logged_rewards():
    log = [{"step": 1, "reward": -0.1, "kl": 0.0, "rewards/format_reward/mean": 0.0,
            "rewards/format_reward/std": 0.0, "completions/mean_length": 48.0},
           {"step": 2, "reward": 0.3, "kl": 0.01, "rewards/format_reward/mean": 0.5,
            "completions/mean_length": 30.0},
           {"step": 2, "train_runtime": 12.0}]
    history = grpo.reward_history(log)
    assert list(history.index) == [1, 2]
    assert list(history["format_reward"]) == [0.0, 0.5] and "format_reward/std" not in history
    assert grpo.reward_trend(history, "reward", window=1) == (-0.1, 0.3)
    assert grpo.reward_history([{"step": 1, "train_runtime": 3.0}]).empty


def test_a_short_grpo_run_records_samples_and_saves_only_the_trained_adapter(tmp_path, capsys,
                                                                            notebook_rewards, monkeypatch):
    from datasets import Dataset
    from peft import PeftModel
    from trl import GRPOConfig, GRPOTrainer

    model, tokenizer, _, _ = grpo.load_policy(CPU, tmp_path, lora_r=4, gradient_checkpointing=False)
    rows = [{"prompt": PROMPT, "answer": "Naloxone", "choices": "", "question": "Which drug?"}] * 2
    monkeypatch.setitem(notebook_rewards, "MAX_COMPLETION_LENGTH", 6)  # as 06 sets it: the trainer's limit
    funcs = [notebook_rewards[name] for name in ("format_reward", "accuracy_reward", "length_reward")]
    args = GRPOConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2,
                      num_generations=2, max_completion_length=6, beta=0.04, bf16=False,
                      gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to="none",
                      reward_weights=[0.25, 0.5, 0.25])
    trainer = GRPOTrainer(model=model, args=args, reward_funcs=funcs, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer)
    watcher = grpo.watch_training(trainer, sample_every=1, group_size=2)
    trainer.train()
    printed = capsys.readouterr().out
    assert "step   1/2 · reward" in printed and "step   2/2 · reward" in printed and "'loss'" not in printed
    assert [r["step"] for r in watcher.rows] == [1, 1, 2, 2]
    assert {"prompt", "question", "completion", "format_reward", "accuracy_reward", "length_reward",
            "advantage"} <= set(watcher.rows[0])
    assert watcher.rows[0]["question"].startswith("Which drug reverses")
    assert "Which drug reverses" in watcher.rows[0]["prompt"]  # in full; TRL drops the special tokens
    history = grpo.reward_history(trainer.state.log_history)
    assert list(history.index) == [1, 2] and {"reward", "kl", "format_reward"} <= set(history.columns)

    assert "ref" in model.peft_config  # TRL's frozen copy of the starting adapter, the KL reference
    saved = training.save_trained(trainer, tokenizer, tmp_path / grpo.GRPO_ADAPTER)
    assert saved == tmp_path / grpo.GRPO_ADAPTER
    assert (saved / "adapter_config.json").is_file() and not (saved / "ref").exists()
    assert "ref" not in model.peft_config and list(model.peft_config) == ["default"]

    # What was saved is the trained adapter: it loads onto a fresh base model and gives the same weights.
    loaded = PeftModel.from_pretrained(load_text_model("embedded")[0], saved)
    trained = {n: p for n, p in model.named_parameters() if "lora_" in n}
    again = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    assert trained and trained.keys() == again.keys()
    assert all(torch.equal(trained[n].detach().cpu(), again[n].detach().cpu()) for n in trained)
    model.eval()
    loaded.eval()
    assert torch.allclose(_logits(loaded, tokenizer), _logits(model, tokenizer), atol=1e-5)


def test_score_policy_scores_greedy_completions_with_every_reward(embedded, notebook_rewards, monkeypatch):
    model, tokenizer, _ = embedded
    monkeypatch.setitem(notebook_rewards, "MAX_COMPLETION_LENGTH", 8)  # the limit of max_new_tokens below
    funcs = [notebook_rewards["format_reward"], notebook_rewards["length_reward"]]
    means, texts = grpo.score_policy(model, tokenizer, [PROMPT, PROMPT], {"answer": ["Naloxone"] * 2}, funcs,
                                     {"format_reward": 0.5, "length_reward": 0.5}, max_new_tokens=8)
    assert texts[0] == texts[1] and texts[0]  # greedy: the same prompt gives the same completion
    assert set(means) == {"format_reward", "length_reward", "total"}
    # 8 new tokens of a question that needs more: cut off at the limit.
    assert means["length_reward"] == -1.0
    assert means["total"] == pytest.approx(0.5 * means["format_reward"] - 0.5)


def test_an_interrupted_grpo_run_resumes_from_its_last_checkpoint(tmp_path, capsys, notebook_rewards):
    from callbacks import StepCounter
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    def trainer(callback) -> GRPOTrainer:  # what rerunning 06 builds: a fresh policy and trainer
        model, tokenizer, _, _ = grpo.load_policy(CPU, tmp_path, lora_r=4, gradient_checkpointing=False)
        rows = [{"prompt": PROMPT, "answer": "Naloxone", "choices": "", "question": "Which drug?"}] * 4
        args = GRPOConfig(output_dir=str(tmp_path / "grpo-checkpoints"), max_steps=4,
                          per_device_train_batch_size=2, num_generations=2, max_completion_length=6,
                          bf16=False, gradient_checkpointing=False, logging_steps=1, save_steps=2,
                          report_to="none", seed=0)
        return GRPOTrainer(model=model, args=args, reward_funcs=[notebook_rewards["format_reward"]],
                           train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                           callbacks=[callback])

    first = StepCounter(stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        training.train(trainer(first), knobs=training.GRPO_KNOBS)
    assert first.steps == 3 and training.last_checkpoint(tmp_path / "grpo-checkpoints").name == "checkpoint-2"
    second = StepCounter()
    resumed = trainer(second)
    training.train(resumed, knobs=training.GRPO_KNOBS)
    assert "Resuming from checkpoint-2 (step 2 of 4)." in capsys.readouterr().out
    assert second.steps == 2 and resumed.state.global_step == 4


def test_a_grpo_run_from_the_sft_adapter_resumes_with_its_trained_adapter(tmp_path):
    """Checkpoints of GRPO from an SFT adapter hold TRL's frozen "ref" copy in a subfolder; the trained
    adapter at the top level must still be the one a rerun (or a resume) goes on from."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    def longer_is_better(completions, **kwargs) -> list[float]:  # differs within a group: it trains
        return [len(c) / 10 for c in completions]

    def trainer() -> GRPOTrainer:
        model, tokenizer, _, started = grpo.load_policy(CPU, tmp_path, lora_r=4, gradient_checkpointing=False)
        rows = [{"prompt": PROMPT, "answer": "Naloxone"}] * 4
        args = GRPOConfig(output_dir=str(tmp_path / "grpo-checkpoints"), max_steps=3, learning_rate=1e-2,
                          beta=0.04,  # a KL term: TRL keeps the "ref" copy of the SFT adapter
                          per_device_train_batch_size=2, num_generations=2, max_completion_length=6,
                          bf16=False, gradient_checkpointing=False, logging_steps=1, save_steps=2,
                          report_to="none", seed=0, use_cpu=True)
        return GRPOTrainer(model=model, args=args, reward_funcs=[longer_is_better],
                           train_dataset=Dataset.from_list(rows), processing_class=tokenizer)

    def adapter(model) -> dict:
        return {n: p.detach().clone() for n, p in model.named_parameters() if ".default." in n}

    model, tokenizer, _, _ = grpo.load_policy(CPU, tmp_path, lora_r=4, gradient_checkpointing=False)
    save_adapter(model, tokenizer, tmp_path / grpo.SFT_ADAPTER)  # the SFT adapter of 03 to start from
    first = trainer()
    start = adapter(first.model)
    training.train(first, knobs=training.GRPO_KNOBS)
    trained = adapter(first.model)
    assert any(not torch.equal(start[n], trained[n]) for n in start)  # it did train
    assert (tmp_path / "grpo-checkpoints" / "checkpoint-3" / "ref").is_dir()
    again = trainer()
    training.train(again, knobs=training.GRPO_KNOBS)  # the finished run again: loads, trains nothing
    reloaded = adapter(again.model)
    assert all(torch.equal(trained[n], reloaded[n]) for n in trained)


def test_the_kl_reference_is_the_sft_adapter_we_start_from_even_where_the_trainer_dropped_it(tmp_path):
    """unsloth's trainer leaves out TRL's frozen "ref" copy, so the KL would be measured against the base
    model; keep_reference_adapter puts the copy back and the KL of step 1 is ~0 again."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer
    from trl.trainer.utils import use_adapter

    model, tokenizer, _ = load_text_model("embedded")
    sft = add_lora(model, r=4, alpha=8, gradient_checkpointing=False)
    with torch.no_grad():  # a trained SFT adapter: far enough from the base to show in the KL
        for name, param in sft.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    save_adapter(sft, tokenizer, tmp_path / grpo.SFT_ADAPTER)

    def step_one_kl(keep: bool) -> float:
        policy, tokenizer, _, _ = grpo.load_policy(CPU, tmp_path, gradient_checkpointing=False)
        args = GRPOConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2,
                          num_generations=2, max_completion_length=8, beta=0.04, bf16=False,
                          gradient_checkpointing=False, logging_steps=1, save_strategy="no",
                          report_to="none", use_cpu=True, seed=0)
        trainer = GRPOTrainer(model=policy, args=args, reward_funcs=[lambda completions, **kw: [
            float(len(c)) for c in completions]], processing_class=tokenizer,
            train_dataset=Dataset.from_list([{"prompt": PROMPT}] * 2))
        assert "ref" in policy.peft_config  # TRL's own copy, on plain transformers
        assert grpo.keep_reference_adapter(trainer) is False  # nothing to do there
        policy.delete_adapter("ref")  # what unsloth's trainer does
        policy.set_adapter("default")
        if keep:
            assert grpo.keep_reference_adapter(trainer) is True
            assert not any(p.requires_grad for n, p in policy.named_parameters() if ".ref." in n)
            assert any(p.requires_grad for n, p in policy.named_parameters() if ".default." in n)
            policy.eval()
            with use_adapter(policy, adapter_name="ref"):
                reference = _logits(policy, tokenizer)
            assert torch.allclose(reference, _logits(policy, tokenizer), atol=1e-5)  # the SFT model
            with policy.disable_adapter():
                assert not torch.allclose(reference, _logits(policy, tokenizer), atol=1e-3)  # not the base
        trainer.train()
        return next(log["kl"] for log in trainer.state.log_history if "kl" in log)

    assert step_one_kl(keep=True) < 1e-6
    assert step_one_kl(keep=False) > 1e-3  # against the base model: the SFT adapter's distance shows
