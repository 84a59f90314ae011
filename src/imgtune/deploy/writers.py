"""Predictions -> CSV or JSON files. CSV columns: path,label,probability, then top-k label/probability pairs;
for a multi-label model path,labels (joined by ";"), then one probability column per label."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..atomic import write_text_atomic
from ..errors import ParameterError


def check_output(output: str | Path) -> str:
    suffix = Path(output).suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ParameterError("output", f"must end in .csv or .json; received {str(output)!r}.")
    return suffix


def format_predictions(rows: list[dict], output: str | Path) -> str:
    if rows and "labels" in rows[0]:
        return _format_label_sets(rows, output)
    if check_output(output) == ".json":
        return json.dumps([{**r, "top_k": [{"label": c, "probability": p} for c, p in r["top_k"]]}
                           for r in rows], indent=2) + "\n"
    k = max((len(r["top_k"]) for r in rows), default=0)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label", "probability"] + [f"{c}{i}" for i in range(1, k + 1)
                                                   for c in ("label_", "probability_")])
    for r in rows:
        pairs = [v for c, p in r["top_k"] for v in (c, f"{p:.6f}")]
        w.writerow([r["path"], r["label"], f"{r['probability']:.6f}", *pairs])
    return buf.getvalue()


def _format_label_sets(rows: list[dict], output: str | Path) -> str:
    if check_output(output) == ".json":
        return json.dumps(list(rows), indent=2) + "\n"
    labels = list(rows[0]["probabilities"])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "labels", *labels])
    for r in rows:
        w.writerow([r["path"], ";".join(r["labels"]), *(f"{r['probabilities'][c]:.6f}" for c in labels)])
    return buf.getvalue()


def write_predictions(rows: list[dict], output: str | Path) -> None:
    write_text_atomic(output, format_predictions(rows, output))
