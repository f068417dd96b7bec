import pandas as pd
from matplotlib.figure import Figure

from helpers import plots
from helpers.grpo import reward_history

LOG = [{"step": s, "reward": 0.1 * s, "reward_std": 0.05, "kl": 0.001 * s, "completions/mean_length": 40 - s,
        "rewards/format_reward/mean": 0.2 * s, "rewards/accuracy_reward/mean": 0.0} for s in (1, 2, 3)]


def test_the_grpo_history_has_four_labelled_panels():
    fig = plots.plot_grpo_history(reward_history(LOG), {"format_reward": 0.25, "accuracy_reward": 0.5},
                                  max_tokens=48)
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    for ax in fig.axes:
        assert ax.get_title() and ax.get_ylabel() and "(" in ax.get_ylabel()  # a unit or a scale
    rewards_ax, _, kl_ax, length_ax = fig.axes
    assert [t.get_text() for t in rewards_ax.get_legend().get_texts()] == ["format (weight 0.25)",
                                                                          "accuracy (weight 0.50)"]
    assert list(kl_ax.lines[0].get_ydata()) == [0.001, 0.002, 0.003]
    assert any(line.get_ydata()[0] == 48 for line in length_ax.lines)  # the limit is drawn
    assert kl_ax.get_xlabel() == length_ax.get_xlabel() == "step"


def test_a_history_without_kl_says_so():
    fig = plots.plot_grpo_history(reward_history([{k: v for k, v in e.items() if k != "kl"} for e in LOG]))
    assert "beta = 0" in fig.axes[2].texts[0].get_text()


def test_before_and_after_bars_share_the_reward_names():
    fig = plots.plot_before_after_rewards({"format_reward": 0.0, "total": -0.1},
                                          {"format_reward": 0.5, "total": 0.2}, labels=("SFT", "GRPO"))
    ax = fig.axes[0]
    assert ax.get_title() and "(" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["format", "total"]
    assert [round(p.get_height(), 2) for p in ax.patches] == [0.0, -0.1, 0.5, 0.2]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["SFT", "GRPO"]


def test_reward_history_is_empty_without_reward_logs():
    assert reward_history([]).equals(pd.DataFrame())
