"""Serve and call (07): an existing OpenAI-compatible server on the merged SFT model, the openai client
streaming from it, the server stopped with no port left open; and the merged model used elsewhere."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from helpers import serving
from helpers.errors import CourseError

ROOT = Path(__file__).resolve().parent.parent
QUESTION = [{"role": "user", "content": "What is a fever?"}]


@pytest.fixture(scope="module")
def merged_dir(tmp_path_factory) -> Path:
    """The embedded model with a fresh LoRA merged in, saved in 16-bit as 03 does (``sft-merged``)."""
    from helpers import models, training

    model, tokenizer, _ = models.load_text_model("embedded", backend="transformers")
    model = models.add_lora(model, r=8, gradient_checkpointing=False)
    path = tmp_path_factory.mktemp("run") / "sft-merged"
    training.save_merged(model, tokenizer, path)
    return path


@pytest.fixture
def without_vllm(monkeypatch):
    monkeypatch.setattr(serving, "vllm_installed", lambda: False)


def test_the_merged_model_is_served_streamed_and_stopped_with_no_port_left_open(merged_dir, without_vllm):
    log = merged_dir.parent / "serve.log"
    with serving.start_server(merged_dir, log_path=log, dtype="float32") as server:
        assert server.name == "transformers serve"
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1" and serving.port_is_open(server.port)
        chunks = list(serving.chat(server.base_url, server.model, QUESTION, max_tokens=16))
        # A name the server does not serve: its own reason, in one sentence.
        with pytest.raises(CourseError, match=r"refused the request \(HTTP 400: Server is pinned to"):
            list(serving.chat(server.base_url, "another-model", QUESTION, max_tokens=4))
    assert len(chunks) > 1, chunks  # streamed: the answer came in pieces, as it was written
    assert "".join(chunks).strip()
    assert not server.running() and not serving.port_is_open(server.port)
    assert "Shutting down" in log.read_text()  # stopped by us, not crashed


def test_the_server_binds_localhost_unless_asked_otherwise(merged_dir, without_vllm):
    command = serving.serve_command(merged_dir, port=8123)
    assert Path(command[0]).name == "transformers"
    assert command[1:] == ["serve", str(merged_dir), "--host", "127.0.0.1", "--port", "8123"]
    everywhere = serving.serve_command(merged_dir, port=8123, host="0.0.0.0", dtype="float32")
    assert everywhere[everywhere.index("--host") + 1] == "0.0.0.0"
    assert everywhere[-2:] == ["--dtype", "float32"]


def _adapter(folder: Path, rank: int) -> Path:
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA"}))
    return folder


def test_vllm_serves_the_base_model_with_each_adapter_by_name(tmp_path, monkeypatch):
    monkeypatch.setattr(serving, "vllm_installed", lambda: True)
    sft, grpo = _adapter(tmp_path / "sft-adapter", 16), _adapter(tmp_path / "grpo-adapter", 24)
    command = serving.serve_command("/models/base", port=8000, adapters={"sft": sft, "grpo": grpo},
                                    dtype="bfloat16", gpu_memory_utilization=0.5)
    assert Path(command[0]).name == "vllm" and command[1:3] == ["serve", "/models/base"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert "--enable-lora" in command and command[command.index("--max-loras") + 1] == "2"
    assert command[command.index("--max-lora-rank") + 1] == "32"  # 24 rounded up to a rank vLLM takes
    assert command[command.index("--lora-modules") + 1:] == [f"sft={sft}", f"grpo={grpo}"]
    assert command[command.index("--gpu-memory-utilization") + 1] == "0.50"
    assert "--enable-lora" not in serving.serve_command("/models/merged", port=8000)


def test_transformers_serve_is_not_handed_an_adapter(tmp_path, without_vllm):
    with pytest.raises(CourseError, match="loads one full model and no LoRA adapter"):
        serving.serve_command("/models/base", port=8000, adapters={"sft": _adapter(tmp_path / "a", 16)})


def test_an_endpoint_that_is_down_gives_one_sentence():
    url = f"http://127.0.0.1:{serving.free_port()}/v1"
    with pytest.raises(CourseError) as caught:
        list(serving.chat(url, "any", QUESTION))
    message = str(caught.value)
    assert message.startswith(f"No model server answers at {url}") and message.endswith(".")
    assert "\n" not in message


def test_a_server_that_cannot_start_says_why_with_its_log(tmp_path, without_vllm):
    with pytest.raises(CourseError, match="No model folder at"):
        serving.start_server(tmp_path / "nothing-here", log_path=tmp_path / "serve.log")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    port = serving.free_port()
    with pytest.raises(CourseError) as caught:
        serving.start_server(broken, log_path=tmp_path / "serve.log", port=port, timeout_s=120)
    message = str(caught.value)
    assert message.startswith("transformers serve stopped before it answered (exit code 1)")
    assert message.endswith(serving.log_tail(tmp_path / "serve.log"))  # why, in the server's own words
    assert "\n" not in message and not serving.port_is_open(port)


def test_missing_server_packages_are_named_with_the_command_that_installs_them(merged_dir, without_vllm,
                                                                                monkeypatch):
    real = serving.importlib.util.find_spec

    def find_spec(name, package=None):  # as if fastapi were not installed
        return None if name == "fastapi" else real(name, package)

    monkeypatch.setattr(serving.importlib.util, "find_spec", find_spec)
    assert serving.missing_packages() == ["fastapi"]
    with pytest.raises(CourseError, match="Serving needs fastapi: run pip install fastapi"):
        serving.start_server(merged_dir, log_path=merged_dir.parent / "unused.log")


def test_the_serve_extra_of_pyproject_lists_what_transformers_serve_needs():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["serve"] == serving.SERVE_PACKAGES


RELOAD = """
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
inputs = tokenizer.apply_chat_template([{"role": "user", "content": "What is a fever?"}],
                                       add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
print(model.dtype, repr(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)))
"""


def test_the_merged_16_bit_model_answers_in_a_fresh_process_without_the_course(merged_dir, tmp_path):
    # Outside the repository, offline: plain transformers and the folder, nothing of helpers/.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", RELOAD, str(merged_dir)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    dtype, _, answer = done.stdout.strip().splitlines()[-1].partition(" ")
    assert dtype == "torch.bfloat16" and ast.literal_eval(answer).strip()


def test_an_image_travels_inline_as_a_png_data_url():
    import base64
    import io

    from PIL import Image

    image = Image.new("RGB", (40, 30), (200, 10, 10))
    picture, text = serving.image_content(image, "Describe the image.")
    assert text == {"type": "text", "text": "Describe the image."} and picture["type"] == "image_url"
    header, data = picture["image_url"]["url"].split(",", 1)
    assert header == "data:image/png;base64"
    back = Image.open(io.BytesIO(base64.b64decode(data)))
    assert back.size == (40, 30) and back.getpixel((0, 0)) == (200, 10, 10)
