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


def write_report(run_dir: str | os.PathLike, metrics: dict, out: str | os.PathLike) -> Path:
    """The report of `metrics` at `out`; an evaluation's (any `out` but RUN/report.html) also shows
    training's record beside it, read from RUN/metrics.json."""
    run = RunFolder(run_dir)
    training = None if Path(out).resolve() == run.report.resolve() else _read_json(run.metrics)
    write_text_atomic(Path(out), build_report(run.read_config(), run.read_history(), metrics,
                                              diagnosis=_read_json(run.diagnosis), audit=_read_json(run.audit),
                                              run_dir=str(run.path), training=training))
    return Path(out)


def _beside_training(m: dict, training: dict | None) -> str:
    """This evaluation and training's record (its test split), side by side."""
    if not training or training.get("task") != m.get("task"):
        return ""
    keys = [("map", "mAP"), ("macro_f1", "macro-F1")] if m.get("task") == "multi" else \
        [("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("balanced_accuracy", "balanced accuracy")]
    rows = [[name, f"{doc.get('n_images', 0):,}"] + [_f(doc.get(k)) for k, _ in keys]
            for name, doc in ((f"this evaluation: {m.get('source') or 'these images'}", m),
                              (f"training's record: its {training.get('split') or 'test'} split", training))]
    return section("This evaluation beside training's record", table(["", "images"] + [n for _, n in keys], rows),
                   note="Training's metrics.json and report.html are kept as training wrote them.")


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
    body = [_headline(metrics), _beside_training(metrics, training), _baselines(metrics), next_steps_section(steps),
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
    return section("Run", table([], _run_rows(config)))


def _run_rows(config: dict, *, multi: bool = False) -> list[list]:
    """The key-value rows of the Run section; multi-label runs name labels and per-label decisions."""
    recipe = config.get("recipe", {})
    head, ft = recipe.get("head", {}), recipe.get("finetune", {})
    dc = config.get("data_config", {})
    counts = config.get("counts", {})
    seconds = config.get("seconds", {})
    rows = [
        ["data", config.get("data", "?")],
        ["images", ", ".join(f"{n:,} {s}" for s, n in counts.items() if n) or "?"],
        ["files skipped", config.get("skipped", 0)],
        ["labels" if multi else "classes",
         f"{len(config.get('classes', []))}: {', '.join(config.get('classes', []))}"],
        ["backbone", f"{config.get('backbone')} ({config.get('weights', '?')})"],
        ["image size", f"{dc.get('image_size')} px, {dc.get('interpolation', '')}"],
        ["recipe", recipe.get("name", "?")],
        ["head", (config.get("head_selection") or {}).get("description")
         or f"{head.get('kind')} head, {head.get('optimizer')} lr {head.get('lr')}, up to "
            f"{head.get('epochs')} epochs, batch {head.get('batch_size')}"],
        ["fine-tune", f"last {ft.get('unfreeze')} block group(s), {ft.get('optimizer')} lr {ft.get('lr')} "
                      f"(head {ft.get('head_lr')}), {ft.get('epochs')} epochs, batch {ft.get('batch_size')}, "
                      f"{ft.get('augment')} augmentation" if ft.get("epochs") else "none (head only)"],
        ["metric", "mAP; thresholds for each label's F1" if multi else recipe.get("metric", "accuracy").replace("_", " ")],
        ["fine-tuning kept?", config.get("finetune", {}).get("reason", "not recorded")],
        ["decisions", _multi_decisions(config) if multi else _decisions(config)],
        ["temperature", _multi_temperature(config) if multi else f"{config.get('temperature', 1.0):.3f}"],
        ["times", ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()) or "?"],
        ["versions", ", ".join(f"{k} {v}" for k, v in config.get("versions", {}).items())],
    ]
    return rows


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
    parts = [_stage_summary(stage, [r for r in history if r.get("stage") == stage], key, selected)
             for stage in ("head", "fine-tune")]
    return ("; ".join(p for p in parts if p) + f". The checkpoint kept is the best on validation {selected}."
            " Fine-tune epoch 0 is the model before fine-tuning.")


def _stage_summary(stage: str, rows: list[dict], key: str, name: str) -> str:
    """'fine-tune: 2 epochs, best val accuracy 0.9123 at epoch 2': epochs counted from 1 (fine-tune's
    epoch 0 is the model it started from); a head fitted once on the cached features is said so."""
    if not rows:
        return ""
    once = stage == "head" and len(rows) == 1
    trained = sum(1 for r in rows if r.get("epoch", 0) >= 1)
    what = "one fit on the cached features" if once else f"{trained} epoch{'' if trained == 1 else 's'}"
    scored = [r for r in rows if r.get(key) is not None]
    if not scored:
        return f"{stage}: {what}"
    best = max(scored, key=lambda r: (r[key], -r.get("val_loss", 0.0)))
    return f"{stage}: {what}, best val {name} {best[key]:.4f}" + ("" if once else f" at epoch {best.get('epoch', '?')}")


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




# --- multi-label runs (metrics["task"] == "multi") ---------------------------------------------------

MULTI_SCORE_NAMES = {"map": "mAP", "macro_f1": "macro-F1", "micro_f1": "micro-F1",
                     "subset_accuracy": "subset accuracy", "hamming_loss": "Hamming loss",
                     "log_loss": "log-loss"}


def build_multilabel_report(config: dict, history: list[dict], metrics: dict, *, training: dict | None = None) -> str:
    """The report of a multi-label run: headline, baselines, run, training, head selection, per-label
    scores, precision-recall curves, label co-occurrence, the worst false positives and negatives, and the
    decisions (thresholds and temperatures)."""
    m = metrics
    where = m.get("source") or f"the {m.get('split', 'test')} split"
    body = [_multi_headline(m), _beside_training(m, training), _multi_baselines(m),
            section("Run", table([], _run_rows(config, multi=True)))]
    if history:
        curves = plots.training_curves(history, plots.MULTI_SCORES, "validation score")
        body.append(section("Training", figure(curves, "training curves"),
                            note=_multi_training_note(history)))
    body.append(_multi_head_selection(config))
    body.append(_per_label(m))
    body.append(_pr_section(m))
    body.append(_cooccurrence_section(m))
    body.append(_worst_errors(m))
    body.append(_multi_decisions_section(config, m))
    title = f"imgtune report: {config.get('backbone', '?')} on {Path(str(config.get('data', ''))).name or 'data'}"
    subtitle = (f"Evaluated on {where}: {m.get('n_images', 0):,} images, {len(m.get('classes', []))} labels "
                "(multi-label).")
    return page(title, subtitle, "\n".join(body))


def _f(value, spec: str = ".4f") -> str:
    """A number formatted, or a dash where it is missing (None, or absent from the document)."""
    return "—" if value is None else format(value, spec)


def weakest_first(per_label: dict[str, dict]) -> list[str]:
    """Label names, the weakest first: lowest F1 (as the console's table), ties by average precision, then
    name; a label that no image here carries (AP and recall undefined) comes last, whatever its F1."""
    def key(n: str):
        v = per_label[n]
        unmeasured = v.get("ap") is None and not v.get("support")
        return (unmeasured, v.get("f1") or 0.0, v.get("ap") or 0.0, n)
    return sorted(per_label, key=key)


def _multi_headline(m: dict) -> str:
    """Cards: mAP, macro- and micro-F1, subset accuracy, Hamming loss, images and split, labels per image,
    and the weakest label."""
    items = [(_f(m.get("map")), "mAP", ""), (_f(m.get("macro_f1")), "macro-F1", ""),
             (_f(m.get("micro_f1")), "micro-F1", ""),
             (_f(m.get("subset_accuracy")), "subset accuracy (exact label set)", ""),
             (_f(m.get("hamming_loss")), "Hamming loss (wrong label decisions)", ""),
             (f"{m.get('n_images', 0):,}", f"images ({m.get('split', 'test')} split)", "")]
    card = m.get("label_cardinality") or {}
    if card.get("true") is not None:
        predicted = _f(card.get("predicted"), ".2f")
        items.append((f"{card['true']:.2f}", f"labels per image (predicted {predicted})", ""))
    per = m.get("per_label") or {}
    if per:
        worst = weakest_first(per)[0]
        items.append((_f(per[worst].get("f1"), ".3f"), f"weakest label (F1): {worst}", "bad"))
    return cards(items)


def _multi_baselines(m: dict) -> str:
    """The label-frequency prior and a logistic regression on the same split, with a plain warning where
    the model is below one of them by more than one image's worth."""
    b = m.get("baselines")
    if not b:
        return ""
    prior, probe = b.get("prior") or {}, b.get("logistic") or {}
    named = []
    if probe:
        named.append((probe.get("description") or "logistic regression on the same features", probe))
    if prior:
        named.append(("label frequencies only (the prior: every image gets the same scores)", prior))
    rows = [["this model", _f(m.get("map")), _f(m.get("macro_f1"))]]
    rows += [[name, _f(base.get("map")), _f(base.get("macro_f1"))] for name, base in named]
    warnings = _multi_baseline_warnings(m, named)
    parts = [table(["", "mAP", "macro-F1"], rows, highlight={0} if warnings else None)]
    if warnings:
        parts.append("<p class=\"warn\">" + "<br>".join(esc(w) for w in warnings) + "</p>")
    return section("Against the simple baselines", *parts,
                   note="On the same images: a model that is not clearly above these has a problem worth "
                        "looking into (the data, the labels, or the recipe).")


def _multi_baseline_warnings(m: dict, named: list[tuple[str, dict]]) -> list[str]:
    """One sentence per (baseline, score) where the model is below the baseline by more than 1 / n."""
    n = max(1, m.get("n_images") or 1)
    out = []
    for name, base in named:
        for key, label in (("map", "mAP"), ("macro_f1", "macro-F1")):
            if m.get(key) is not None and base.get(key) is not None and base[key] - m[key] > 1 / n:
                out.append(f"The model is below {name} in {label}: {m[key]:.2f} against {base[key]:.2f}.")
    return out


def _multi_training_note(history: list[dict]) -> str:
    """Epochs per stage and the best validation score of each, from whatever the history records."""
    parts = [p for p in (_stage_summary(stage, [r for r in history if r.get("stage") == stage], "val_map", "mAP")
                         for stage in ("head", "fine-tune")) if p]  # multi-label stages select on validation mAP
    return "; ".join(parts) + (". " if parts else "") + "Fine-tune epoch 0 is the model before fine-tuning."


def _multi_head_selection(config: dict) -> str:
    """The head-selection table of a multi-label run, whatever scores its rows carry; the kept row
    highlighted."""
    sel = config.get("head_selection")
    if not sel or not sel.get("table"):
        return ""
    chosen = sel.get("candidate") or {}
    headers = list(dict.fromkeys(k for r in sel["table"] for k in r))
    rows, best = [], set()
    for i, r in enumerate(sel["table"]):
        if chosen and all(r.get(k) == v for k, v in chosen.items() if k in r):
            best.add(i)
        rows.append([_cell(r.get(k), k) for k in headers])
    names = [{"c": "C", "weighting": "weights"}.get(h) or MULTI_SCORE_NAMES.get(h) or h.replace("_", " ")
             for h in headers]
    folds, images = sel.get("folds"), sel.get("images")
    where = f" ({folds}-fold cross-validation over {images:,} train+val images)" if folds and images else ""
    return section("Head selection", table(names, rows, highlight=best),
                   note=f"Every candidate head scored on out-of-fold predictions{where}; the one kept is "
                        "highlighted.")


def _cell(value, key: str) -> str:
    """A head-selection cell: C in %g, other numbers to four places, anything else as it is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—" if value is None else str(value)
    return f"{value:g}" if key == "c" else f"{value:.4f}"


def _per_label(m: dict) -> str:
    """The per-label table, weakest label first, beside bars of AP and F1."""
    per = m.get("per_label") or {}
    if not per:
        return section("Per label", "<p>No per-label scores in the metrics.</p>")
    order = weakest_first(per)
    rows = [_per_label_row(n, per[n]) for n in order]
    overall = {k: _f(m.get(k), ".3f") for k in ("map", "micro_precision", "micro_recall", "macro_f1")}
    rows.append(["overall", f"{overall['map']} (mAP)", f"{overall['micro_precision']} (micro)",
                 f"{overall['micro_recall']} (micro)", f"{overall['macro_f1']} (macro)",
                 f"{m.get('n_images', 0):,}", "", ""])
    headers = ["label", "AP", "precision", "recall", "F1", "images", "predicted", "threshold"]
    return section("Per label", "<div class=\"row\">", table(headers, rows, highlight={0}),
                   figure(plots.per_label_bars(m, order), "per-label average precision and F1"), "</div>",
                   note="Weakest label first (lowest F1), highlighted. Images: how many carry "
                        "the label; predicted: how many were given it, at the label's threshold. AP is "
                        "undefined (—) for a label that no image here carries; such a label comes last.")


def _per_label_row(name: str, v: dict) -> list[str]:
    """One row of the per-label table."""
    return [name, _f(v.get("ap"), ".3f"), _f(v.get("precision"), ".3f"), _f(v.get("recall"), ".3f"),
            _f(v.get("f1"), ".3f"), f"{v.get('support', 0):,}", f"{v.get('predicted', 0):,}",
            _f(v.get("threshold"), ".2f")]


def _pr_section(m: dict) -> str:
    """Precision-recall curves, one per label (small multiples past eight labels), weakest first."""
    curves = m.get("pr_curves") or {}
    if not any(c.get("recall") for c in curves.values()):
        return section("Precision-recall curves", "<p>No curves in the metrics.</p>")
    per = m.get("per_label") or {}
    order = [n for n in weakest_first(per) if n in curves] + [n for n in curves if n not in per]
    ap = {n: (per.get(n) or {}).get("ap") for n in order}
    fig = plots.pr_curves({n: curves[n] for n in order}, ap)
    return section("Precision-recall curves", figure(fig, "precision-recall curves per label"),
                   note="Each label's precision against recall as its threshold moves; the area under a "
                        "curve is the label's average precision. Weakest label first.")


def _cooccurrence_section(m: dict) -> str:
    """Heat maps of how often labels are true together: counts, and P(column | row)."""
    matrix, labels = m.get("cooccurrence"), m.get("classes") or []
    if not matrix or len(matrix) != len(labels):
        return ""
    counts = figure(plots.cooccurrence(matrix, labels, conditional=False), "label co-occurrence, counts")
    rates = figure(plots.cooccurrence(matrix, labels, conditional=True),
                   "label co-occurrence, P(column | row)")
    return section("Label co-occurrence", "<div class=\"row\">", counts, rates, "</div>",
                   note="Among these images' true labels: images carrying both labels (the diagonal: the "
                        "label's own count), and the conditional rate P(column | row), the share of the row "
                        "label's images that also carry the column label.")


def _worst_errors(m: dict) -> str:
    """Thumbnails of the most confident false positives and the least confident false negatives; a file
    that cannot be read shows as a grey placeholder."""
    worst = m.get("worst") or {}
    fps, fns = worst.get("false_positives") or [], worst.get("false_negatives") or []
    fp_tiles = [_error_tile(w, "given", ("not labelled so", "")) for w in fps]
    fn_tiles = [_error_tile(w, "missed", ("labelled so", "t")) for w in fns]
    return (section("Worst false positives", gallery(fp_tiles) if fp_tiles else "<p>None.</p>",
                    note="Labels the model gave with the highest probability to images that do not carry "
                         "them. Look for labels missing from the data as well as for model mistakes.")
            + section("Worst false negatives", gallery(fn_tiles) if fn_tiles else "<p>None.</p>",
                      note="Labels the images carry that the model gave the lowest probability. Look for "
                           "wrong labels, small or hidden objects, and labels that overlap."))


def _error_tile(w: dict, verb: str, second: tuple[str, str]) -> str:
    """A thumbnail of one wrong label decision: the label, its probability, and what the data says."""
    first = f"{verb} {w.get('label')} ({_f(w.get('probability'), '.2f')})"
    return tile(str(w.get("path", "")), [(first, "w"), second])


def _label_decisions(config: dict, m: dict) -> tuple[list, list, str]:
    """(thresholds, temperatures, where they were fitted) from config["decision"], else from the
    metrics; any of them may be missing."""
    d = config.get("decision") if isinstance(config.get("decision"), dict) else {}
    thresholds = d.get("thresholds") or m.get("thresholds") or []
    temperature = d.get("temperature", m.get("temperature"))
    if not isinstance(temperature, (list, tuple)):
        temperature = [temperature] * len(thresholds) if temperature is not None else []
    return list(thresholds), list(temperature), d.get("fitted_on") or ""


def _multi_decisions_section(config: dict, m: dict) -> str:
    """Per label: the threshold its probability must reach for the label to be given, and its
    temperature."""
    thresholds, temperature, fitted_on = _label_decisions(config, m)
    labels = m.get("classes") or config.get("classes") or []
    if not thresholds and not temperature:
        return section("Decisions", "<p>Not recorded: a label is given where its probability reaches "
                                    "0.5.</p>")
    n = max(len(labels), len(thresholds), len(temperature))
    rows = [[labels[i] if i < len(labels) else f"#{i}", _f(_at(thresholds, i), ".3f"),
             _f(_at(temperature, i), ".3f")] for i in range(n)]
    return section("Decisions", table(["label", "threshold", "temperature"], rows),
                   note="A label is given where its probability, sigmoid(logit / temperature), reaches its "
                        "threshold." + (f" Fitted on {fitted_on}." if fitted_on else ""))


def _at(values: list, i: int):
    """values[i], or None past the end."""
    return values[i] if i < len(values) else None


def _multi_decisions(config: dict) -> str:
    """The Run table's one-line account of a multi-label run's thresholds."""
    d = config.get("decision")
    if not isinstance(d, dict) or not d.get("thresholds"):
        return "a threshold of 0.5 per label" if not d else "per-label thresholds (not recorded)"
    t = [v for v in d["thresholds"] if v is not None]
    span = f"{min(t):.2f} to {max(t):.2f}" if t else "not recorded"
    return f"a threshold per label ({span})" + (f"; fitted on {d['fitted_on']}" if d.get("fitted_on") else "")


def _multi_temperature(config: dict) -> str:
    """The Run table's temperature row: one per label (their range), or a single one."""
    d = config.get("decision") if isinstance(config.get("decision"), dict) else {}
    t = d.get("temperature", config.get("temperature"))
    if isinstance(t, (list, tuple)):
        t = [v for v in t if v is not None]
        return f"one per label, {min(t):.3f} to {max(t):.3f}" if t else "not recorded"
    return "not recorded" if t is None else f"{t:.3f}"
