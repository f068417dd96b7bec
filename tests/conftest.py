"""Shared fixtures: the embedded model, and one run of the whole course that notebook tests read."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent

# Property tests draw the same examples on every run, so a failure in CI can be reproduced anywhere;
# HYPOTHESIS_PROFILE=explore draws new ones (and more of them) to hunt for fresh counter-examples.
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


def _gpu_run(config) -> bool:
    """Whether this run selects the GPU tests alone (``-m gpu``)."""
    return (config.getoption("markexpr", "") or "").strip() == "gpu"


def pytest_configure(config):
    """With ``-m gpu`` on a CUDA machine, import unsloth before any test module imports transformers:
    unsloth patches transformers, peft and TRL when it is imported, as the notebooks import it first."""
    if not _gpu_run(config) or importlib.util.find_spec("unsloth") is None:
        return
    import torch

    if torch.cuda.is_available():
        try:
            import unsloth  # noqa: F401
        except Exception as error:  # the unsloth test then fails with the cause; the others still run
            print(f"unsloth failed to import: {type(error).__name__}: {error}")


def pytest_ignore_collect(collection_path, config):
    """With ``-m gpu``, collect tests/test_gpu.py alone: the GPU tests live there, and a GPU machine
    need not have what the other modules import (notebook and browser tooling)."""
    if _gpu_run(config) and collection_path.suffix == ".py" and collection_path.name != "test_gpu.py":
        return collection_path.name.startswith("test_") or None
    return None


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` imported as a module, by the loader the benchmark reports use."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # the scripts import each other as benchmarks.<name>
    from benchmarks.report import load_script

    return load_script(name)


@pytest.fixture(scope="session")
def embedded():
    """(model, tokenizer, backend) of the embedded SmolLM2-135M-Instruct, fresh from its converted folder."""
    from helpers.models import load_text_model

    return load_text_model("embedded")


@pytest.fixture(scope="module")
def notebook_rewards() -> dict:
    """The reward functions of 06, as its cells tagged "rewards" define them: a namespace holding
    ``format_reward``, ``reasoning_steps_reward``, ``accuracy_reward``, ``length_reward``, ``my_reward``
    and the knobs they read (``MAX_STEPS``, ``MAX_COMPLETION_LENGTH``, 48 here).

    The functions' globals are this dict, so a test changes a knob with
    ``monkeypatch.setitem(notebook_rewards, "MAX_COMPLETION_LENGTH", 64)`` and the rewards follow it
    (monkeypatch restores it for the module's other tests)."""
    from helpers import notebook

    return notebook.run_recipe("grpo", {"MAX_COMPLETION_LENGTH": 48}, tag="rewards")


# Set while the course runs, so that a test can check that no key ends up in any output.
FAKE_KEYS = {"SWANLAB_API_KEY": "swanlab-fake-key-3f9a2c7e", "JUDGE_API_KEY": "sk-fake-judge-key-81d4b6",
             "HF_TOKEN": "hf_fakeTokenForTheCourseTests42"}


@dataclass
class CourseRun:
    """The outputs of ``python -m helpers.course run --profile cpu``, run once per test session."""

    run: Path  # the run dir, outputs/cpu
    returncode: int
    log: str
    repo_changes: list[str]  # what the run changed in the repository itself (git status): nothing, we hope

    def metrics(self, notebook: str) -> dict:
        return json.loads((self.run / "metrics" / f"{notebook}.json").read_text())["metrics"]


@pytest.fixture(scope="session")
def cpu_course(tmp_path_factory) -> CourseRun:
    """The whole course, executed once: each notebook's tests assert on what it left in the run dir.

    Running it once (about eighteen minutes on two cores) rather than per test keeps the suite fast.
    ``COURSE_TEST_OUTPUTS=outputs`` reuses a finished run instead (``make course`` leaves one there).
    """
    reuse = os.environ.get("COURSE_TEST_OUTPUTS")
    if reuse:
        return CourseRun(Path(reuse).resolve() / "cpu", 0, f"reused the run in {reuse}", [])
    outputs = tmp_path_factory.mktemp("course-outputs")
    env = {**os.environ, "COURSE_OUTPUTS": str(outputs), **FAKE_KEYS}
    before = _git_status()
    done = subprocess.run([sys.executable, "-m", "helpers.course", "run", "--profile", "cpu"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=2400)
    changes = sorted(set(_git_status()) - set(before))
    return CourseRun(outputs / "cpu", done.returncode, done.stdout[-4000:] + done.stderr[-4000:], changes)


def _git_status() -> list[str]:
    """Files git sees as new or changed (ignored ones, like outputs/ and caches, are not listed)."""
    done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                          capture_output=True, text=True)
    return done.stdout.splitlines() if done.returncode == 0 else []


# --- a local OpenAI-compatible endpoint, for the judge and the teacher reward --------------------------

SCORES = {"choices": [{"index": 0, "finish_reason": "stop", "message": {
    "role": "assistant", "content": '{"safety": 5, "reasoning": 4, "completeness": 3, "empathy": 2}'}}],
    "id": "x", "object": "chat.completion", "created": 0, "model": "grader"}


class Endpoint:
    """A local OpenAI-compatible endpoint: records each request, answers from a script, then SCORES."""

    def __init__(self):
        self.calls: list[tuple[str, dict, str]] = []
        self.script: list[tuple[int, dict]] = []  # (HTTP status, body) for the next requests, in order
        self.respond = lambda body: (200, SCORES)  # after the script: an answer made from the request
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.calls.append((self.path, body, self.headers.get("Authorization", "")))
                status, reply = endpoint.script.pop(0) if endpoint.script else endpoint.respond(body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # the system picks a free port
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def chat_endpoint():
    """An OpenAI-compatible endpoint on 127.0.0.1 that records requests and answers from a script."""
    served = Endpoint()
    yield served
    served.server.shutdown()
