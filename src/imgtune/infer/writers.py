"""Predictions -> CSV or JSON, written a batch at a time. CSV columns: path,label,probability, then top-k
label/probability pairs; for a multi-label model path,labels (joined by ";"), then one probability column
per label. JSON: a list with one object per image, one per line."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Iterable

from ..atomic import write_atomic
from ..errors import ParameterError


def check_output(output: str | Path) -> str:
    suffix = Path(output).suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ParameterError("output", f"must end in .csv or .json; received {str(output)!r}.")
    return suffix


class PredictionFormat:
    """How rows become text: head, each row, the separator between rows, tail. `labels`: a multi-label
    model's labels (None: single-label, with `top_k` label/probability pairs)."""

    def __init__(self, output: str | Path, *, top_k: int = 0, labels: list[str] | None = None):
        self.json = check_output(output) == ".json"
        self.top_k, self.labels = top_k, labels
        self.separator = ",\n" if self.json else ""

    def head(self) -> str:
        if self.json:
            return "[\n"
        if self.labels is not None:
            return _csv_line(["path", "labels", *self.labels])
        return _csv_line(["path", "label", "probability"] + [f"{c}{i}" for i in range(1, self.top_k + 1)
                                                             for c in ("label_", "probability_")])

    def row(self, r: dict) -> str:
        if self.json:
            return json.dumps(r if "labels" in r else
                              {**r, "top_k": [{"label": c, "probability": p} for c, p in r["top_k"]]})
        if "labels" in r:
            return _csv_line([r["path"], ";".join(r["labels"]), *(f"{r['probabilities'][c]:.6f}" for c in self.labels)])
        pairs = [v for c, p in r["top_k"] for v in (c, f"{p:.6f}")]
        return _csv_line([r["path"], r["label"], f"{r['probability']:.6f}", *pairs])

    def tail(self, wrote_rows: bool) -> str:
        return ("\n]\n" if wrote_rows else "]\n") if self.json else ""

    def body(self, batches: Iterable[list[dict]], write) -> int:
        """Each row of each batch through `write(text)`, separated -> how many rows."""
        n = 0
        for rows in batches:
            for r in rows:
                write((self.separator if n else "") + self.row(r))
                n += 1
        return n


def format_of(rows: list[dict], output: str | Path, labels: list[str] | None = None) -> PredictionFormat:
    """The format for `rows` (its top-k width, or its labels when they are label sets)."""
    if rows and "labels" in rows[0]:
        labels = labels or list(rows[0]["probabilities"])
    return PredictionFormat(output, top_k=max((len(r.get("top_k", ())) for r in rows), default=0), labels=labels)


def write_stream(output: str | Path, fmt: PredictionFormat, batches: Iterable[list[dict]], *,
                 body_only: bool = False) -> int:
    """Rows written as their batches come into a temporary file beside `output`, moved into place once
    the last is written (an interrupted run leaves no half file) -> how many rows. `body_only`: no head
    or tail (one rank's share, for `join_parts`)."""
    n = 0

    def write(tmp: str) -> None:
        nonlocal n
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
            f.write("" if body_only else fmt.head())
            n = fmt.body(batches, f.write)
            f.write("" if body_only else fmt.tail(n > 0))

    write_atomic(output, write)
    return n


def join_parts(output: str | Path, fmt: PredictionFormat, parts: list[Path], counts: list[int]) -> None:
    """The ranks' bodies (`write_stream(body_only=True)`), in rank order, as one file; the parts removed."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
            f.write(fmt.head())
            wrote = False
            for part, n in zip(parts, counts):
                if not n:
                    continue
                f.write(fmt.separator if wrote else "")
                with open(part, encoding="utf-8", errors="surrogateescape", newline="") as p:
                    while block := p.read(1 << 20):
                        f.write(block)
                wrote = True
            f.write(fmt.tail(wrote))

    write_atomic(output, write)
    for part in parts:
        part.unlink(missing_ok=True)


def _csv_line(values) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()
