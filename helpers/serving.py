"""Serve a fine-tuned model behind an OpenAI-compatible endpoint, and call it like any API (07).

An existing server does the serving, never one written here: ``vllm serve`` where vLLM and a CUDA GPU
are present (LoRA adapters beside the base model, picked per request by name), ``transformers serve``
everywhere else (the cpu profile, a GPU without vLLM). Both speak the OpenAI chat API, so the ``openai``
client calls either, as it would call any hosted model. The server binds 127.0.0.1 unless asked
otherwise: anyone who can reach its port can use the model, with no key.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from helpers.answers import THINK_CLOSE, THINK_OPEN
from helpers.errors import CourseError
from helpers.generation import vllm_installed

LOCALHOST = "127.0.0.1"
# What `transformers serve` imports beyond the course's stack (the `serve` extra of pyproject.toml, equal
# to this list: tested); vLLM brings its own server. The client side needs `openai` either way.
SERVE_PACKAGES = ["openai>=1.98", "fastapi>=0.115", "uvicorn>=0.30"]
VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the only values vLLM takes for --max-lora-rank
START_TIMEOUT_S = {"vllm serve": 600.0, "transformers serve": 180.0}  # vLLM compiles and profiles first
STOP_GRACE_S = 15.0


def uses_vllm() -> bool:
    """Whether ``vllm serve`` is the server here: vLLM installed and a CUDA GPU present."""
    return vllm_installed()


def serves_images() -> bool:
    """Whether a vision-language model can be served here: vLLM, or transformers serve with torchvision
    (Qwen3-VL's video processor, which its processor loads, needs it)."""
    return uses_vllm() or importlib.util.find_spec("torchvision") is not None


def image_content(image, text: str) -> list[dict]:
    """A chat message's content holding one image, inline as a PNG data URL, then the text."""
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]


def missing_packages() -> list[str]:
    """The packages to pip install before this machine can serve and call a model ([] when none)."""
    needed = ["openai"] if uses_vllm() else ["openai", "fastapi", "uvicorn"]  # module = pip name here
    return [module for module in needed if importlib.util.find_spec(module) is None]


def _script(name: str) -> str:
    # The console script next to this Python: a kernel started without activating .venv has no
    # .venv/bin on its PATH, and the `transformers` found there could belong to another Python.
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else name


def _lora_rank(adapters: Mapping[str, str | Path]) -> int:
    """The --max-lora-rank these adapters need: their largest rank, rounded up to a value vLLM takes."""
    ranks = [8]
    for path in adapters.values():
        config = json.loads((Path(path) / "adapter_config.json").read_text())
        ranks += [int(config.get("r", 8)), *map(int, (config.get("rank_pattern") or {}).values())]
    return next((r for r in VLLM_RANKS if r >= max(ranks)), max(ranks))


def serve_command(model_path: str | Path, *, port: int, host: str = LOCALHOST,
                  adapters: Mapping[str, str | Path] | None = None, dtype: str | None = None,
                  load_in_4bit: bool = False, max_model_len: int | None = None,
                  gpu_memory_utilization: float | None = None) -> list[str]:
    """The command line of the server for ``model_path`` (a merged model, or the base with ``adapters``).

    ``vllm serve`` where vLLM can run, with each adapter as ``--lora-modules name=path``; else
    ``transformers serve``, which loads one full model folder and no adapter.
    """
    adapters = dict(adapters or {})
    where = ["--host", host, "--port", str(port)]
    if uses_vllm():
        command = [_script("vllm"), "serve", str(model_path), *where]
        if dtype:
            command += ["--dtype", dtype]
        if load_in_4bit:
            command += ["--quantization", "bitsandbytes"]
        if max_model_len:
            command += ["--max-model-len", str(max_model_len)]
        if gpu_memory_utilization:
            command += ["--gpu-memory-utilization", f"{gpu_memory_utilization:.2f}"]
        if adapters:
            command += ["--enable-lora", "--max-loras", str(len(adapters)),
                        "--max-lora-rank", str(_lora_rank(adapters)),
                        "--lora-modules", *(f"{name}={path}" for name, path in adapters.items())]
        return command
    if adapters:
        # Its model manager reads config.json first (AutoConfig), which an adapter folder does not have.
        raise CourseError("transformers serve loads one full model and no LoRA adapter: serve the merged "
                          "model (SAVE_MERGED = True in 03, or training.save_merged), or use vLLM on a GPU.")
    command = [_script("transformers"), "serve", str(model_path), *where]
    if dtype:
        command += ["--dtype", dtype]
    if load_in_4bit:
        command += ["--quantization", "bnb-4bit"]
    return command


def free_port(host: str = LOCALHOST) -> int:
    """A port nothing listens on now (the system picks it), for the server to bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_open(port: int, host: str = LOCALHOST) -> bool:
    """Whether something accepts connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def _reachable_host(host: str) -> str:
    # A server bound to every interface is reached, from this machine, on the loopback address.
    return LOCALHOST if host in ("0.0.0.0", "", "::") else host


def _is_loopback(base_url: str) -> bool:
    return any(name in base_url for name in ("//127.0.0.1", "//localhost", "//[::1]"))


def log_tail(path: Path, lines: int = 3) -> str:
    """The last non-empty lines of a log, joined into one line (for a one-sentence error)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    tail = [line.strip() for line in text if line.strip()][-lines:]
    return " | ".join(tail)[-400:] or "(empty log)"


@dataclass
class Server:
    """A running model server: its address, the model names it answers to, how to stop it."""

    command: list[str]
    process: subprocess.Popen
    host: str
    port: int
    model: str  # the name a request gives to use the served folder (both servers: the path as given)
    log_path: Path
    adapters: dict[str, str] = field(default_factory=dict)  # vLLM: more names, one per LoRA adapter
    stopped: bool = False

    @property
    def name(self) -> str:
        return " ".join(Path(part).name for part in self.command[:2])  # "vllm serve" or "transformers serve"

    @property
    def base_url(self) -> str:
        return f"http://{_reachable_host(self.host)}:{self.port}/v1"

    def shown_command(self) -> str:
        """The command as a learner would type it in a terminal."""
        return " ".join([self.name, *self.command[2:]])

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop the server and everything it started, and wait for it, so that its port closes."""
        if self.stopped:
            return
        self.stopped = True
        atexit.unregister(self.stop)
        if self.process.poll() is None:
            # The server leads its own process group: vLLM's engine runs in child processes.
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        try:  # children that outlived their leader (same group id) go too
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _answers(url: str) -> bool:
    # No proxy: a proxy set for the internet must not stand between us and a server on this machine.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as reply:
            return reply.status == 200
    except OSError:  # refused, reset, timed out, or an HTTP error status while it starts
        return False


def _gpu_memory_share() -> float:
    """The share of the GPU vLLM may take: most of what is free now (this kernel may hold models too)."""
    import torch

    free, total = torch.cuda.mem_get_info()
    return max(0.05, round(0.9 * free / total - 0.005, 2))


def start_server(model_path: str | Path, *, log_path: str | Path, host: str = LOCALHOST,
                 port: int | None = None, adapters: Mapping[str, str | Path] | None = None,
                 dtype: str | None = None, load_in_4bit: bool = False, max_model_len: int | None = None,
                 timeout_s: float | None = None) -> Server:
    """Start the server for ``model_path`` on a free port and return once it answers.

    It logs to ``log_path`` (in the run dir, not the notebook). It binds ``host``, 127.0.0.1 unless
    asked otherwise. Use it as a context manager, or call ``stop()``: either way no port is left open.
    """
    if not (Path(model_path) / "config.json").is_file():
        raise CourseError(f"No model folder at {model_path}: give the merged model 03 saved (sft-merged) "
                          "or a base model's folder.")
    if missing := missing_packages():
        raise CourseError(f"Serving needs {', '.join(missing)}: run pip install {' '.join(missing)} "
                          "(or pip install -e '.[serve]'), then retry.")
    port = port or free_port(_reachable_host(host))
    share = _gpu_memory_share() if uses_vllm() else None
    command = serve_command(model_path, port=port, host=host, adapters=adapters, dtype=dtype,
                            load_in_4bit=load_in_4bit, max_model_len=max_model_len,
                            gpu_memory_utilization=share)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # No update check on PyPI at start-up, and no hub call for a folder that is already here.
    env = {**os.environ, "HF_HUB_DISABLE_UPDATE_CHECK": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True)
    server = Server(command, process, host, port, str(model_path), log_path,
                    {name: str(path) for name, path in (adapters or {}).items()})
    atexit.register(server.stop)  # a kernel that exits with the server still up takes it along
    timeout_s = timeout_s or START_TIMEOUT_S[server.name]
    # /health, not /v1/models: transformers serve lists only the Hugging Face cache there (an error
    # when that cache does not exist). Both servers answer /health once the model is loaded.
    health = server.base_url.removesuffix("/v1") + "/health"
    deadline = time.monotonic() + timeout_s
    while not _answers(health):
        if not server.running():
            server.stop()
            raise CourseError(f"{server.name} stopped before it answered (exit code {process.returncode}); "
                              f"its log {log_path} ends: {log_tail(log_path)}")
        if time.monotonic() > deadline:
            server.stop()
            raise CourseError(f"{server.name} did not answer at {health} within {timeout_s:.0f} s; "
                              f"its log {log_path} ends: {log_tail(log_path)}")
        time.sleep(0.5)
    return server


def openai_client(base_url: str, api_key: str, *, max_retries: int = 2, timeout_s: float = 60.0):
    """The ``openai`` SDK's client for any OpenAI-compatible endpoint, retrying ``max_retries`` times
    (connection errors, 408/409/429 and 5xx, with backoff). The SDK insists on a key: any string does for
    a local server. A server on this machine is reached directly, never through a proxy set for the web."""
    import openai

    extra = {"http_client": openai.DefaultHttpxClient(trust_env=False)} if _is_loopback(base_url) else {}
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=max_retries, timeout=timeout_s,
                         **extra)


def chat(base_url: str, model: str, messages: list[dict], *, stream: bool = True, max_tokens: int = 256,
         temperature: float = 0.0, timeout_s: float = 120.0) -> Iterator[str]:
    """The reply of the OpenAI-compatible endpoint at ``base_url``, in pieces as the server writes them.

    With ``stream=False`` the whole reply comes as one piece. Reasoning a server sends apart from the
    answer (``reasoning_content``, as both servers do for Qwen3) comes back inside a think block, as
    the model wrote it. An endpoint that is down or refuses the request raises one sentence.
    """
    import openai

    client = openai_client(base_url, "none", max_retries=1, timeout_s=timeout_s)  # local: no key needed
    request = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
    try:
        if not stream:
            reply = client.chat.completions.create(**request).choices[0].message
            think = getattr(reply, "reasoning_content", None)
            yield (f"{THINK_OPEN}{think}{THINK_CLOSE}" if think else "") + (reply.content or "")
            return
        thinking = False
        for chunk in client.chat.completions.create(**request, stream=True):
            delta = chunk.choices[0].delta if chunk.choices else None
            think = getattr(delta, "reasoning_content", None) if delta else None
            if think:
                yield think if thinking else THINK_OPEN + think
                thinking = True
            if delta and delta.content:
                yield (THINK_CLOSE if thinking else "") + delta.content
                thinking = False
        if thinking:
            yield THINK_CLOSE
    except openai.APIConnectionError as err:  # refused, or timed out: nothing answers there
        raise CourseError(f"No model server answers at {base_url}: start one (serving.start_server) "
                          "or check the address and port.") from err
    except openai.APIStatusError as err:
        raise CourseError(f"The model server at {base_url} refused the request "
                          f"(HTTP {err.status_code}: {_error_detail(err)}).") from err


def _error_detail(err) -> str:
    """The server's reason for refusing: FastAPI sends {"detail": ...}, vLLM {"error": {"message": ...}}."""
    body = err.body if isinstance(err.body, dict) else {}
    error = body.get("error")
    detail = body.get("detail") or (error.get("message") if isinstance(error, dict) else error)
    detail = str(detail or body.get("message") or err.message or "no details").strip()
    return (detail.splitlines() or ["no details"])[0][:200].rstrip(".")
