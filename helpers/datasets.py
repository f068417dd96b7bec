"""The course's datasets: each real dataset's schema mapped to one internal form, with offline samples.

Every loader takes the real dataset's hub id. With a hub in reach it reads the real data; offline
it reads the samples in ``data/``, written in the same schema and read through the same mapping.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from helpers.errors import CourseError

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


# --- Vision-language sets (05) ------------------------------------------------------------------
#
# Image + report pairs become a two-turn chat: the user turn holds the image and the instruction,
# the assistant turn holds the report. That is the form the chat template, the collator and
# generation all read.

VL_INSTRUCTION = ("You are a radiologist. Describe this medical image: the imaging modality, the view, "
                  "the anatomy shown and any abnormal findings.")
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


VL_SOURCES: dict[str, VLSource] = {
    # 1,978 train / 327 test radiology images with captions, sampled from ROCOv2 (PubMed Central).
    "unsloth/Radiology_mini": VLSource(
        "unsloth/Radiology_mini", None, ("train", "test"), image="image", caption="caption", id="image_id",
        stream=False, licence="CC BY-NC 2.0 (dataset card)"),
    # The demo subset (~162k rows) of MedTrinity-25M; gated: accept its terms on the hub page first.
    "UCSC-VLAA/MedTrinity-25M": VLSource(
        "UCSC-VLAA/MedTrinity-25M", "25M_demo", ("train",), image="image", caption="caption", id="id",
        stream=True, licence="see the dataset card (gated, research use)"),
}

# The offline samples in data/vl/ use Radiology_mini's columns, whichever dataset was asked for.
VL_OFFLINE = VLSource("data/vl", None, ("train", "test"), image="image", caption="caption", id="image_id",
                      stream=False, licence="images: see data/vl/README.md; reports: Apache-2.0")


@dataclass
class VLSet:
    """Image + report examples ready for training, and what was skipped on the way."""

    examples: list[dict]  # {"id", "messages", "images", "report"}
    origin: str  # the hub id, or "offline samples (data/vl)"
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count

    def __len__(self) -> int:
        return len(self.examples)

    def summary(self) -> str:
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items()))
        return (f"{len(self.examples)} image + report pairs from {self.origin}; skipped {skipped}"
                + (f" ({reasons})" if reasons else ""))


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
        report = str(row.get(source.caption) or "").strip()
        if not report:
            skipped["no report"] = skipped.get("no report", 0) + 1
            continue
        try:
            image = prepare_image(row.get(source.image), max_pixels or DEFAULT_MAX_PIXELS)
        except UnusableImage as err:
            skipped[str(err)] = skipped.get(str(err), 0) + 1
            continue
        examples.append({"id": str(row.get(source.id, len(examples))), "images": [image], "report": report,
                         "messages": vl_messages(report, instruction)})
    return VLSet(examples, origin or source.hub_id, skipped)


def read_offline_vl_rows(split: str, folder: Path = VL_OFFLINE_DIR) -> list[dict]:
    """The offline samples of a split, in Radiology_mini's schema; the image column holds a file path."""
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        raise CourseError(f"No offline samples at {path}: the course's data/vl folder is incomplete.")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for row in rows:
        row["image"] = str(folder / row["image"])
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
                 instruction: str = VL_INSTRUCTION, max_pixels: int | None = None,
                 hub: str | None = None) -> tuple[VLSet, VLSet]:
    """(train, held-out) image + report sets of a real dataset, or of the offline samples when offline.

    Held-out rows come from the dataset's test split where it has one, else from the rows after
    the training rows, so no image is in both.
    """
    if name not in VL_SOURCES:
        raise CourseError(f"Unknown vision-language dataset {name!r}: choose one of {', '.join(VL_SOURCES)}.")
    source = VL_SOURCES[name]
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
