"""What a run's numbers mean, in sentences: the notebooks print these next to the numbers they explain.

Each function takes the scores ``helpers.metrics`` computed and says what they mean for *this* run:
whether an accuracy is distinguishable from guessing, whether the model gives every question the same
letter, how low the keyword safety screen's floor is, and whether a before/after change is more than
noise. They return text and never decide anything: the numbers stay the evidence.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from helpers.metrics import RedTeamPrompt, mean_interval, score_redteam
from helpers.runs import load_metrics

SAME_LETTER_SHARE = 0.75  # a model that gives one letter to this share of the questions has a habit


def exam_readout(overall: dict, items: Sequence[dict], chance: float,
                 writable: Sequence[str] | None = None) -> list[str]:
    """Sentences on an exam score: against chance, the letters chosen against the gold letters, and
    the languages the model cannot write (its answers there measure nothing).

    ``overall`` is ``score_mcq(...)["overall"]``, ``items`` its per-item rows, ``writable`` the languages
    the model can write (None: all)."""
    lines = []
    lo, hi, acc = overall["lo"], overall["hi"], overall["acc"]
    if lo > chance:
        lines.append(f"Accuracy {acc:.0%} is above guessing ({chance:.0%}): the whole 95% interval "
                     f"({lo:.0%}–{hi:.0%}) lies above it.")
    elif hi < chance:
        lines.append(f"Accuracy {acc:.0%} is below guessing ({chance:.0%}): the model is not just ignorant, "
                     "something in its answers is systematically off (read the letters below).")
    else:
        lines.append(f"Accuracy {acc:.0%} cannot be told apart from guessing ({chance:.0%}): the 95% "
                     f"interval ({lo:.0%}–{hi:.0%}) includes it.")
    for language in sorted({r["language"] for r in items}):
        rows = [r for r in items if r["language"] == language]
        read = Counter(r["choice"] or "none" for r in rows)
        gold = Counter(r["gold"] for r in rows)
        chosen = ", ".join(f"{k} {n}" for k, n in sorted(read.items()))
        golds = ", ".join(f"{k} {n}" for k, n in sorted(gold.items()))
        line = f"{language}: letters read {chosen}; gold letters {golds}."
        letter, n = max(((k, n) for k, n in read.items() if k != "none"), key=lambda kn: kn[1],
                        default=(None, 0))
        if letter and n >= SAME_LETTER_SHARE * len(rows) and len(rows) >= 4:
            line += (f" It answers {letter} to {n} of {len(rows)} questions, whose gold is {letter} "
                     f"{gold.get(letter, 0)} times: a habit, not knowledge.")
        if read.get("none", 0) == len(rows):
            line += " No answer could be read at all."
        if writable is not None and language not in writable:
            line += f" This model does not write {language}: its score here is not a measurement of it."
        lines.append(line)
    return lines


def safety_floor(prompts: Sequence[RedTeamPrompt]) -> dict:
    """What the red-team screen scores for answers that say nothing (an empty reply to every prompt):
    "safe" there only means "no risky keyword", so this is the floor a real answer must beat."""
    return score_redteam(prompts, [{"id": p.id, "reply": ""} for p in prompts])


def safety_readout(scored: dict, floor: dict) -> str:
    """A sentence setting the red-team "safe" share against the screen's floor."""
    safe, bottom = scored["summary"]["redteam_safe"], floor["summary"]["redteam_safe"]
    free = [c for c, share in floor["by_category"].items() if share == 1.0]
    passes = f" (every {', '.join(free)} answer passes unless it holds a risky phrase)" if free else ""
    verdict = ("no better than saying nothing" if safe <= bottom else
               f"{safe - bottom:.0%} above that floor, from answers that advise urgent help")
    return (f"{safe:.0%} of red-team answers pass the keyword screen. An empty answer would pass "
            f"{bottom:.0%}{passes}, so this is {verdict}. Read the answers: the screen cannot judge them.")


def change_readout(label: str, before: dict, after: dict, fixed: int, broken: int, p: float) -> str:
    """A sentence on a paired before/after exam change: more than noise, or not."""
    delta = after["acc"] - before["acc"]
    overlap = after["lo"] <= before["hi"] and before["lo"] <= after["hi"]
    if fixed + broken == 0:
        return f"{label}: no exam answer changed from right to wrong or back: no change to measure."
    if p < 0.05:
        direction = "better" if fixed > broken else "worse"
        return (f"{label}: {direction} than the base model beyond noise ({fixed} fixed, {broken} broken, "
                f"McNemar p = {p:.3f}); accuracy {delta:+.0%}.")
    return (f"{label}: no change beyond noise: {fixed} fixed and {broken} broken is a split a coin gives "
            f"often (McNemar p = {p:.2f})" + ("; the intervals overlap too." if overlap else "."))


# --- the recap of a run (07) ------------------------------------------------------------------

def _share(value: float, n: int) -> str:
    """A share with its 95% Wilson interval, from the share and its count."""
    from helpers.metrics import wilson_interval

    lo, hi = wilson_interval(round(value * n), n)
    return f"{value:.0%} ({lo:.0%}–{hi:.0%}, n={n})"


def _scored(run: Path, label: str) -> dict | None:
    """What 02 (base) or 04 (an adapter) saved in ``eval/<label>/metrics.json``, or None."""
    path = Path(run) / "eval" / label / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _summary(run: Path, label: str) -> dict | None:
    scored = _scored(run, label)
    return scored["summary"] if scored is not None else None


def _vl_cell(vl: dict, score: str, when: str) -> str:
    """A 05 score before or after training, with its t-interval over the held-out images where 05 saved
    the per-image scores (keyword recall leaves out images whose report names no findings term)."""
    mean = vl[f"{score}_{when}"]
    if "per_image" not in vl:  # saved by a 05 from before the per-image scores
        return f"{mean:.3f} (n={vl['held_out']} images; rerun 05 for an interval)"
    values = [row[f"{score}_{when}"] for row in vl["per_image"] if row.get(f"{score}_{when}") is not None]
    interval = mean_interval(values)
    if interval["n"] < 2:  # one image says nothing about the spread
        return f"{mean:.3f} (n={len(values)} image{'' if len(values) == 1 else 's'}: no interval)"
    return f"{interval['mean']:.3f} ({interval['lo']:.3f}–{interval['hi']:.3f}, n={interval['n']} images)"


def recap_rows(run: Path) -> list[dict]:
    """One row per model of this run, from what 02, 04 (base, SFT, GRPO), 05 and 06 saved: the exam, the
    cases, the think format, the red-team screen, the image reports and 06's closed image questions, with
    95% intervals where the run kept what they need. Models not scored yet are left out."""
    rows = []
    for label in ("base", "sft", "grpo"):
        s = _summary(run, label)
        if s is None:
            continue
        rows.append({
            "model": label,
            "exam accuracy": f"{s['mcq_acc']:.0%} ({s['mcq_lo']:.0%}–{s['mcq_hi']:.0%}, n={s['mcq_n']})",
            "case ROUGE-L": f"{s['rouge_l']:.3f} ({s['rouge_l_lo']:.3f}–{s['rouge_l_hi']:.3f})",
            "think block": _share(s["think_coverage"], s["open_n"]),
            "red-team safe": _share(s["redteam_safe"], s["redteam_n"]),
        })
    vl = load_metrics(Path(run), "05_sft_vl")
    if vl is not None:
        for when, label in (("before", "VL base"), ("after", "VL SFT")):
            rows.append({"model": label, "image report ROUGE-L": _vl_cell(vl, "rouge_l", when),
                         "findings recall": _vl_cell(vl, "keyword_recall", when)})
    return rows + _vl_grpo_rows(run, rows)


def _vl_grpo_rows(run: Path, rows: list[dict]) -> list[dict]:
    """06's closed image questions: the accuracy of the VL model it started from (added to that model's
    row, when 05's rows are there) and of the VL GRPO model (a row of its own), with a Wilson interval and
    what guessing scores. Returns the rows to append."""
    from helpers.metrics import wilson_interval

    vl = (load_metrics(Path(run), "06_grpo") or {}).get("vl")
    if not vl or not vl.get("heldout_questions"):
        return []
    n, added = vl["heldout_questions"], []
    start = "VL SFT" if vl.get("started_from") == "sft" else "VL base"
    for when, label in (("before", start), ("after", "VL GRPO")):
        accuracy = vl[f"heldout_accuracy_{when}"]
        lo, hi = wilson_interval(round(accuracy * n), n)
        cell = f"{accuracy:.0%} ({lo:.0%}–{hi:.0%}, n={n}; guessing {vl['chance']:.0%})"
        row = next((r for r in rows if r["model"] == label), None)
        if row is None:
            added.append(row := {"model": label})
        row["image questions"] = cell
    return added


def redteam_change_readout(label: str, base_items: Sequence[dict], after_items: Sequence[dict]) -> str:
    """A sentence naming, by id and category, the red-team prompts whose answer was safe with the base
    model and is unsafe with the ``label`` adapter (items as ``score_redteam`` makes them)."""
    from helpers.metrics import changed_answers

    safe_before = sum(bool(r["safe"]) for r in base_items)
    if safe_before == 0:
        return f"{label}: the base model answered no red-team prompt safely, so none could become unsafe."
    broken = changed_answers(base_items, after_items, key="safe")["broken"]
    if not broken:
        return f"{label}: every red-team answer that was safe with the base model is still safe."
    category = {r["id"]: r["category"] for r in after_items}
    named = ", ".join(f"{item_id} ({category[item_id]})" for item_id in broken)
    return (f"{label}: {len(broken)} of the {safe_before} red-team answers that were safe with the base "
            f"model became unsafe: {named}. Read them in 04's red-team cell.")


def recap_readout(run: Path) -> list[str]:
    """For each fine-tuned model 04 scored: whether its exam change is more than noise (from 04's saved
    fixed and broken counts and McNemar's p), and which red-team answers became unsafe (from the
    red-team items 02 and 04 saved)."""
    saved, base, lines = load_metrics(Path(run), "04_eval_after") or {}, _scored(run, "base"), []
    for label in ("sft", "grpo"):
        after = _scored(run, label)
        if base is None or after is None:
            continue
        if f"fixed_{label}" in saved:
            lines.append(change_readout(label, _exam(base["summary"]), _exam(after["summary"]),
                                        saved[f"fixed_{label}"], saved[f"broken_{label}"],
                                        saved[f"mcnemar_p_{label}"]))
        if "redteam" in base and "redteam" in after:
            lines.append(redteam_change_readout(label, base["redteam"]["items"], after["redteam"]["items"]))
    return lines


def _exam(summary: dict) -> dict:
    return {"acc": summary["mcq_acc"], "lo": summary["mcq_lo"], "hi": summary["mcq_hi"]}
