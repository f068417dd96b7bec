"""Vision-language sets (05).

Image + report pairs become a two-turn chat: the user turn holds the image and the instruction,
the assistant turn holds the report. That is the form the chat template, the collator and
generation all read.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from helpers.data_files import is_local_path, local_files, locate, read_records
from helpers.datasets.common import DATA_DIR, deidentify
from helpers.errors import CourseError

VL_INSTRUCTION = ("You are a radiologist. Describe this medical image: the imaging modality, the view, "
                  "the anatomy shown and any abnormal findings.")
VL_INSTRUCTION_ZH = "用中文描述这张影像并给出诊断"  # "describe this image in Chinese and give your diagnosis"
INSTRUCTION_LANGUAGES = {"en": VL_INSTRUCTION, "zh": VL_INSTRUCTION_ZH}
VL_OFFLINE_DIR = DATA_DIR / "vl"


@dataclass(frozen=True)
class VLSource:
    """Where a real image + report dataset lives and which columns hold the image, report and id."""

    hub_id: str
    config: str | None
    splits: tuple[str, ...]  # the splits it publishes; held-out rows come from the last one
    image: str
    caption: str
    id: str
    stream: bool  # read row by row: the whole dataset is far too big to download for a class
    licence: str
    concepts: str = ""  # the column of UMLS concept ids (ROCO's "cui"), where the dataset has one


VL_SOURCES: dict[str, VLSource] = {
    # 1,978 train / 327 test radiology images with captions, sampled from ROCOv2 (PubMed Central).
    "unsloth/Radiology_mini": VLSource(
        "unsloth/Radiology_mini", None, ("train", "test"), image="image", caption="caption", id="image_id",
        stream=False, licence="CC BY-NC 2.0 (dataset card)", concepts="cui"),
    # The demo subset (~162k rows) of MedTrinity-25M; gated: accept its terms on the hub page first.
    "UCSC-VLAA/MedTrinity-25M": VLSource(
        "UCSC-VLAA/MedTrinity-25M", "25M_demo", ("train",), image="image", caption="caption", id="id",
        stream=True, licence="see the dataset card (gated, research use)"),
}

# The offline samples in data/vl/ use Radiology_mini's columns, whichever dataset was asked for.
VL_OFFLINE = VLSource("data/vl", None, ("train", "test"), image="image", caption="caption", id="image_id",
                      stream=False, licence="images: see data/vl/README.md; reports: Apache-2.0",
                      concepts="cui")


@dataclass
class VLSet:
    """Image + report examples ready for training, and what was skipped on the way."""

    examples: list[dict]  # {"id", "messages", "images", "report", "cuis"}
    origin: str  # the hub id, or "offline samples (data/vl)"
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count

    def __len__(self) -> int:
        return len(self.examples)

    def summary(self) -> str:
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items()))
        return (f"{len(self.examples)} image + report pairs from {self.origin}; skipped {skipped}"
                + (f" ({reasons})" if reasons else ""))

    def fingerprint(self) -> str:
        """A short digest of the pairs' ids and reports, for the training settings: a checkpoint trained on
        other pairs is never resumed, even where the ids are the same (as when samples change split)."""
        pairs = json.dumps([[ex["id"], ex["report"]] for ex in self.examples], ensure_ascii=False)
        return hashlib.sha256(pairs.encode("utf-8")).hexdigest()[:16]


def vl_instruction(language: str) -> str:
    """05's instruction in ``language``: "en" (the default) or "zh" (in Chinese, with a diagnosis)."""
    if language not in INSTRUCTION_LANGUAGES:
        raise CourseError(f"INSTRUCTION_LANGUAGE = {language!r}: choose one of "
                          f"{', '.join(map(repr, INSTRUCTION_LANGUAGES))}.")
    return INSTRUCTION_LANGUAGES[language]


def concept_ids(value: object) -> list[str]:
    """The UMLS concept ids of a row (ROCO's "cui"): a list, or its text as a CSV copy holds it
    ("['C0040405', 'C0817096']"), or an array of them (parquet); anything else gives none."""
    value = value.tolist() if hasattr(value, "tolist") else value
    if isinstance(value, str):
        return re.findall(r"C\d{7}", value)
    if isinstance(value, list | tuple):
        return [str(c).strip() for c in value if isinstance(c, str) and re.fullmatch(r"\s*C\d{7}\s*", c)]
    return []


def vl_messages(report: str | None, instruction: str = VL_INSTRUCTION) -> list[dict]:
    """The chat for one pair: a user turn (image, instruction) and, for training, the report turn."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
    if report is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": report}]})
    return messages


def vl_examples(rows: list[dict], source: VLSource, *, instruction: str = VL_INSTRUCTION,
                max_pixels: int | None = None, origin: str = "") -> VLSet:
    """Map rows of a real schema to examples; bad images and empty reports are skipped and counted."""
    from helpers.images import DEFAULT_MAX_PIXELS, UnusableImage, prepare_image

    examples, skipped = [], {}
    for row in rows:
        if not isinstance(row, dict):
            skipped["malformed"] = skipped.get("malformed", 0) + 1
            continue
        report, _ = deidentify(str(row.get(source.caption) or "").strip())
        if not report:
            skipped["no report"] = skipped.get("no report", 0) + 1
            continue
        try:
            image = prepare_image(row.get(source.image), max_pixels or DEFAULT_MAX_PIXELS)
        except UnusableImage as err:
            skipped[str(err)] = skipped.get(str(err), 0) + 1
            continue
        examples.append({"id": str(row.get(source.id, len(examples))), "images": [image], "report": report,
                         "messages": vl_messages(report, instruction),
                         "cuis": concept_ids(row.get(source.concepts)) if source.concepts else []})
    return VLSet(examples, origin or source.hub_id, skipped)


def read_offline_vl_rows(split: str, folder: Path = VL_OFFLINE_DIR) -> list[dict]:
    """The offline samples of a split, in Radiology_mini's schema; the image column holds a file path."""
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        raise CourseError(f"No offline samples at {path}: the course's data/vl folder is incomplete.")
    return _local_rows([path], VL_OFFLINE)


def read_local_vl_rows(path: Path, source: VLSource, n_train: int, n_eval: int) -> tuple[list, list]:
    """(training rows, held-out rows) of a local file or folder in ``source``'s schema.

    In a folder, files named like a test or validation split ("test.jsonl", "data/test-00000.parquet")
    give the held-out rows; without one they come after the training rows. Image paths in json, jsonl
    or csv rows are relative to the file that holds them."""
    files = local_files(path, "give .json, .jsonl, .parquet or .csv rows with the columns "
                              f"{source.image!r} and {source.caption!r}")
    held = [f for f in files if re.search(r"(?:^|[-_.])(?:test|valid|validation|val)(?:$|[-_.])", f.stem)]
    train = _local_rows([f for f in files if f not in held], source, n_train + (0 if held else n_eval))
    return train[:n_train], _local_rows(held, source, n_eval) if held else train[n_train:]


def _local_rows(files: list[Path], source: VLSource, n: int | None = None) -> list:
    """Up to ``n`` rows of ``files`` (all by default), image paths made relative to their file's folder."""
    rows: list = []
    for file in files:
        for row in read_records(file):
            if n is not None and len(rows) >= n:
                return rows
            image = row.get(source.image) if isinstance(row, dict) else None
            if isinstance(image, str) and not Path(image).is_absolute():
                row = {**row, source.image: str(file.parent / image)}
            rows.append(row)
    return rows


def _hub_rows(source: VLSource, split: str, start: int, n: int, hub: str | None) -> list[dict] | None:
    """Rows [start, start + n) of a split from the hub; None when no hub is reachable."""
    from helpers import hub as hubs

    try:
        if source.stream:
            if not hubs.hub_reachable("huggingface"):
                print(f"No hub reachable: using the course's offline samples instead of {source.hub_id}.")
                return None
            from datasets import load_dataset

            hubs.limit_waiting()
            stream = load_dataset(source.hub_id, source.config, split=split, streaming=True)
            return list(stream.skip(start).take(n))
        folder = hubs.resolve_dataset(source.hub_id, source=hub)
        if folder is None:
            return None
        from datasets import load_dataset

        data = load_dataset(str(folder.path), source.config, split=split)
        return [data[i] for i in range(start, min(start + n, len(data)))]
    except CourseError:
        raise
    except Exception as err:  # gated, renamed or unreadable: one sentence saying what to do
        raise CourseError(
            f"Could not read {source.hub_id} ({type(err).__name__}: {str(err).splitlines()[0][:160]}): if it "
            "is gated, accept its terms on its hub page and log in (`hf auth login`); or choose "
            "unsloth/Radiology_mini."
        ) from err


def load_vl_sets(name: str = "unsloth/Radiology_mini", n_train: int = 8, n_eval: int = 4, *,
                 data: str | None = None, instruction: str = VL_INSTRUCTION, max_pixels: int | None = None,
                 hub: str | None = None) -> tuple[VLSet, VLSet]:
    """(train, held-out) image + report sets of a real dataset, or of the offline samples when offline.

    ``data`` is a local file or folder in ``name``'s schema, read instead of the hub. Held-out rows come
    from the dataset's test split where it has one, else from the rows after the training rows, so no
    row is in both; a held-out image that shows the same slice as a training image is dropped too
    (``drop_same_slices``), wherever the rows came from.
    """
    train, held_out = _read_vl_sets(name, n_train, n_eval, data=data, instruction=instruction,
                                    max_pixels=max_pixels, hub=hub)
    return train, drop_same_slices(train, held_out)


def _read_vl_sets(name: str, n_train: int, n_eval: int, *, data: str | None, instruction: str,
                  max_pixels: int | None, hub: str | None) -> tuple[VLSet, VLSet]:
    """(train, held-out) as read: from a local ``data`` path, the hub, or the offline samples."""
    if name not in VL_SOURCES:
        raise CourseError(f"Unknown vision-language dataset {name!r}: choose one of {', '.join(VL_SOURCES)} "
                          "(its schema), and give a local copy as DATA.")
    source = VL_SOURCES[name]
    if data:
        if not is_local_path(data):
            raise CourseError(f"DATA = {data!r} is not a local file or folder: give a path, or set "
                              f"DATA = None to read {name} from the hub.")
        location = locate(data)
        train_rows, eval_rows = read_local_vl_rows(location.path, source, n_train, n_eval)
        return (vl_examples(train_rows, source, instruction=instruction, max_pixels=max_pixels,
                            origin=location.origin),
                vl_examples(eval_rows, source, instruction=instruction, max_pixels=max_pixels,
                            origin=location.origin))
    eval_split, eval_start = (source.splits[-1], 0) if len(source.splits) > 1 else (source.splits[0], n_train)
    train_rows = _hub_rows(source, source.splits[0], 0, n_train, hub)
    if train_rows is None:
        origin = "offline samples (data/vl)"
        train = vl_examples(read_offline_vl_rows("train")[:n_train], VL_OFFLINE, instruction=instruction,
                            max_pixels=max_pixels, origin=origin)
        held_out = vl_examples(read_offline_vl_rows("test")[:n_eval], VL_OFFLINE, instruction=instruction,
                               max_pixels=max_pixels, origin=origin)
        return train, held_out
    eval_rows = _hub_rows(source, eval_split, eval_start, n_eval, hub) or []
    return (vl_examples(train_rows, source, instruction=instruction, max_pixels=max_pixels),
            vl_examples(eval_rows, source, instruction=instruction, max_pixels=max_pixels))


SAME_SLICE_SKIP = "same slice as a training image"  # the reason counted in VLSet.skipped


def drop_same_slices(train: VLSet, held_out: VLSet) -> VLSet:
    """``held_out`` without the images that show the same slice as a training image, even in another
    window, size or flip (``helpers.images.near_duplicates``): scored, they would measure memory, not
    reading. Each is counted in ``skipped`` and named, with its training twin, in one printed sentence."""
    from helpers.images import near_duplicates

    if not train.examples or not held_out.examples:
        return held_out
    pairs = near_duplicates([ex["images"][0] for ex in train.examples],
                            [ex["images"][0] for ex in held_out.examples])
    twins = {j: train.examples[i]["id"] for i, j in pairs}  # held-out index -> training id
    named = "; ".join(f"{held_out.examples[j]['id']} shows the same slice as training image {twin}"
                      for j, twin in twins.items())
    if not twins:
        print(f"Checked {_images(len(held_out), 'held-out')} against {_images(len(train), 'training')}: "
              "none shows the same slice as a training image.")
        return held_out
    if len(twins) == len(held_out):
        raise CourseError(f"Every held-out image shows the same slice as a training image ({named}): give "
                          "held-out images of other patients or slices, such as the dataset's test split.")
    print(f"{_images(len(twins), 'held-out')} dropped: {named}.")
    kept = [ex for j, ex in enumerate(held_out.examples) if j not in twins]
    return VLSet(kept, held_out.origin, {**held_out.skipped, SAME_SLICE_SKIP: len(twins)})


def _images(n: int, kind: str) -> str:
    """'1 held-out image', '4 training images'."""
    return f"{n} {kind} image{'' if n == 1 else 's'}"
