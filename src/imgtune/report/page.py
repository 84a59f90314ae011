"""RUN/report.html: what a run learned and where it goes wrong, on one self-contained page.

Built only from the run folder's files (config.json, history.jsonl, and where present diagnosis.json and
inspect.json) and a metrics document, so it can be written again at any time, and by `evaluate` for
other data."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..atomic import write_text_atomic
from ..diagnose.next_steps import next_steps
from ..runs.folder import RunFolder
from . import plots
from .console import baseline_lines
from .diagnosis_sections import label_issues_section, learning_curve_section, next_steps_section
from .html import cards, esc, figure, gallery, page, section, table, tile
from .multilabel_page import build_multilabel_report
from .run_sections import beside_training, run_rows, stage_summary


def write_report(run_dir: str | os.PathLike, metrics: dict, out: str | os.PathLike) -> Path:
    """The report of `metrics` at `out`; an evaluation's (any `out` but RUN/report.html) also shows
    training's record beside it, read from RUN/metrics.json."""
    run = RunFolder(run_dir)
    training = None if Path(out).resolve() == run.report.resolve() else _read_json(run.metrics)
    write_text_atomic(Path(out), build_report(run.read_config(), run.read_history(), metrics,
                                              diagnosis=_read_json(run.diagnosis), audit=_read_json(run.audit),
                                              run_dir=str(run.path), training=training))
    return Path(out)


def _read_json(path: Path) -> dict | None:
    """An optional document of the run folder (diagnosis.json, inspect.json), None when absent or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def build_report(config: dict, history: list[dict], metrics: dict, *, diagnosis: dict | None = None,
                 audit: dict | None = None, run_dir: str = "RUN", training: dict | None = None) -> str:
    if metrics.get("task") == "multi":
        return build_multilabel_report(config, history, metrics, training=training)
    where = metrics.get("source") or f"the {metrics.get('split', 'test')} split"
    steps = next_steps(metrics, config, diagnosis, audit, run=run_dir)
    body = [_headline(metrics), beside_training(metrics, training), _baselines(metrics), next_steps_section(steps),
            _summary(config)]
    if history:
        body.append(section("Training", figure(plots.training_curves(history), "training curves"),
                            note=_training_note(config, history)))
    body.append(_head_selection(config))
    body.append(_per_class(metrics))
    body.append(section("Confusion matrix", "<div class=\"row\">",
                        figure(plots.confusion(metrics["confusion_matrix"], metrics["classes"], normalise=False),
                               "confusion matrix, counts"),
                        figure(plots.confusion(metrics["confusion_matrix"], metrics["classes"], normalise=True),
                               "confusion matrix, row-normalised"), "</div>",
                        note="Rows are the true class, columns the predicted one."))
    body.append(_confused_pairs(metrics))
    body.append(_misclassified(metrics))
    body.append(learning_curve_section((diagnosis or {}).get("learning_curve"), metrics))
    body.append(label_issues_section((diagnosis or {}).get("label_issues")))
    body.append(_calibration(config, metrics))
    title = f"imgtune report: {config.get('backbone', '?')} on {Path(str(config.get('data', ''))).name or 'data'}"
    return page(title, f"Evaluated on {where}: {metrics['n_images']:,} images, {len(metrics['classes'])} classes.",
                "\n".join(body))


def _headline(m: dict) -> str:
    items = [(f"{m['accuracy']:.4f}", "accuracy", ""), (f"{m['macro_f1']:.4f}", "macro-F1", "")]
    if "balanced_accuracy" in m:
        items.append((f"{m['balanced_accuracy']:.4f}", "balanced accuracy", ""))
    if "5" in m.get("top_k_accuracy", {}):
        items.append((f"{m['top_k_accuracy']['5']:.4f}", "top-5 accuracy", ""))
    worst = min(m["per_class"].items(), key=lambda kv: kv[1]["accuracy"])
    behind = worst[1]["accuracy"] < m["accuracy"] - 0.05  # red only where the class lags the rest
    items.append((f"{worst[1]['accuracy']:.3f}", f"worst class: {worst[0]}", "bad" if behind else ""))
    items.append((f"{m['ece']:.4f}", "ECE (calibrated)", ""))
    if "tta" in m:
        gain = m["tta"]["gain"]
        items.append((f"{gain * 100:+.2f} pts", f"test-time augmentation (without: {m['tta']['accuracy_without']:.4f})",
                      "good" if gain > 0 else "bad" if gain < 0 else ""))
    return cards(items)


def _baselines(m: dict) -> str:
    """The simple baselines on the same split, and a plain warning where the model is below one."""
    b = m.get("baselines")
    if not b:
        return ""
    maj, probe = b["majority"], b["logistic_probe"]
    rows = [["this model", f"{m['accuracy']:.4f}", f"{m['macro_f1']:.4f}", f"{m['balanced_accuracy']:.4f}"],
            [f"logistic regression on the same features (C={probe['c']:g})", f"{probe['accuracy']:.4f}",
             f"{probe['macro_f1']:.4f}", f"{probe['balanced_accuracy']:.4f}"],
            [f"always {maj['class']!r}", f"{maj['accuracy']:.4f}", f"{maj['macro_f1']:.4f}",
             f"{maj['balanced_accuracy']:.4f}"]]
    lines = baseline_lines(m)[1:]
    warnings = [line.removeprefix("warning: ") for line in lines if line.startswith("warning: ")]
    notes = [line.removeprefix("note: ") for line in lines if line.startswith("note: ")]
    parts = [table(["", "accuracy", "macro-F1", "balanced accuracy"], rows, highlight={0} if warnings else None)]
    for kind, said in (("warn", warnings), ("note", notes)):  # within the noise is information, not red
        if said:
            parts.append(f"<p class=\"{kind}\">" + "<br>".join(esc(w[0].upper() + w[1:]) for w in said) + "</p>")
    return section("Against the simple baselines", *parts,
                   note="On the same images: a model that is not clearly above these has a problem worth "
                        "looking into (the data, the labels, or the recipe).")


def _summary(config: dict) -> str:
    return section("Run", table([], run_rows(config, decisions=_decisions(config),
                                            temperature=f"{config.get('temperature', 1.0):.3f}")))


def _head_selection(config: dict) -> str:
    sel = config.get("head_selection")
    if not sel:
        return ""
    chosen = sel["candidate"]
    rows, best = [], set()
    for i, r in enumerate(sel["table"]):
        if r["c"] == chosen["c"] and r["weighting"] == chosen["weighting"]:
            best.add(i)
        rows.append([f"{r['c']:g}", r["weighting"], f"{r['accuracy']:.4f}", f"{r['balanced_accuracy']:.4f}",
                     f"{r['macro_f1']:.4f}", f"{r['log_loss']:.4f}", f"{r['balanced_log_loss']:.4f}"])
    return section("Head selection", table(["C", "class weights", "accuracy", "balanced accuracy", "macro-F1",
                                            "log-loss", "class-balanced log-loss"], rows, highlight=best),
                   note=f"Every candidate head scored on out-of-fold predictions ({sel['folds']}-fold cross-"
                        f"validation over {sel['images']:,} train+val images); the lowest log-loss (class-"
                        "balanced for the balanced metrics) is kept, highlighted.")


def _decisions(config: dict) -> str:
    d = config.get("decision")
    if not d:
        return "argmax"
    moved = [(c, b) for c, b in zip(config.get("classes", []), d["offsets_log_prob"]) if abs(b) >= 0.05]
    offsets = ", ".join(f"{c} {b:+.2f}" for c, b in moved) if moved else "none"
    return (f"offsets for {d['metric'].replace('_', ' ')} (log-probability units): {offsets}; temperature "
            f"{d['temperature']:.3f}; fitted on {d['fitted_on']}")


def _training_note(config: dict, history: list[dict]) -> str:
    selected = config.get("recipe", {}).get("metric", "accuracy").replace("_", " ")
    key = "val_" + selected.replace(" ", "_")
    for r in history:  # records from before the metric was recorded under its own name
        r.setdefault(key, r.get("val_accuracy"))
    parts = [stage_summary(stage, [r for r in history if r.get("stage") == stage], key, selected)
             for stage in ("head", "fine-tune")]
    return ("; ".join(p for p in parts if p) + f". The checkpoint kept is the best on validation {selected}."
            " Fine-tune epoch 0 is the model before fine-tuning.")


def _per_class(m: dict) -> str:
    pcs = m["per_class"]
    worst = min(pcs, key=lambda c: pcs[c]["accuracy"])
    rows = [[c, f"{v['accuracy']:.3f}", f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}",
             f"{v['support']:,}"] for c, v in pcs.items()]
    rows.append(["overall", f"{m['accuracy']:.3f}", "", "", f"{m['macro_f1']:.3f} (macro)", f"{m['n_images']:,}"])
    return section("Per class", "<div class=\"row\">",
                   table(["class", "accuracy", "precision", "recall", "F1", "images"], rows,
                         highlight={list(pcs).index(worst)}),
                   figure(plots.per_class_bars(m), "per-class accuracy, precision and F1"), "</div>",
                   note="Per-class accuracy is the share of that class's images predicted correctly (its "
                        "recall). The worst class is highlighted.")


def _confused_pairs(m: dict) -> str:
    pairs = m.get("most_confused", [])
    if not pairs:
        return section("Most confused pairs", "<p>No confusions: every image was predicted correctly.</p>")
    rows = [[p["true"], p["predicted"], p["count"], f"{p['share_of_true']:.1%}"] for p in pairs]
    return section("Most confused pairs", table(["true class", "predicted as", "images", "share of true class"],
                                                rows))


def _misclassified(m: dict) -> str:
    wrong = m.get("misclassified", [])
    if not wrong:
        return section("Misclassified images", "<p>None.</p>")
    tiles = []
    for w in wrong:
        lines = [(f"true: {w['true']} ({w['probability_true']:.2f})", "t"),
                 (f"predicted: {w['predicted']} ({w['probability']:.2f})", "w")]
        tiles.append(_explained_tile(w, lines) if w.get("explain") else tile(w["path"], lines))
    n_wrong = m["n_images"] - round(m["accuracy"] * m["n_images"])
    maps = (" Each image is shown under two Grad-CAM maps: where the network found evidence for the true class "
            "(left) and for the class it predicted (right), red most.") if any(w.get("explain") for w in wrong) else ""
    return section("Misclassified images", gallery(tiles),
                   note=f"The {len(wrong)} worst of {n_wrong} wrong predictions, lowest probability on the "
                        "true class first. Look for wrong labels, unusual images, and classes that overlap." + maps)


def _explained_tile(w: dict, lines: list[tuple[str, str]]) -> str:
    """A misclassified image as its two class maps side by side (a base64 PNG made at evaluation time,
    infer.explain.explain_misclassified), wide enough for both, with the usual captions."""
    caption = "".join(f"<div class=\"{cls}\">{esc(text)}</div>" for text, cls in lines)
    img = (f"<img style=\"width:306px;height:auto\" alt=\"Grad-CAM maps of {esc(w['path'])}\" "
           f"src=\"data:image/png;base64,{esc(w['explain'])}\">")
    return f"<div class=\"tile\" style=\"width:306px\">{img}{caption}<div class=\"p\">{esc(w['path'])}</div></div>"


def _calibration(config: dict, m: dict) -> str:
    t = m.get("temperature", config.get("temperature", 1.0))
    cal = config.get("calibration", {})
    note = (f"Temperature {t:.3f}, fitted on {cal.get('fitted_on') or 'the validation split'} after training. "
            + (f"ECE on these images: {m['ece_uncalibrated']:.4f} before, {m['ece']:.4f} after. "
               if "ece_uncalibrated" in m else "")
            + "A calibrated model's 0.8-confidence predictions are right 80% of the time.")
    parts = [figure(plots.reliability(m), "reliability diagram")]
    rejection = cal.get("val_rejection")
    if rejection:
        rows = [[f"{r['min_confidence']:.2f}", f"{r['rejected']:.1%}",
                 "—" if r["accuracy_kept"] is None else f"{r['accuracy_kept']:.4f}"] for r in rejection]
        parts.append("<p class=\"note\">Rejecting unknown images: with <code>--min-confidence P</code>, predict "
                     "and serve label an image <code>unknown</code> when its calibrated top probability is below "
                     f"P. On {esc(cal.get('held_out') or 'the validation split')}:</p>"
                     + table(["P", "labelled unknown", "accuracy of the rest"], rows))
    return section("Calibration", *parts, note=note)
