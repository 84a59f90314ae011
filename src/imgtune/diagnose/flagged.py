"""What a run flagged for a person to look at, worst first within each kind, read from what the run and
`imgtune inspect --run` wrote (nothing is computed again):

    label      likely label errors (RUN/label_issues.csv: out of fold, confident learning)
    mistake    the worst misclassified images of the evaluated split (RUN/metrics.json)
    duplicate  near-duplicates across splits, or with conflicting labels (RUN/inspect.json)
    odd        files the data audit found odd: blank, blurry, tiny, odd shapes (RUN/inspect.json)

An image flagged twice is listed once, under its first kind, with the other reasons beside it."""

from __future__ import annotations

import csv
import json
import os

from ..errors import RunFolderError
from ..runs.folder import RunFolder

KINDS = ("label", "mistake", "duplicate", "odd")


def flagged(run: RunFolder) -> list[dict]:
    """[{"path", "kind", "label" (given), "suggested", "confidence" (the suggestion's probability, or
    None), "split", "why"}], label errors first, each kind worst first."""
    found: dict[str, dict] = {}

    def add(item: dict) -> None:
        if item["path"] in found:
            found[item["path"]]["why"] += f"; also {item['why']}"
        else:
            found[item["path"]] = item

    for r in _label_issues(run):
        add({"path": r["path"], "kind": "label", "label": r["label"], "suggested": r["suggested"],
             "confidence": float(r["probability_suggested"]), "split": r.get("split", ""),
             "why": f"likely label error: the model, not trained on it, gives {r['label']} "
                    f"{float(r['score']):.2f} and {r['suggested']} {float(r['probability_suggested']):.2f}"})
    metrics = _json(run.metrics) or {}
    for r in metrics.get("misclassified", []):
        add({"path": r["path"], "kind": "mistake", "label": r["true"], "suggested": r["predicted"],
             "confidence": float(r["probability"]), "split": metrics.get("split") or "test",
             "why": f"misclassified as {r['predicted']} ({float(r['probability']):.2f}; {r['true']} "
                    f"{float(r['probability_true']):.2f})"})
    audit = _json(run.audit) or {}
    for g in audit.get("near_duplicates", []):
        if not (g.get("across_splits") or g.get("conflicting_labels")):
            continue
        for i, path in enumerate(g["paths"]):
            others = [f"{p} ({s}, {lab})" for j, (p, s, lab) in enumerate(zip(g["paths"], g["splits"], g["labels"]))
                      if j != i]
            add({"path": path, "kind": "duplicate", "label": g["labels"][i], "suggested": None, "confidence": None,
                 "split": g["splits"][i], "why": f"near-duplicate of {', '.join(others[:3])}"})
    for r in audit.get("odd", []):
        add({"path": r["path"], "kind": "odd", "label": r.get("label"), "suggested": None, "confidence": None,
             "split": r.get("split", ""), "why": "; ".join(r.get("reasons", [])) or "odd file"})
    given = _split_rows(run)  # the label and split each image was trained or judged with
    for item in found.values():
        row = given.get(os.path.abspath(item["path"]))
        if row is not None:
            item["label"], item["split"] = row["label"], row["split"]
    return list(found.values())


def _split_rows(run: RunFolder) -> dict[str, dict]:
    try:
        return {r["path"]: r for r in run.read_split() if "label" in r}
    except RunFolderError:
        return {}


def _label_issues(run: RunFolder) -> list[dict]:
    try:
        with open(run.label_issues, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def _json(path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
