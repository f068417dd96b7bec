import io
import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from helpers import CourseError, datasets
from helpers import hub as hubs

VL = Path(__file__).resolve().parent.parent / "data" / "vl"


def rows(split: str) -> list[dict]:
    return [json.loads(line) for line in (VL / f"{split}.jsonl").read_text().splitlines() if line.strip()]


def png(size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, 90).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(hubs, "resolve_dataset", lambda name, source=None: None)
    monkeypatch.setattr(hubs, "hub_reachable", lambda source: False)


def test_offline_samples_are_real_images_with_reports_in_radiology_minis_schema():
    train, test = rows("train"), rows("test")
    assert len(train) + len(test) >= 12
    for row in train + test:
        assert list(row) == ["image", "image_id", "caption", "cui"]
        assert len(row["caption"].split()) >= 12 and isinstance(row["cui"], list)
        with Image.open(VL / row["image"]) as image:
            assert min(image.size) >= 64
    images = [row["image"] for row in train + test]
    assert len(set(images)) == len(images)  # no image in both splits, none twice
    assert sorted(Path(p).name for p in images) == sorted(p.name for p in (VL / "images").glob("*.png"))
    readme = (VL / "README.md").read_text()
    for name in images:  # every image's source and licence is recorded
        assert re.search(rf"`{re.escape(Path(name).name)}`.*\|.*\.dcm", readme), name


def test_offline_the_sets_come_from_data_vl_through_the_same_mapping(offline, capsys):
    train, held_out = datasets.load_vl_sets("unsloth/Radiology_mini", 5, 3, max_pixels=128 * 128)
    assert (len(train), len(held_out)) == (5, 3)
    assert train.origin == held_out.origin == "offline samples (data/vl)"
    assert [ex["id"] for ex in train.examples] == [r["image_id"] for r in rows("train")[:5]]
    ex = held_out.examples[0]
    assert ex["messages"][0]["content"][0] == {"type": "image"}
    assert ex["messages"][1] == {"role": "assistant", "content": [{"type": "text", "text": ex["report"]}]}
    assert ex["report"] == rows("test")[0]["caption"]
    image = ex["images"][0]
    assert image.mode == "RGB" and image.size[0] * image.size[1] <= 128 * 128


def test_medtrinity_offline_also_reads_the_samples(offline, capsys):
    train, held_out = datasets.load_vl_sets("UCSC-VLAA/MedTrinity-25M", 2, 2)
    assert len(train) == 2 and len(held_out) == 2
    assert "offline samples" in capsys.readouterr().out


def test_rows_of_both_real_schemas_map_and_bad_rows_are_counted():
    medtrinity = datasets.VL_SOURCES["UCSC-VLAA/MedTrinity-25M"]
    rows_ = [{"image": Image.new("RGB", (50, 50)), "id": "a", "caption": "Axial CT of the brain."},
             {"image": {"bytes": png(), "path": None}, "id": "b", "caption": "MRI of the knee."},
             {"image": {"bytes": png()[:60], "path": None}, "id": "c", "caption": "Cut off."},
             {"image": {"bytes": b"junk", "path": None}, "id": "d", "caption": "Not an image."},
             {"image": Image.new("RGB", (50, 50)), "id": "e", "caption": "   "}]
    result = datasets.vl_examples(rows_, medtrinity)
    assert [ex["id"] for ex in result.examples] == ["a", "b"]
    assert result.skipped == {"truncated": 1, "unreadable": 1, "no report": 1}
    assert result.summary().endswith("skipped 3 (no report: 1, truncated: 1, unreadable: 1)")
    radiology = datasets.VL_SOURCES["unsloth/Radiology_mini"]
    one = datasets.vl_examples([{"image": png(), "image_id": "ROCO_1", "caption": "X", "cui": []}], radiology)
    assert one.examples[0]["id"] == "ROCO_1"


def test_held_out_rows_never_overlap_training_rows(monkeypatch):
    source = datasets.VL_SOURCES["UCSC-VLAA/MedTrinity-25M"]
    table = [{"image": png(), "id": str(i), "caption": f"report {i}"} for i in range(10)]
    calls = []

    def fake_rows(src, split, start, n, hub):
        calls.append((split, start, n))
        return table[start:start + n]

    monkeypatch.setattr(datasets.vl, "_hub_rows", fake_rows)
    train, held_out = datasets.load_vl_sets(source.hub_id, 4, 3)
    assert calls == [("train", 0, 4), ("train", 4, 3)]
    assert not {ex["id"] for ex in train.examples} & {ex["id"] for ex in held_out.examples}


def test_a_gated_or_broken_hub_dataset_is_one_sentence(monkeypatch):
    import datasets as hf_datasets

    def refuse(*args, **kwargs):
        raise PermissionError("403 Client Error: this dataset is gated.\nmore lines")

    monkeypatch.setattr(hubs, "hub_reachable", lambda source: True)
    monkeypatch.setattr(hf_datasets, "load_dataset", refuse)
    with pytest.raises(CourseError, match="accept its terms") as err:
        datasets.load_vl_sets("UCSC-VLAA/MedTrinity-25M", 2, 2)
    assert "\n" not in str(err.value)


def test_an_unknown_dataset_names_the_known_ones():
    with pytest.raises(CourseError, match="unsloth/Radiology_mini"):
        datasets.load_vl_sets("someone/xrays")


def test_a_local_parquet_file_in_medtrinitys_schema_is_read_as_data(tmp_path):
    import pandas as pd

    captions = [f"Axial CT of the chest, case {i}: a spiculated nodule in the right upper lobe. "
                f"Call 13812345678 for the report." for i in range(5)]
    frame = pd.DataFrame({"image": [{"bytes": png((80, 64)), "path": None} for _ in captions],
                          "id": [f"mt-{i}" for i in range(5)], "caption": captions})
    frame.to_parquet(tmp_path / "train-00000-of-00001.parquet")  # one shard, no test split
    train, held_out = datasets.load_vl_sets("UCSC-VLAA/MedTrinity-25M", 3, 2, data=str(tmp_path))
    assert [ex["id"] for ex in train.examples] == ["mt-0", "mt-1", "mt-2"]
    assert [ex["id"] for ex in held_out.examples] == ["mt-3", "mt-4"]  # the rows after the training ones
    assert train.origin == f"local folder {tmp_path}"
    assert "[PHONE]" in train.examples[0]["report"] and "13812345678" not in train.examples[0]["report"]
    with pytest.raises(CourseError, match="not a local file or folder"):
        datasets.load_vl_sets("unsloth/Radiology_mini", 2, 1, data="unsloth/Radiology_mini")
    with pytest.raises(CourseError, match="No file or folder at"):
        datasets.load_vl_sets("unsloth/Radiology_mini", 2, 1, data=str(tmp_path / "missing.jsonl"))


# --- held-out images that show a training image's slice are dropped, wherever the rows come from ---

def rewindowed_copy(name: str, low: float, high: float) -> Image.Image:
    """A sample image through another window: grey levels below ``low`` black, above ``high`` white."""
    import numpy as np

    with Image.open(VL / "images" / name) as image:
        values = np.asarray(image.convert("L"), dtype=np.float64)
    return Image.fromarray((np.clip((values - low) / (high - low), 0, 1) * 255).astype(np.uint8))


def readme_splits() -> dict[str, tuple[str, str]]:
    """Each sample PNG -> (its split, its DICOM source file), from the table in data/vl/README.md."""
    row = r"^\| `(\w+\.png)` \| (train|test) \|[^|]*\| `([^`]+\.dcm)`"
    return {png: (split, dicom) for png, split, dicom in
            re.findall(row, (VL / "README.md").read_text(), re.MULTILINE)}


def test_no_dicom_source_file_is_in_both_splits_and_the_readme_says_which_split_each_image_is_in():
    table = readme_splits()
    splits = {split: {Path(r["image"]).name for r in rows(split)} for split in ("train", "test")}
    assert {png: split for png, (split, _) in table.items()} == {
        png: split for split, pngs in splits.items() for png in pngs}
    sources = {split: {table[png][1] for png in pngs} for split, pngs in splits.items()}
    assert not sources["train"] & sources["test"]
    assert (len(splits["train"]), len(splits["test"])) == (11, 4)
    for split in ("train", "test"):  # ids numbered in file order
        assert [r["image_id"] for r in rows(split)] == [f"course_vl_{split}_{i:03d}"
                                                         for i in range(1, len(rows(split)) + 1)]


def test_a_local_held_out_image_rewindowed_from_a_training_image_is_dropped_and_named(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    train = [{**row, "image_id": f"roco_train_{i}"} for i, row in enumerate(rows("train")[:4])]
    for row in train:
        shutil.copy(VL / row["image"], tmp_path / "images")
    copy_of = train[2]  # thorax CT in a soft-tissue window, shown again in a narrower one, larger
    twin = rewindowed_copy(Path(copy_of["image"]).name, 60, 180).resize((300, 300))
    twin.save(tmp_path / "images" / "x.png")
    held = [{**rows("test")[0], "image_id": "roco_test_0"},
            {**copy_of, "image": "images/x.png", "image_id": "roco_test_1", "caption": "The same CT again."},
            {**rows("test")[2], "image_id": "roco_test_2"}]
    for row in (held[0], held[2]):
        shutil.copy(VL / row["image"], tmp_path / "images")
    for name, split_rows in (("train.jsonl", train), ("test.jsonl", held)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in split_rows), "utf-8")
    train_set, held_out = datasets.load_vl_sets("unsloth/Radiology_mini", 4, 3, data=str(tmp_path))
    assert len(train_set) == 4 and [ex["id"] for ex in held_out.examples] == ["roco_test_0", "roco_test_2"]
    assert held_out.skipped == {datasets.SAME_SLICE_SKIP: 1}
    assert held_out.summary().endswith("skipped 1 (same slice as a training image: 1)")
    assert capsys.readouterr().out.strip() == (
        "1 held-out image dropped: roco_test_1 shows the same slice as training image roco_train_2.")


def test_hub_rows_are_checked_the_same_way_and_all_held_out_twins_is_one_sentence(monkeypatch, capsys):
    def image(name: str) -> dict:
        return {"bytes": (VL / "images" / name).read_bytes(), "path": None}

    table = {"train": [{"image": image("head_ct_skull_base_brain.png"), "id": "t0", "caption": "Head CT."},
                       {"image": image("chest_xray_pa.png"), "id": "t1", "caption": "Chest radiograph."}],
             "test": [{"image": image("head_ct_skull_base_bone.png"), "id": "h0", "caption": "Bone window."},
                      {"image": image("pelvis_us.png"), "id": "h1", "caption": "Pelvic ultrasound."}]}
    source = datasets.VL_SOURCES["UCSC-VLAA/MedTrinity-25M"]  # its one split: held-out rows follow
    monkeypatch.setattr(datasets.vl, "_hub_rows", lambda src, split, start, n, hub: table[
        "train" if start == 0 else "test"][:n])
    _, held_out = datasets.load_vl_sets(source.hub_id, 2, 2)
    assert [ex["id"] for ex in held_out.examples] == ["h1"]
    assert "h0 shows the same slice as training image t0" in capsys.readouterr().out
    table["test"] = table["test"][:1]
    with pytest.raises(CourseError, match="Every held-out image shows the same slice") as err:
        datasets.load_vl_sets(source.hub_id, 2, 1)
    assert "\n" not in str(err.value)


def test_nothing_is_dropped_from_the_courses_own_samples(offline, capsys):
    train, held_out = datasets.load_vl_sets("unsloth/Radiology_mini", 11, 4, max_pixels=256 * 256)
    assert (len(train), len(held_out)) == (11, 4) and held_out.skipped == {}
    assert ("Checked 4 held-out images against 11 training images: none shows the same slice as a training "
            "image.") in capsys.readouterr().out


def test_the_fingerprint_changes_with_the_reports_not_only_the_ids():
    radiology = datasets.VL_SOURCES["unsloth/Radiology_mini"]
    first = [{"image": png(), "image_id": "course_vl_train_001", "caption": "Chest radiograph."}]
    moved = [{**first[0], "caption": "Radiograph of the tibia."}]  # another sample under the same id
    fingerprint = datasets.vl_examples(first, radiology).fingerprint()
    assert fingerprint == datasets.vl_examples(list(first), radiology).fingerprint()
    assert fingerprint != datasets.vl_examples(moved, radiology).fingerprint()
