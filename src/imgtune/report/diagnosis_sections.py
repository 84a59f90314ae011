"""The report's sections from a run's diagnosis: what to do next, what more images would buy, and the
images that look mislabelled."""

from __future__ import annotations

from ..diagnose.learning_curve import forecast
from . import plots
from .html import esc, figure, gallery, section, table, tile

SHOWN_ISSUES = 12


def next_steps_section(steps: list[dict]) -> str:
    if not steps:
        return section("What to do next", "<p>Nothing stands out: every class is within a few points of the "
                                          "others and no check found a problem.</p>")
    items = "".join(f"<li><b>{esc(s['text'])}.</b><br><span class=\"note\">{esc(s['evidence'])}</span></li>"
                    for s in steps)
    return section("What to do next", f"<ol class=\"next\">{items}</ol>",
                   note="Worst first, ordered by a rough size of each problem in points of accuracy on these "
                        "images: a ranking, not a promise.")


def learning_curve_section(curve: dict | None, metrics: dict) -> str:
    if not curve:
        return ""
    now = {c: v["accuracy"] for c, v in metrics["per_class"].items()}
    rows = forecast(curve, metrics["classes"], now)
    table_rows = [[r["class"], f"{r['images']:,.0f}", f"{r['now']:.3f}", f"{r['forecast']:.3f}",
                   f"{r['gain'] * 100:+.1f}", f"{r['exponent']:.2f}", "flat" if r["flat"] else ""] for r in rows]
    top = [r["class"] for r in rows[:6]]
    sampled = " (a stratified sample of the training images)" if curve.get("sampled") else ""
    return section("What more images would buy",
                   "<div class=\"row\">",
                   table(["class", "training images", "accuracy now", "with twice the images", "gain, points",
                          "exponent b", ""], table_rows),
                   figure(plots.learning_curves(curve, metrics["classes"], top), "per-class learning curves"),
                   "</div>",
                   note=f"Heads fitted on 25, 50, 75 and 100 % of the training images{sampled} (3 seeds each) on "
                        "the cached features; each class's error rate fitted with a power law err = a n^-b. The "
                        "forecast scales this model's measured error by 2^-b. Head fits stand in for the whole "
                        "model, so read it as where images help most, with a rough size.")


def label_issues_section(issues: dict | None) -> str:
    if not issues:
        return ""
    rows = issues["rows"]
    if not rows:
        return section("Images that look mislabelled", f"<p>None of the {issues['judged']:,} training and "
                                                       f"validation images ({issues['method']}).</p>")
    tiles = [tile(r["path"], [(f"given: {r['label']} ({r['score']:.2f})", "w"),
                              (f"looks like: {r['suggested']} ({r['probability_suggested']:.2f})", "t")])
             for r in rows[:SHOWN_ISSUES]]
    return section("Images that look mislabelled", gallery(tiles),
                   note=f"{len(rows):,} of {issues['judged']:,} training and validation images, least likely label "
                        f"first ({issues['method']} on out-of-fold probabilities: each image judged by a head "
                        "that never saw it). All of them are in label_issues.csv in the run folder.")

