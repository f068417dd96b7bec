"""The course's plots. Each function returns a matplotlib Figure with a title, axis labels and units."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure

# Figures are built without pyplot: nothing global to close, and a notebook shows each one once.

# --- SFT plots (03) ---------------------------------------------------------------------------


def plot_length_histogram(lengths: dict[str, Sequence[int]], max_tokens: int, bins: int = 30):
    """Histogram of example lengths in tokens, one colour per group, with the length limit marked."""
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    every = [n for values in lengths.values() for n in values]
    top = max([*every, max_tokens]) if every else max_tokens
    edges = [top * k / bins for k in range(bins + 1)]
    for label, values in lengths.items():
        ax.hist(list(values), bins=edges, alpha=0.6, label=f"{label} (n={len(values)})")
    over = sum(n > max_tokens for n in every)
    ax.axvline(max_tokens, color="black", linestyle="--", label=f"limit {max_tokens} ({over} over)")
    ax.set(title="Training example length (prompt + completion)", xlabel="length (tokens)",
           ylabel="examples")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_loss_curve(points: Sequence[tuple[int, float]], title: str = "SFT training loss"):
    """Training loss against optimizer step, from ``helpers.training.loss_curve``."""
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    if points:
        steps, losses = zip(*points, strict=True)
        ax.plot(steps, losses, marker="o", markersize=3)
        ax.annotate(f"{losses[0]:.2f}", (steps[0], losses[0]), textcoords="offset points", xytext=(4, 4))
        ax.annotate(f"{losses[-1]:.2f}", (steps[-1], losses[-1]), textcoords="offset points", xytext=(4, 4))
    else:
        ax.text(0.5, 0.5, "no loss logged yet", ha="center", va="center", transform=ax.transAxes)
    ax.set(title=title, xlabel="optimizer step", ylabel="cross-entropy loss (nats / token)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
