"""Metrics -> what a person reads: the per-class table on the console. Formatting only."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


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


def print_metrics(metrics: dict, title: str | None = None) -> None:
    Console(highlight=False).print(per_class_table(metrics, title))
