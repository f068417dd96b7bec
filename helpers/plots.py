"""The course's plots. Each function returns a matplotlib Figure with a title, labelled axes and units.

Chinese labels need a font with Chinese glyphs. Where one is installed (Noto Sans CJK, WenQuanYi,
SimHei, PingFang…) the plots use it; where none is (Colab, most Linux boxes) known exam and subject
names are shown in English instead of as empty boxes. ``apt install fonts-noto-cjk`` adds one.
"""

from __future__ import annotations

import textwrap
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache

CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei",
             "WenQuanYi Micro Hei", "SimHei", "Microsoft YaHei", "PingFang SC", "Heiti SC",
             "Arial Unicode MS", "AR PL UMing CN")
# CMB's exam types, classes and subjects, for plots on machines without a Chinese font.
TERMS_EN = {
    "医师考试": "Physician exam", "护理考试": "Nursing exam", "药师考试": "Pharmacist exam",
    "技师考试": "Technician exam", "专业知识考试": "Specialist knowledge", "医学考研": "Postgraduate exam",
    "执业医师": "Licensed physician", "规培结业": "Residency completion", "护士执业资格": "Nurse licensing",
    "执业西药师": "Licensed pharmacist", "执业中药师": "Licensed TCM pharmacist",
    "临床执业医师": "Clinical physician licensing", "公共卫生执业医师": "Public health physician licensing",
    "中医执业医师": "TCM physician licensing", "口腔执业医师": "Dental licensing",
    "中西医结合执业医师": "Integrated medicine licensing", "护士执业资格考试": "Nurse licensing exam",
    "内科": "Internal medicine", "外科": "Surgery", "儿科": "Paediatrics",
    "妇产科": "Obstetrics & gynaecology", "神经内科": "Neurology", "全科医学科": "General practice",
    "精神科": "Psychiatry", "皮肤科": "Dermatology", "麻醉科": "Anaesthesiology", "眼科": "Ophthalmology",
    "耳鼻咽喉科": "ENT", "骨科": "Orthopaedics", "急诊科": "Emergency medicine", "心血管内科": "Cardiology",
    "呼吸内科": "Respiratory medicine", "消化内科": "Gastroenterology", "肿瘤科": "Oncology",
    "放射科": "Radiology", "检验科": "Laboratory medicine", "康复医学科": "Rehabilitation",
    "口腔科": "Stomatology", "中医": "Traditional Chinese medicine",
}
MODEL_COLOURS = {"base": "#8c8c8c", "sft": "#1f77b4", "grpo": "#ff7f0e"}
LANGUAGE_COLOURS = {"zh": "#d62728", "en": "#1f77b4"}


@lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """The name of an installed font with Chinese glyphs, or None."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return next((name for name in CJK_FONTS if name in installed), None)


def label(text: str) -> str:
    """``text`` as a plot can show it: unchanged with a Chinese font, else in English where known."""
    if cjk_font() or text.isascii():
        return text
    return "/".join(TERMS_EN.get(part, part) for part in text.split("/"))


@contextmanager
def _style():
    import matplotlib.pyplot as plt

    font = cjk_font()
    rc = {"axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 100}
    if font:
        rc["font.sans-serif"] = [font, *plt.rcParams["font.sans-serif"]]
    with plt.rc_context(rc):
        yield


# A Chinese name with no English entry and no Chinese font shows as boxes; one warning per glyph
# per drawing would bury the notebook's output, so they are silenced.
warnings.filterwarnings("ignore", message="Glyph .* missing from font")


def _figure(width: float, height: float):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    plt.close(fig)  # returned, not shown twice: a notebook displays the Figure it gets back
    return fig, ax


def _colour(name: str, i: int) -> str:
    return MODEL_COLOURS.get(name.split()[0].lower(), f"C{i}")


# --- the evaluation data (01) --------------------------------------------------------------

def plot_subject_counts(items: Sequence, title: str = "Exam questions per subject"):
    """Horizontal bars: how many questions each subject has, split by language."""
    counts = Counter((i.subject, i.language) for i in items)
    totals = Counter(i.subject for i in items)
    subjects = sorted(totals, key=lambda s: (-totals[s], s))
    with _style():
        fig, ax = _figure(7.5, 0.3 * len(subjects) + 1.5)
        left = [0] * len(subjects)
        for language in sorted({lang for _, lang in counts}):
            values = [counts[s, language] for s in subjects]
            ax.barh([label(s) for s in subjects], values, left=left, label=language,
                    color=LANGUAGE_COLOURS.get(language))
            left = [a + b for a, b in zip(left, values, strict=True)]
        ax.invert_yaxis()
        ax.set(title=title, xlabel="questions (count)", ylabel="subject")
        ax.legend(title="language")
        fig.canvas.draw()  # lay out (and resolve fonts) now, inside the style
    return fig


def plot_lengths(lengths: Mapping[str, Sequence[int]], title: str = "Prompt length",
                 unit: str = "characters"):
    """Overlaid histograms of lengths, one per group (e.g. "exam · zh", "cases · en")."""
    with _style():
        fig, ax = _figure(7.5, 3.5)
        everything = [v for values in lengths.values() for v in values] or [0]
        low, high = min(everything), max(everything) + 1
        bins = [low + (high - low) * k / 30 for k in range(31)]  # the same bins for every group
        for i, (name, values) in enumerate(lengths.items()):
            if values:
                ax.hist(values, bins=bins, alpha=0.55, label=f"{name} (n={len(values)})", color=f"C{i}")
        ax.set(title=title, xlabel=f"length ({unit})", ylabel="items (count)")
        ax.legend()
        fig.canvas.draw()
    return fig


# --- scores (02, 04) -----------------------------------------------------------------------

def plot_accuracy(results: Mapping[str, Mapping], chance: float | None = None,
                  title: str = "Exam accuracy with 95% Wilson intervals"):
    """Bars of accuracy per model with error bars from each result's ``lo``/``hi``."""
    names = list(results)
    accs = [results[n]["acc"] for n in names]
    errors = [[a - results[n]["lo"] for n, a in zip(names, accs, strict=True)],
              [results[n]["hi"] - a for n, a in zip(names, accs, strict=True)]]
    with _style():
        fig, ax = _figure(1.6 * len(names) + 3, 3.8)
        bars = ax.bar(names, accs, yerr=errors, capsize=8, color=[_colour(n, i) for i, n in enumerate(names)])
        for bar, n in zip(bars, names, strict=True):
            r = results[n]
            ax.annotate(f"{r['acc']:.0%}\n({r.get('correct', '?')}/{r.get('n', '?')})",
                        (bar.get_x() + bar.get_width() / 2, r["hi"]), ha="center", va="bottom", fontsize=9)
        if chance is not None:
            ax.axhline(chance, ls="--", color="k", lw=1, label=f"random guessing ({chance:.0%})")
            ax.legend(loc="upper right")
        ax.set(title=title, ylabel="accuracy (share of questions)", ylim=(0, 1.15), xlabel="model")
        fig.canvas.draw()
    return fig


def plot_subject_changes(by_subject: Mapping[str, Mapping[str, Mapping]],
                         title: str = "Accuracy per subject, with 95% intervals"):
    """One row per subject, one dot per model (with its interval): where did a model gain or lose?"""
    models = list(by_subject)
    subjects = sorted({s for m in models for s in by_subject[m]})
    offset = 0.8 / max(len(models), 1)
    with _style():
        fig, ax = _figure(7.5, 0.45 * len(subjects) + 1.6)
        for i, model in enumerate(models):
            ys, xs, lo, hi = [], [], [], []
            for row, subject in enumerate(subjects):
                r = by_subject[model].get(subject)
                if r:
                    ys.append(row + (i - (len(models) - 1) / 2) * offset)
                    xs.append(r["acc"])
                    lo.append(r["acc"] - r["lo"])
                    hi.append(r["hi"] - r["acc"])
            ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", capsize=3, label=model, color=_colour(model, i))
        ax.set_yticks(range(len(subjects)), [f"{label(s)} (n={_n(by_subject, s)})" for s in subjects])
        ax.invert_yaxis()
        ax.set(title=title, xlabel="accuracy (share of questions)", xlim=(-0.02, 1.02), ylabel="subject")
        ax.legend(title="model", loc="lower right")
        fig.canvas.draw()
    return fig


def _n(by_subject: Mapping[str, Mapping[str, Mapping]], subject: str) -> int:
    return max(m[subject]["n"] for m in by_subject.values() if subject in m)


OPEN_METRICS = {"rouge_l": "ROUGE-L", "think_coverage": "think block",
                "emergency_coverage": "emergency advice", "risky_rate": "risky advice"}


def plot_open_scores(summaries: Mapping[str, Mapping], title: str = "Clinical cases: open-answer scores"):
    """Grouped bars: ROUGE-L (with its interval) and the think/emergency/risky shares, per model."""
    models = list(summaries)
    width = 0.8 / max(len(models), 1)
    with _style():
        fig, ax = _figure(8, 3.8)
        for i, model in enumerate(models):
            s = summaries[model]
            xs = [k + (i - (len(models) - 1) / 2) * width for k in range(len(OPEN_METRICS))]
            values = [s[key] for key in OPEN_METRICS]
            low = [s["rouge_l"] - s.get("rouge_l_lo", s["rouge_l"])] + [0] * (len(OPEN_METRICS) - 1)
            high = [s.get("rouge_l_hi", s["rouge_l"]) - s["rouge_l"]] + [0] * (len(OPEN_METRICS) - 1)
            ax.bar(xs, values, width, yerr=[low, high], capsize=4, label=model, color=_colour(model, i))
        ax.set_xticks(range(len(OPEN_METRICS)), list(OPEN_METRICS.values()))
        ax.set(title=title, ylabel="score or share of answers (0–1)", ylim=(0, 1.05),
               xlabel="metric (risky advice: lower is better)")
        ax.legend(title="model")
        fig.canvas.draw()
    return fig


# --- SFT plots (03) ---------------------------------------------------------------------------


def plot_length_histogram(lengths: dict[str, Sequence[int]], max_tokens: int, bins: int = 30):
    """Histogram of example lengths in tokens, one colour per group, with the length limit marked."""
    fig, ax = _figure(7, 3.5)  # through pyplot, which sets up the notebook's image display
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
    return fig


def plot_loss_curve(points: Sequence[tuple[int, float]], title: str = "SFT training loss",
                    held_out: Sequence[tuple[int, float]] = ()):
    """Training loss against optimizer step, from ``helpers.training.loss_curve``, and, when given, the
    loss on held-out examples (``loss_curve(..., "eval_loss")``): where it stops falling while the
    training loss goes on down, the model has begun to memorise its training set."""
    fig, ax = _figure(7, 3.5)
    curves = [(points, "training loss", "C0")] + ([(held_out, "held-out loss", "C1")] if held_out else [])
    for curve, name, colour in curves:
        if not curve:
            continue
        steps, losses = zip(*curve, strict=True)
        ax.plot(steps, losses, marker="o", markersize=3, color=colour, label=name)
        ax.annotate(f"{losses[0]:.2f}", (steps[0], losses[0]), textcoords="offset points", xytext=(4, 4))
        ax.annotate(f"{losses[-1]:.2f}", (steps[-1], losses[-1]), textcoords="offset points", xytext=(4, 4))
    if not points:
        ax.text(0.5, 0.5, "no loss logged yet", ha="center", va="center", transform=ax.transAxes)
    elif held_out:
        ax.legend()
    ax.set(title=title, xlabel="optimizer step", ylabel="cross-entropy loss (nats / token)")
    ax.grid(alpha=0.3)
    return fig


# --- GRPO (06) -----------------------------------------------------------------------------

def plot_grpo_history(history, weights: Mapping[str, float] | None = None, max_tokens: int | None = None,
                      title: str = "GRPO training"):
    """Four panels from ``helpers.grpo.reward_history``: each reward's mean, the total reward (± one
    standard deviation across the step's answers), the KL divergence from the reference, and the
    answer length against the limit."""
    import matplotlib.pyplot as plt

    steps = list(history.index)
    names = [c for c in history.columns if c.endswith("_reward")]
    with _style():
        fig, ((rewards_ax, total_ax), (kl_ax, length_ax)) = plt.subplots(
            2, 2, figsize=(11, 7), sharex=True, layout="constrained")
        plt.close(fig)  # returned, not shown twice
        for i, name in enumerate(names):
            weight = f" (weight {weights[name]:.2f})" if weights and name in weights else ""
            rewards_ax.plot(steps, history[name], marker="o", markersize=3, color=f"C{i}",
                            label=name.removesuffix("_reward") + weight)
        rewards_ax.set(title="Each reward's mean per step", ylabel="reward (its own scale)")
        if names:
            rewards_ax.legend(fontsize=8)
        if "reward" in history:
            total_ax.plot(steps, history["reward"], marker="o", markersize=3, color="black", label="mean")
            if "reward_std" in history:
                spread = history["reward_std"].fillna(0)
                total_ax.fill_between(steps, history["reward"] - spread, history["reward"] + spread,
                                      alpha=0.2, color="grey", label="± 1 std across answers")
            total_ax.legend(fontsize=8)
        total_ax.set(title="Total reward", ylabel="reward (weighted sum of the rewards)")
        if "kl" in history:
            kl_ax.plot(steps, history["kl"], marker="o", markersize=3, color="tab:red")
        else:
            kl_ax.text(0.5, 0.5, "no KL logged (beta = 0)", ha="center", va="center",
                       transform=kl_ax.transAxes)
        kl_ax.set(title="KL divergence from the reference", xlabel="step", ylabel="KL (nats per token)")
        if "completions/mean_length" in history:
            length_ax.plot(steps, history["completions/mean_length"], marker="o", markersize=3,
                           color="tab:green", label="mean length")
        if max_tokens:
            length_ax.axhline(max_tokens, ls="--", color="k", lw=1, label=f"limit ({max_tokens})")
        length_ax.set(title="Answer length", xlabel="step", ylabel="length (tokens)")
        length_ax.legend(fontsize=8)
        fig.suptitle(title)
        fig.canvas.draw()
    return fig


def plot_before_after_rewards(before: Mapping[str, float], after: Mapping[str, float],
                              labels: Sequence[str] = ("before", "GRPO"),
                              title: str = "Held-out questions: mean reward before and after GRPO"):
    """Grouped bars: each reward's mean (and the total) on the same held-out questions, before and after."""
    names = [n for n in before if n in after]
    with _style():
        fig, ax = _figure(8, 3.8)
        for i, (offset, name, scores) in enumerate(zip((-0.2, 0.2), labels, (before, after), strict=True)):
            bars = ax.bar([k + offset for k in range(len(names))], [scores[n] for n in names], 0.4,
                          label=name, color=_colour(name, i))
            ax.bar_label(bars, fmt="%.2f", fontsize=8)
        ax.set_xticks(range(len(names)), [n.removesuffix("_reward") for n in names])
        ax.axhline(0, color="k", lw=0.8)
        ax.set(title=title, xlabel="reward", ylabel="mean over the questions (greedy answers)")
        ax.legend(title="model")
        fig.canvas.draw()
    return fig


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
                            after: Sequence[str], scores_before: Sequence[float | str] = (),
                            scores_after: Sequence[float | str] = (),
                            title: str = "Held-out images: base vs SFT",
                            headings: tuple[str, str, str] = ("reference report", "base model", "after SFT"),
                            score_name: str = "ROUGE-L"):
    """One row per image: the image, then the reference report, the base model's and the SFT model's.

    ``headings`` name the three text columns; a score is a number (shown as ``score_name`` 0.00) or a
    word ("right", "wrong") shown as it is."""
    n = len(images)
    fig = _vl_figure(15, 3.3 * n)
    axes = fig.subplots(n, 4, squeeze=False, gridspec_kw={"width_ratios": [1.1, 1.6, 1.6, 1.6]})
    for k in range(n):
        axes[k, 0].imshow(images[k])
        axes[k, 0].set_title(f"held-out image {k + 1}", fontsize=9)
        columns = [(headings[0], references[k], None),
                   (headings[1], before[k], scores_before[k] if k < len(scores_before) else None),
                   (headings[2], after[k], scores_after[k] if k < len(scores_after) else None)]
        for ax, (label, text, score) in zip(axes[k, 1:], columns, strict=True):
            heading = (label if score is None else f"{label} · {score}" if isinstance(score, str)
                       else f"{label} · {score_name} {score:.2f}")
            ax.set_title(heading, fontsize=9, loc="left")
            ax.text(0.0, 1.0, _wrap(text, 44, 11), transform=ax.transAxes, va="top", fontsize=8,
                    family="monospace")
        for ax in axes[k]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_before_after_scores(before: dict[str, float], after: dict[str, float],
                             title: str = "Held-out reports: base vs SFT",
                             labels: tuple[str, str] = ("base", "after SFT")):
    """Side-by-side bars of each score (0 to 1) on the same held-out items, before and after fine-tuning."""
    names = list(before)
    fig, ax = _figure(6, 3.5)
    width = 0.38
    for offset, label, values in zip((-width / 2, width / 2), labels, (before, after), strict=True):
        bars = ax.bar([i + offset for i in range(len(names))], [values[n] for n in names], width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names])
    ax.set(title=title, ylabel="score (0 to 1, higher is better)", ylim=(0, 1.05))
    ax.legend()
    return fig
