"""`python -m helpers.train` runs the notebooks' own recipe cells, with their knobs, on one process or two."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import notebook, training
from helpers.errors import CourseError
from helpers.train import gather_knobs, parse_args

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))
# What each lesson's recipe must hold as literal code, for a learner to read and edit.
RECIPE_CALLS = {"sft": ("SFTConfig(", "SFTTrainer(", "get_peft_model(", "LoraConfig(", "training.train("),
                "grpo": ("GRPOConfig(", "GRPOTrainer(", "def format_reward(", "def reasoning_steps_reward(",
                         "def accuracy_reward(", "def length_reward(", "training.train(")}


def _knobs(lesson: str, words: list[str]) -> dict:
    args, flags = parse_args([lesson, *words])
    return gather_knobs(lesson, args, flags)


def test_knob_file_takes_the_notebook_names_and_flags_win(tmp_path):
    knobs = tmp_path / "knobs.yaml"
    knobs.write_text("STEPS: 7\nLORA_R: 8\nlearning_rate: 0.003\nSAVE_MERGED: true\n", encoding="utf-8")
    got = _knobs("sft", ["--profile", "cpu", "--config", str(knobs), "--steps", "5", "--grad-accum", "3",
                         "--run-name", "x", "--languages", "('en',)", "--tracking=none"])
    assert got == {"STEPS": 5, "LORA_R": 8, "LEARNING_RATE": 0.003, "SAVE_MERGED": True, "PROFILE": "cpu",
                   "RUN_NAME": "x", "GRAD_ACCUM": 3, "LANGUAGES": ("en",), "TRACKING": "none"}


def test_grpo_knobs_come_from_a_json_file_too(tmp_path):
    knobs = tmp_path / "knobs.json"
    knobs.write_text(json.dumps({"NUM_GENERATIONS": 6, "BETA": 0.0, "PROFILE": "cpu"}), encoding="utf-8")
    assert _knobs("grpo", ["--config", str(knobs), "--prompts", "9"]) == {
        "NUM_GENERATIONS": 6, "BETA": 0.0, "PROFILE": "cpu", "PROMPTS": 9}


@pytest.mark.parametrize("lesson", ["sft", "grpo"])
def test_a_notebook_saved_as_knobs_plans_the_same_run(tmp_path, monkeypatch, lesson):
    monkeypatch.setenv("COURSE_OUTPUTS", str(tmp_path))
    set_here = {"STEPS": 9, "LORA_R": 4} if lesson == "sft" else {"STEPS": 3, "NUM_GENERATIONS": 2}
    planned = notebook.run_recipe(lesson, {"PROFILE": "cpu", "RUN_NAME": "again", **set_here}, tag="plan")
    path = notebook.save_knobs(notebook.notebook_path(lesson), planned, tmp_path / "knobs.yaml")
    again = notebook.run_recipe(lesson, _knobs(lesson, ["--config", str(path)]), tag="plan")
    names = notebook.parameters(notebook.notebook_path(lesson))
    assert {n: notebook._plain(again[n]) for n in names} == {n: notebook._plain(planned[n]) for n in names}
    assert again["run"] == tmp_path / "again" and again["STEPS"] == set_here["STEPS"]
    assert all(again[name] is not None for name in ("MODEL", "LORA_ALPHA", "MAX_COMPLETION_LENGTH"
                                                    if lesson == "grpo" else "BATCH_SIZE"))


def test_06s_plan_sets_unsloths_compile_switch_before_any_cell_loads_a_model(tmp_path, monkeypatch, capsys):
    """unsloth reads UNSLOTH_COMPILE_DISABLE once, on import: 06's plan sets it from its knob, says when it
    comes too late, and no cell before the plan (in a learner's kernel or the command's) can load unsloth."""
    monkeypatch.setenv("COURSE_OUTPUTS", str(tmp_path))
    monkeypatch.delenv("UNSLOTH_COMPILE_DISABLE", raising=False)
    monkeypatch.delitem(sys.modules, "unsloth", raising=False)
    notebook.run_recipe("grpo", {"PROFILE": "cpu"}, tag="plan")
    assert os.environ["UNSLOTH_COMPILE_DISABLE"] == "1"  # the default: off (docs/benchmarks.md, table 18)
    assert "already loaded" not in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "unsloth", object())  # a kernel where unsloth was imported before
    notebook.run_recipe("grpo", {"PROFILE": "cpu", "UNSLOTH_COMPILE": True}, tag="plan")
    assert os.environ["UNSLOTH_COMPILE_DISABLE"] == "0"
    assert "takes effect after a restart" in capsys.readouterr().out
    cells = notebook.code_cells(notebook.notebook_path("grpo"))  # every cell: the notebook runs them all
    loads = ("load_policy(", "load_text_model(", "load_vl_model(", "import unsloth", "from unsloth")
    first_load = next(i for i, source in enumerate(cells) if any(call in source for call in loads))
    setter = next(i for i, source in enumerate(cells) if "UNSLOTH_COMPILE_DISABLE" in source)
    assert setter < first_load


def test_the_launch_command_asks_for_two_gpus_where_this_machine_has_fewer(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    text = training.launch_command("grpo", tmp_path / "k.yaml")
    assert "a machine with 2 GPUs (this one has 0)" in text
    assert f"accelerate launch --num_processes 2 -m helpers.train grpo --config {tmp_path / 'k.yaml'}" in text
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    text = training.launch_command("sft", tmp_path / "k.yaml")
    assert "this machine's 4 GPUs" in text and "--num_processes 4 -m helpers.train sft" in text


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "STEPS: [unclosed\n"])
def test_a_bad_knob_file_is_one_sentence(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CourseError, match=str(path)):
        notebook.read_knobs(path)


def test_an_unknown_knob_names_the_notebook_and_its_knobs(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("STEPZ: 3\n", encoding="utf-8")
    with pytest.raises(CourseError, match="STEPZ: not a knob of 03_sft_llm.ipynb.*LORA_R"):
        _knobs("sft", ["--config", str(path)])
    with pytest.raises(CourseError, match="needs a value"):
        _knobs("grpo", ["--beta"])


@pytest.mark.parametrize("lesson", ["sft", "grpo"])
def test_the_recipe_is_the_notebooks_literal_code_marked_as_such(lesson):
    path = notebook.notebook_path(lesson)
    recipe = notebook.code_cells(path, "recipe")
    for source in notebook.code_cells(path):  # the visible mark and the tag the command reads agree
        assert source.startswith("# recipe ·") == (source in recipe), source[:80]
    for source in recipe:
        compile(source, lesson, "exec")  # plain Python: no IPython magics, the command can run it
    joined = "\n".join(recipe)
    for call in RECIPE_CALLS[lesson]:
        assert call in joined, call
    assert not any("inspect.getsource" in source for source in notebook.code_cells(path))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_processes >= 2 and config.distributed_type.name in {"MULTI_GPU", "FSDP", "DEEPSPEED"}


def test_the_process_count_comes_from_the_launcher(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    assert training.world_size() == 4 and not training.is_main_process()


# --- the drift test: the command, on one process and on two, trains what the notebook trains ----------

# Three steps of 4 rows on the embedded model (one epoch of 12), and a held-out loss at the end.
DRIFT_KNOBS = {"STEPS": 3, "EXAMPLES": 12, "HELD_OUT": 2, "EVAL_EVERY": 3, "BATCH_SIZE": 4, "GRAD_ACCUM": 1,
               "TRACKING": "none", "SEED": 0}
ENV = {"HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "SWANLAB_MODE": "disabled"}


def _notebook_losses(out: Path) -> list[float]:
    """03 itself, executed top to bottom by the course runner with the drift knobs."""
    from helpers.course import run_notebook

    executed = out / "executed"
    executed.mkdir(parents=True)
    knobs = {"PROFILE": "cpu", "RUN_NAME": "notebook", "CHECK_MAX_NEW_TOKENS": 4, **DRIFT_KNOBS}
    result = run_notebook(ROOT / "03_sft_llm.ipynb", executed, knobs, ROOT)
    assert result.status == "ok", result.error
    metrics = json.loads((out / "notebook" / "metrics" / "03_sft_llm.json").read_text(encoding="utf-8"))
    return [loss for _, loss in metrics["metrics"]["loss_curve"]]


def _command(out: Path, run_name: str, processes: int, batch: int) -> dict:
    """`python -m helpers.train sft` with the drift knobs, through `accelerate launch` for two processes."""
    accelerate = Path(sys.executable).with_name("accelerate")
    knobs = {**DRIFT_KNOBS, "BATCH_SIZE": batch}
    module = ["-m", "helpers.train", "sft", "--profile", "cpu", "--run-name", run_name,
              *[word for name, value in knobs.items() for word in (f"--{name.lower()}", str(value))]]
    if processes == 1:
        command = [sys.executable, *module]
    else:  # the multi-GPU launcher; with no GPU each process trains on the CPU and they talk over gloo
        command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", str(processes),
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", "29517", *module]
    env = {**os.environ, "COURSE_OUTPUTS": str(out), **ENV}
    if processes > 1:
        env["OMP_NUM_THREADS"] = "1"  # one core each on a two-core machine
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / run_name / "metrics" / "train_sft.json").read_text(encoding="utf-8")) | {
        "stdout": done.stdout}


@pytest.mark.notebooks
def test_the_command_on_one_and_on_two_processes_trains_what_the_notebook_trains(tmp_path, monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("COURSE_OUTPUTS", str(tmp_path))
    in_notebook = _notebook_losses(tmp_path)
    one = _command(tmp_path, "one", processes=1, batch=4)
    two = _command(tmp_path, "two", processes=2, batch=2)
    assert len(in_notebook) == 3
    assert one["processes"] == 1 and two["processes"] == 2
    assert two["rows_per_step"] == one["rows_per_step"] == 4
    losses_one, losses_two = ([loss for _, loss in run["loss_curve"]] for run in (one, two))
    # The command runs the notebook's own cells: the same three losses. DDP splits each batch of 4 in
    # two halves and averages the gradients: the same step as one process with all 4. Two independent
    # copies (no DDP) would each log the loss of their own half instead.
    assert losses_one == pytest.approx(in_notebook, abs=1e-3)
    assert losses_two == pytest.approx(in_notebook, abs=1e-3)
    assert [step for step, _ in one["held_out_loss_curve"]] == [3]  # the held-out loss is in the recipe too
    assert two["stdout"].count("metrics in") == 1  # only the first process reports and saves
    assert (tmp_path / "two" / "sft-adapter" / "adapter_config.json").is_file()


def test_06s_grpo_configs_train_one_batch_a_step_whatever_default_the_config_class_has(tmp_path, monkeypatch,
                                                                                      capsys):
    """On a GPU unsloth swaps trl.GRPOConfig for its own, whose gradient accumulation defaults to 2: each
    step would then quietly train on twice the questions. 06's text and VL configs run here with such a
    stand-in class: a step must stay PROMPTS_PER_STEP × NUM_GENERATIONS answers, and the print must say so."""
    import trl

    class AccumulatingByDefault(trl.GRPOConfig):
        def __init__(self, *args, gradient_accumulation_steps: int = 2, **kwargs):
            super().__init__(*args, gradient_accumulation_steps=gradient_accumulation_steps, **kwargs)

    monkeypatch.setenv("COURSE_OUTPUTS", str(tmp_path))
    monkeypatch.setattr(trl, "GRPOConfig", AccumulatingByDefault)
    assert AccumulatingByDefault(output_dir=str(tmp_path), use_cpu=True).gradient_accumulation_steps == 2
    ns = notebook.run_recipe("grpo", {"PROFILE": "cpu", "PROMPTS_PER_STEP": 2, "NUM_GENERATIONS": 3},
                             tag=("plan", "rewards"))
    ns.update(vl_weights=ns["weights"], vl_reward_funcs=ns["reward_funcs"])  # the VL cell's own, stood in
    configs = [c for c in notebook.code_cells("grpo") if "GRPOConfig(" in c]
    assert len(configs) == 2, "06 has a text and a VL GRPOConfig cell"
    capsys.readouterr()
    for source, name in zip(configs, ("args", "vl_args"), strict=True):
        exec(compile(source, "06 config cell", "exec"), ns)
        assert isinstance(ns[name], AccumulatingByDefault)
        assert training.effective_batch(ns[name]) == 6 and ns[name].gradient_accumulation_steps == 1
    printed = capsys.readouterr().out
    assert "6 answers per step (2 question(s) × 3)" in printed and "6 answers per step," in printed
