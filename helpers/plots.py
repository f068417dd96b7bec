"""The course's plots. Each function returns a matplotlib Figure with a title, axis labels and units."""

from __future__ import annotations

from collections.abc import Mapping

from matplotlib.figure import Figure

# Figures are built without pyplot: nothing global to close, and a notebook shows each one once.

# --- GRPO plots (06) --------------------------------------------------------------------------


def plot_grpo_history(history, weights: Mapping[str, float] | None = None, max_tokens: int | None = None,
                      title: str = "GRPO training"):
    """Four panels from ``helpers.grpo.reward_history``: each reward's mean, the total reward (± one
    standard deviation across the batch), the KL divergence from the reference, and completion length."""
    fig = Figure(figsize=(11, 7))
    (rewards_ax, total_ax), (kl_ax, length_ax) = fig.subplots(2, 2, sharex=True)
    steps = list(history.index) if len(history) else []
    names = [c for c in history.columns if c.endswith("_reward")] if len(history) else []
    for name in names:
        weight = f" (weight {weights[name]:.2f})" if weights and name in weights else ""
        rewards_ax.plot(steps, history[name], marker="o", markersize=3,
                        label=name.removesuffix("_reward") + weight)
    rewards_ax.set(title="Each reward's mean", ylabel="reward (its own scale)")
    if names:
        rewards_ax.legend(fontsize=8)
    if "reward" in history:
        total = history["reward"]
        total_ax.plot(steps, total, marker="o", markersize=3, color="black")
        if "reward_std" in history:
            spread = history["reward_std"].fillna(0)
            total_ax.fill_between(steps, total - spread, total + spread, alpha=0.2, color="grey",
                                  label="± 1 std across completions")
            total_ax.legend(fontsize=8)
    total_ax.set(title="Total reward (weighted sum)", ylabel="reward")
    if "kl" in history:
        kl_ax.plot(steps, history["kl"], marker="o", markersize=3, color="tab:red")
    else:
        kl_ax.text(0.5, 0.5, "no KL logged (beta = 0)", ha="center", va="center", transform=kl_ax.transAxes)
    kl_ax.set(title="KL divergence from the reference model", xlabel="step", ylabel="KL (nats per token)")
    if "completions/mean_length" in history:
        length_ax.plot(steps, history["completions/mean_length"], marker="o", markersize=3, color="tab:green",
                       label="mean length")
    if max_tokens:
        length_ax.axhline(max_tokens, color="black", linestyle="--", label=f"limit {max_tokens}")
    length_ax.set(title="Completion length", xlabel="step", ylabel="length (tokens)")
    length_ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_before_after_rewards(before: Mapping[str, float], after: Mapping[str, float],
                              title: str = "Held-out prompts: mean reward before and after GRPO"):
    """Grouped bars: each reward's mean (and the total) on the same held-out prompts, before and after."""
    names = [n for n in before if n in after]
    fig = Figure(figsize=(8, 3.8))
    ax = fig.subplots()
    xs = range(len(names))
    for offset, (label, scores) in zip((-0.2, 0.2), (("before", before), ("after", after)), strict=True):
        bars = ax.bar([x + offset for x in xs], [scores[n] for n in names], width=0.4, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(list(xs), [n.removesuffix("_reward") for n in names])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set(title=title, ylabel="mean reward (greedy decoding)")
    ax.legend()
    fig.tight_layout()
    return fig
