"""The report of a multi-label run (metrics["task"] == "multi"): per-label scores, precision-recall
curves, co-occurrence, the worst false positives and negatives, and the per-label decisions."""

from __future__ import annotations

from pathlib import Path

from . import plots
from .html import cards, esc, figure, gallery, page, section, table, tile
from .run_sections import beside_training, number, run_rows, stage_summary

MULTI_SCORE_NAMES = {"map": "mAP", "macro_f1": "macro-F1", "micro_f1": "micro-F1",
                     "subset_accuracy": "subset accuracy", "hamming_loss": "Hamming loss",
                     "log_loss": "log-loss"}


def build_multilabel_report(config: dict, history: list[dict], metrics: dict, *, training: dict | None = None) -> str:
    """The report of a multi-label run: headline, baselines, run, training, head selection, per-label
    scores, precision-recall curves, label co-occurrence, the worst false positives and negatives, and the
    decisions (thresholds and temperatures)."""
    m = metrics
    where = m.get("source") or f"the {m.get('split', 'test')} split"
    body = [_multi_headline(m), beside_training(m, training), _multi_baselines(m),
            section("Run", table([], run_rows(config, multi=True, decisions=_multi_decisions(config),
                                                  temperature=_multi_temperature(config))))]
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
    items = [(number(m.get("map")), "mAP", ""), (number(m.get("macro_f1")), "macro-F1", ""),
             (number(m.get("micro_f1")), "micro-F1", ""),
             (number(m.get("subset_accuracy")), "subset accuracy (exact label set)", ""),
             (number(m.get("hamming_loss")), "Hamming loss (wrong label decisions)", ""),
             (f"{m.get('n_images', 0):,}", f"images ({m.get('split', 'test')} split)", "")]
    card = m.get("label_cardinality") or {}
    if card.get("true") is not None:
        predicted = number(card.get("predicted"), ".2f")
        items.append((f"{card['true']:.2f}", f"labels per image (predicted {predicted})", ""))
    per = m.get("per_label") or {}
    if per:
        worst = weakest_first(per)[0]
        items.append((number(per[worst].get("f1"), ".3f"), f"weakest label (F1): {worst}", "bad"))
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
    rows = [["this model", number(m.get("map")), number(m.get("macro_f1"))]]
    rows += [[name, number(base.get("map")), number(base.get("macro_f1"))] for name, base in named]
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
    parts = [p for p in (stage_summary(stage, [r for r in history if r.get("stage") == stage], "val_map", "mAP")
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
    overall = {k: number(m.get(k), ".3f") for k in ("map", "micro_precision", "micro_recall", "macro_f1")}
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
    return [name, number(v.get("ap"), ".3f"), number(v.get("precision"), ".3f"), number(v.get("recall"), ".3f"),
            number(v.get("f1"), ".3f"), f"{v.get('support', 0):,}", f"{v.get('predicted', 0):,}",
            number(v.get("threshold"), ".2f")]


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
    first = f"{verb} {w.get('label')} ({number(w.get('probability'), '.2f')})"
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
    rows = [[labels[i] if i < len(labels) else f"#{i}", number(_at(thresholds, i), ".3f"),
             number(_at(temperature, i), ".3f")] for i in range(n)]
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
