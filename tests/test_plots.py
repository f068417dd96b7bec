import pytest
from matplotlib.figure import Figure

from helpers import plots
from helpers.datasets import MCQItem
from helpers.metrics import accuracy, accuracy_by

SUBJECTS = [("zh", "内科"), ("zh", "内科"), ("zh", "外科"), ("en", "USMLE step1")]
ITEMS = [MCQItem(f"q{i}", "cmb-exam", lang, "", subject, "?", {"A": "a", "B": "b"}, "A")
         for i, (lang, subject) in enumerate(SUBJECTS)]


def _texts(fig: Figure):
    ax = fig.axes[0]
    return ax.get_title(), ax.get_xlabel(), ax.get_ylabel()


def test_every_plot_is_a_titled_figure_with_labelled_axes():
    before = {"acc": 0.25, "lo": 0.05, "hi": 0.6, "n": 8, "correct": 2}
    summary = {"rouge_l": 0.2, "rouge_l_lo": 0.1, "rouge_l_hi": 0.3, "think_coverage": 0.0,
               "emergency_coverage": 0.5, "risky_rate": 0.25}
    figures = [
        plots.plot_subject_counts(ITEMS),
        plots.plot_lengths({"exam · zh": [10, 20, 30], "exam · en": [300, 400]}),
        plots.plot_accuracy({"base": before, "sft": before}, chance=0.25),
        plots.plot_subject_changes({"base": {"内科": before}, "sft": {"内科": before, "外科": before}}),
        plots.plot_open_scores({"base": summary, "sft": summary}),
    ]
    for fig in figures:
        assert isinstance(fig, Figure)
        title, xlabel, ylabel = _texts(fig)
        assert title and xlabel and ylabel
        assert "(" in xlabel + ylabel  # a unit or what is counted


def test_subject_counts_stack_the_languages():
    fig = plots.plot_subject_counts(ITEMS)
    ax = fig.axes[0]
    widths = {(round(p.get_y(), 1), p.get_width()) for p in ax.patches}
    assert sum(w for _, w in widths) == len(ITEMS)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["en", "zh"]


def test_accuracy_bars_have_the_accuracies_and_wilson_error_bars():
    preds, golds = ["A", "B", None, "A"], ["A", "A", "A", "A"]
    result = accuracy(preds, golds)
    fig = plots.plot_accuracy({"base": result}, chance=0.25)
    ax = fig.axes[0]
    [bar] = ax.patches
    assert bar.get_height() == pytest.approx(0.5)
    [caps] = [c for c in ax.containers if hasattr(c, "lines")]
    segment = caps.lines[2][0].get_segments()[0]
    assert segment[0][1] == pytest.approx(result["lo"]) and segment[1][1] == pytest.approx(result["hi"])


def test_subject_changes_show_each_subject_once_with_its_size():
    golds = ["A"] * 4
    by = {"base": accuracy_by(["A", "B", "A", "B"], golds, [i.subject for i in ITEMS]),
          "sft": accuracy_by(["A", "A", "A", "A"], golds, [i.subject for i in ITEMS])}
    fig = plots.plot_subject_changes(by)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(labels) == 3 and any("(n=2)" in label for label in labels)


def test_chinese_names_are_translated_when_no_chinese_font(monkeypatch):
    monkeypatch.setattr(plots, "cjk_font", lambda: None)
    assert plots.label("内科") == "Internal medicine"
    assert plots.label("医师考试/规培结业") == "Physician exam/Residency completion"
    assert plots.label("USMLE step1") == "USMLE step1" and plots.label("罕见科") == "罕见科"
    monkeypatch.setattr(plots, "cjk_font", lambda: "Noto Sans CJK SC")
    assert plots.label("内科") == "内科"
