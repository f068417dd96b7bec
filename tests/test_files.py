import pytest

from helpers.files import atomic_path


def test_a_file_is_swapped_in_whole_and_no_temp_is_left(tmp_path):
    dest = tmp_path / "sub" / "metrics.json"
    with atomic_path(dest) as tmp:
        assert tmp.parent == dest.parent and tmp != dest and not dest.exists()
        tmp.write_text("new", encoding="utf-8")
    assert dest.read_text(encoding="utf-8") == "new"
    assert [p.name for p in dest.parent.iterdir()] == ["metrics.json"]


def test_a_file_replaces_the_old_one(tmp_path):
    dest = tmp_path / "a.jsonl"
    dest.write_text("old", encoding="utf-8")
    with atomic_path(dest) as tmp:
        tmp.write_text("new", encoding="utf-8")
    assert dest.read_text(encoding="utf-8") == "new"


def test_an_error_leaves_the_old_file_and_removes_the_temp(tmp_path):
    dest = tmp_path / "a.json"
    dest.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError, match="crash"), atomic_path(dest) as tmp:
        tmp.write_text("half", encoding="utf-8")
        raise RuntimeError("crash")
    assert dest.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_directory_replaces_the_old_one_with_nothing_of_it_left(tmp_path):
    dest = tmp_path / "adapter"
    dest.mkdir()
    (dest / "stale.bin").write_text("old", encoding="utf-8")
    with atomic_path(dest, directory=True) as tmp:
        assert tmp.is_dir() and not any(tmp.iterdir())
        (tmp / "adapter_config.json").write_text("{}", encoding="utf-8")
    assert sorted(p.name for p in dest.iterdir()) == ["adapter_config.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_an_interrupted_directory_leaves_the_old_one_whole(tmp_path):
    dest = tmp_path / "merged"
    dest.mkdir()
    (dest / "model.safetensors").write_text("old", encoding="utf-8")
    with pytest.raises(KeyboardInterrupt), atomic_path(dest, directory=True) as tmp:
        (tmp / "model.safetensors").write_text("half", encoding="utf-8")
        raise KeyboardInterrupt
    assert (dest / "model.safetensors").read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]


def test_a_temp_left_by_an_earlier_crash_is_cleared_first(tmp_path):
    dest = tmp_path / "converted"
    with atomic_path(dest, directory=True) as tmp:
        stale = tmp
    stale.mkdir()
    (stale / "junk").write_text("x", encoding="utf-8")
    with atomic_path(dest, directory=True) as tmp:
        assert tmp == stale and not any(tmp.iterdir())
    assert not stale.exists()
