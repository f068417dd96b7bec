"""The course's plots. Each function returns a matplotlib Figure with a title, axis labels and units."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

# --- Vision-language plots (05) -----------------------------------------------------------------


def _vl_figure(width: float, height: float):
    """A new figure, closed in pyplot so that a notebook shows it once: as the value we return."""
    import matplotlib.pyplot as plt  # pyplot sets up the notebook's image display

    fig = plt.figure(figsize=(width, height))
    plt.close(fig)
    return fig


def _wrap(text: str, width: int, max_lines: int) -> str:
    lines = textwrap.wrap(text or "(empty)", width)
    return "\n".join(lines[:max_lines] + (["…"] if len(lines) > max_lines else []))


def show_vl_examples(images: Sequence, reports: Sequence[str], titles: Sequence[str] = (), columns: int = 4,
                     title: str = "Image + report pairs"):
    """A grid of images, each with the start of its report underneath."""
    n = len(images)
    rows = max(1, -(-n // columns))
    fig = _vl_figure(3.2 * columns, 4.2 * rows)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for k, ax in enumerate(axes):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(images[k])
        ax.set_title(titles[k] if k < len(titles) else f"example {k + 1}", fontsize=9)
        ax.text(0.5, -0.04, _wrap(reports[k], 38, 6), transform=ax.transAxes, ha="center", va="top",
                fontsize=7.5)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def show_caption_comparison(images: Sequence, references: Sequence[str], before: Sequence[str],
                            after: Sequence[str], scores_before: Sequence[float] = (),
                            scores_after: Sequence[float] = (), title: str = "Held-out images: base vs SFT"):
    """One row per image: the image, then the reference report, the base model's and the SFT model's."""
    n = len(images)
    fig = _vl_figure(15, 3.3 * n)
    axes = fig.subplots(n, 4, squeeze=False, gridspec_kw={"width_ratios": [1.1, 1.6, 1.6, 1.6]})
    for k in range(n):
        axes[k, 0].imshow(images[k])
        axes[k, 0].set_title(f"held-out image {k + 1}", fontsize=9)
        columns = [("reference report", references[k], None),
                   ("base model", before[k], scores_before[k] if k < len(scores_before) else None),
                   ("after SFT", after[k], scores_after[k] if k < len(scores_after) else None)]
        for ax, (label, text, score) in zip(axes[k, 1:], columns, strict=True):
            heading = label if score is None else f"{label} · ROUGE-L {score:.2f}"
            ax.set_title(heading, fontsize=9, loc="left")
            ax.text(0.0, 1.0, _wrap(text, 44, 11), transform=ax.transAxes, va="top", fontsize=8,
                    family="monospace")
        for ax in axes[k]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_vl_loss(points: Sequence[tuple[int, float]], title: str = "Vision-language SFT loss"):
    """Training loss (on the report tokens) against optimizer step."""
    fig = _vl_figure(7, 3.5)
    ax = fig.subplots()
    if points:
        steps, losses = zip(*points, strict=True)
        ax.plot(steps, losses, marker="o", markersize=3)
        for step, loss in ((steps[0], losses[0]), (steps[-1], losses[-1])):
            ax.annotate(f"{loss:.2f}", (step, loss), textcoords="offset points", xytext=(4, 4))
    else:
        ax.text(0.5, 0.5, "no loss logged yet", ha="center", va="center", transform=ax.transAxes)
    ax.set(title=title, xlabel="optimizer step", ylabel="cross-entropy loss (nats / report token)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_caption_scores(before: dict[str, float], after: dict[str, float],
                        title: str = "Held-out reports: base vs SFT"):
    """Side-by-side bars of each caption score (0 to 1) before and after fine-tuning."""
    names = list(before)
    fig = _vl_figure(6, 3.5)
    ax = fig.subplots()
    width = 0.38
    for offset, (label, values) in zip((-width / 2, width / 2), (("base", before), ("after SFT", after)),
                                       strict=True):
        bars = ax.bar([i + offset for i in range(len(names))], [values[n] for n in names], width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names])
    ax.set(title=title, ylabel="score (0 to 1, higher is better)", ylim=(0, 1.05))
    ax.legend()
    fig.tight_layout()
    return fig
