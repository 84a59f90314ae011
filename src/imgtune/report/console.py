"""Metrics -> what a person reads: the per-class table on the console. Formatting only."""

from __future__ import annotations


from rich.console import Console
from rich.table import Table

from ..metrics import noise_of_gap


def per_class_table(metrics: dict, title: str | None = None) -> Table:
    pcs = metrics["per_class"]
    worst = min(pcs, key=lambda c: pcs[c]["accuracy"]) if pcs else None
    table = Table(title=title, title_justify="left")
    for col in ("class", "accuracy", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c, m in pcs.items():
        style = "red" if c == worst and m["accuracy"] < metrics["accuracy"] else None
        table.add_row(c, f"{m['accuracy']:.3f}", f"{m['precision']:.3f}", f"{m['recall']:.3f}",
                      f"{m['f1']:.3f}", f"{m['support']:,}", style=style)
    table.add_section()
    top = metrics.get("top_k_accuracy", {})
    table.add_row("overall", f"{metrics['accuracy']:.3f}", "", "", f"{metrics['macro_f1']:.3f}",
                  f"{metrics['n_images']:,}", style="bold")
    table.caption = ("f1 overall is macro-F1; "
                     + ", ".join(f"top-{k} {v:.3f}" for k, v in top.items() if k != "1")).rstrip(", ")
    return table


def headline(m: dict) -> str:
    """One line: accuracy (mAP for multi-label) and macro-F1 on how many images; or why they are undefined."""
    if m.get("undefined"):
        return f"{m['undefined']} ({m['n_images']:,} images)"
    first = f"mAP {m['map']:.4f}" if m.get("task") == "multi" else f"accuracy {m['accuracy']:.4f}"
    return f"{first}, macro-F1 {m['macro_f1']:.4f} ({m['n_images']:,} images)"


def print_metrics(metrics: dict, title: str | None = None) -> None:
    table = label_table if metrics.get("task") == "multi" else per_class_table
    Console(highlight=False).print(table(metrics, title))


def baseline_lines(metrics: dict) -> list[str]:
    """The console's lines on the baselines of a metrics document: the scores, then for each baseline the
    model is below (by more than one image's worth) a warning in plain words, or a note where the gap is
    within the noise of the split."""
    b = metrics.get("baselines")
    if not b:
        return []
    n = max(1, metrics.get("n_images", 1))
    if metrics.get("task") == "multi":
        return _label_baseline_lines(metrics, b, n)
    maj, probe = b["majority"], b["logistic_probe"]
    lines = [f"Baselines on the same split: always {maj['class']!r} {maj['accuracy']:.4f} accuracy, "
             f"{maj['macro_f1']:.4f} macro-F1; logistic regression on the same features (C={probe['c']:g}) "
             f"{probe['accuracy']:.4f} accuracy, {probe['macro_f1']:.4f} macro-F1."]
    for name, base in (("always answering the largest class", maj), ("a logistic regression on the same features",
                                                                     probe)):
        for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
            gap, noise = base[key] - metrics[key], noise_of_gap(base[key], n)
            if gap > 1 / n and gap < noise:  # information, not a warning: it may be luck
                lines.append(f"note: level with {name} in {label}: {metrics[key]:.4f} against {base[key]:.4f}, "
                             f"within the noise of {n:,} images (+-{noise * 100:.1f} points).")
            elif gap > 1 / n:
                lines.append(f"warning: the model is below {name} in {label}: {metrics[key]:.4f} against "
                             f"{base[key]:.4f}, beyond the noise of {n:,} images (+-{noise * 100:.1f} points).")
    return lines


def _label_baseline_lines(metrics: dict, b: dict, n: int) -> list[str]:
    prior, probe = b["prior"], b["logistic"]
    lines = [f"Baselines on the same split: label priors {prior['map']:.4f} mAP, {prior['macro_f1']:.4f} macro-F1; "
             f"{probe['description']} {probe['map']:.4f} mAP, {probe['macro_f1']:.4f} macro-F1."]
    for name, base in (("the label priors", prior), ("a logistic regression on the same features", probe)):
        for key, label in (("map", "mAP"), ("macro_f1", "macro-F1")):
            if base[key] - metrics[key] > 1 / n:
                lines.append(f"warning: the model is below {name} in {label}: {metrics[key]:.2f} against "
                             f"{base[key]:.2f}.")
    return lines


def label_table(metrics: dict, title: str | None = None) -> Table:
    """The per-label table of a multi-label metrics document, weakest label (by F1) first."""
    pls = metrics["per_label"]
    table = Table(title=title, title_justify="left")
    for col in ("label", "AP", "precision", "recall", "f1", "threshold", "support"):
        table.add_column(col, justify="left" if col == "label" else "right")
    for c in sorted(pls, key=lambda c: pls[c]["f1"]):
        m = pls[c]
        ap = "-" if m["ap"] is None else f"{m['ap']:.3f}"
        table.add_row(c, ap, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}",
                      f"{m['threshold']:.2f}", f"{m['support']:,}")
    table.add_section()
    shown = lambda v: "undefined" if v is None else f"{v:.3f}"  # noqa: E731
    table.add_row("overall", shown(metrics["map"]), f"{metrics['micro_precision']:.3f}",
                  f"{metrics['micro_recall']:.3f}", shown(metrics["macro_f1"]), "", f"{metrics['n_images']:,}",
                  style="bold")
    table.caption = (f"AP overall is mAP, f1 overall macro-F1 (micro {metrics['micro_f1']:.3f}), precision and "
                     f"recall overall micro; subset accuracy {metrics['subset_accuracy']:.3f}, Hamming loss "
                     f"{metrics['hamming_loss']:.4f}")
    return table
