"""`python -m helpers.train`: the knob file, and two processes training one model (DDP on gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import recipes
from helpers.errors import CourseError
from helpers.train import parse_args, plan_from, read_knobs

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


def test_knob_file_takes_the_notebook_names_and_flags_win(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_OUTPUTS", str(tmp_path))
    knobs = tmp_path / "knobs.yaml"
    knobs.write_text("STEPS: 7\nLORA_R: 8\nlearning_rate: 0.003\nSAVE_MERGED: true\n", encoding="utf-8")
    plan, run = plan_from("sft", parse_args(["sft", "--profile", "cpu", "--config", str(knobs),
                                             "--steps", "5", "--grad-accum", "3", "--run-name", "x"]))
    assert (plan.steps, plan.lora_r, plan.learning_rate) == (5, 8, 0.003)
    assert plan.profile.sft_grad_accum == 3 and run == tmp_path / "x"
    assert plan.save_every == 1  # a quarter of the flag's 5 steps, not of the file's 7


def test_grpo_knobs_map_to_the_grpo_plan(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_OUTPUTS", str(tmp_path))
    knobs = tmp_path / "knobs.json"
    knobs.write_text(json.dumps({"NUM_GENERATIONS": 6, "BETA": 0.0, "PROFILE": "cpu"}), encoding="utf-8")
    plan, _ = plan_from("grpo", parse_args(["grpo", "--config", str(knobs), "--examples", "9"]))
    assert (plan.num_generations, plan.beta, plan.prompts, plan.profile.name) == (6, 0.0, 9, "cpu")


@pytest.mark.parametrize("kind", ["sft", "grpo"])
def test_a_notebook_plan_saved_as_knobs_plans_the_same_run(tmp_path, monkeypatch, kind):
    from helpers import profiles

    monkeypatch.setenv("COURSE_OUTPUTS", str(tmp_path))
    sizes = {"sft_batch_size": 2, "sft_grad_accum": 3} if kind == "sft" else {}
    profile = profiles.get_profile("cpu", **sizes)
    plan = (recipes.plan_sft(profile, steps=9, lora_r=4, languages=("en",)) if kind == "sft" else
            recipes.plan_grpo(profile, steps=3, num_generations=2, rule_weights={"format_reward": 1.0}))
    path = recipes.save_knobs(plan, tmp_path / "knobs.yaml", run_name="again")
    again, run = plan_from(kind, parse_args([kind, "--config", str(path)]))
    assert recipes.plan_record(again) == recipes.plan_record(plan) and run == tmp_path / "again"
    assert again.profile == plan.profile


def test_the_launch_command_asks_for_two_gpus_where_this_machine_has_fewer(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    text = recipes.launch_command("grpo", tmp_path / "k.yaml")
    assert "a machine with 2 GPUs (this one has 0)" in text
    assert f"accelerate launch --num_processes 2 -m helpers.train grpo --config {tmp_path / 'k.yaml'}" in text
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    text = recipes.launch_command("sft", tmp_path / "k.yaml")
    assert "this machine's 4 GPUs" in text and "--num_processes 4 -m helpers.train sft" in text


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "STEPS: [unclosed\n"])
def test_a_bad_knob_file_is_one_sentence(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CourseError, match=str(path)):
        read_knobs(path)


def test_an_unknown_knob_names_the_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_OUTPUTS", str(tmp_path))
    path = tmp_path / "typo.yaml"
    path.write_text("STEPZ: 3\n", encoding="utf-8")
    with pytest.raises(CourseError, match="03_sft_llm.ipynb"):
        plan_from("sft", parse_args(["sft", "--profile", "cpu", "--config", str(path)]))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_processes >= 2 and config.distributed_type.name in {"MULTI_GPU", "FSDP", "DEEPSPEED"}


def test_recipes_read_the_process_count(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    assert recipes.world_size() == 4 and not recipes.is_main_process()


def _train(out: Path, run_name: str, processes: int, batch: int) -> dict:
    """Two SFT steps on the embedded model, through `accelerate launch` when there are two processes."""
    accelerate = Path(sys.executable).with_name("accelerate")
    module = ["-m", "helpers.train", "sft", "--profile", "cpu", "--steps", "2", "--examples", "16",
              "--batch-size", str(batch), "--tracking", "none", "--run-name", run_name]
    if processes == 1:
        command = [sys.executable, *module]
    else:  # the multi-GPU launcher; with no GPU each process trains on the CPU and they talk over gloo
        command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", str(processes),
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", "29517", *module]
    env = {**os.environ, "COURSE_OUTPUTS": str(out), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / run_name / "metrics" / "train_sft.json").read_text(encoding="utf-8")) | {
        "stdout": done.stdout}


def test_two_processes_train_one_model_like_one_process_with_twice_the_batch(tmp_path):
    one = _train(tmp_path, "one", processes=1, batch=8)
    two = _train(tmp_path, "two", processes=2, batch=4)
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["rows_per_step"] == one["rows_per_step"] == 8
    # DDP splits each batch of 8 in two halves and averages the gradients: the same step as one process
    # with all 8. Two independent copies (no DDP) would each log the loss of their own half instead.
    losses_one, losses_two = ([loss for _, loss in run["loss_curve"]] for run in (one, two))
    assert losses_two == pytest.approx(losses_one, abs=1e-3)
    assert two["stdout"].count("steps in") == 1  # only the first process reports and saves
    assert (tmp_path / "two" / "sft-adapter" / "adapter_config.json").is_file()
