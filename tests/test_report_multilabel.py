"""report.html and the data audit (`imgtune inspect`) for multi-label runs and data."""

import base64
import io
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from imgtune import inspect_data as audit_module
from imgtune.inspect_data import _rare_labels, audit, audit_manifest
from imgtune.data.manifest import Item, Manifest
from imgtune.report import plots
from imgtune.report.inspect_page import build_inspect_page, summary_lines
from imgtune.report.page import build_report

LABELS = ["bird", "cat", "dog", "fish"]
# 8 images x 4 labels: true labels and calibrated probabilities; no image carries "fish" (AP undefined)
Y = np.array([[0, 1, 0, 0], [0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 1, 0],
              [1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]])
P = np.array([[0.6, 0.9, 0.2, 0.1], [0.1, 0.8, 0.7, 0.0], [0.3, 0.95, 0.1, 0.2], [0.55, 0.2, 0.45, 0.0],
              [0.4, 0.1, 0.3, 0.1], [0.2, 0.7, 0.65, 0.3], [0.7, 0.35, 0.05, 0.0], [0.05, 0.15, 0.8, 0.1]])
THRESHOLDS = [0.5, 0.5, 0.5, 0.5]
WEAKEST_FIRST = ["bird", "dog", "cat", "fish"]  # F1 by hand: bird 1/3, dog 4/7, cat 1; fish no positives


def _png(path, seed: int, size: int = 48):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path, "PNG")
    return str(path)


def _ap(y: np.ndarray, s: np.ndarray) -> float | None:
    """Average precision of one label (no tied scores here): mean precision at each positive's rank."""
    if not y.any():
        return None
    order = np.argsort(-s)
    hits = np.cumsum(y[order])
    return float(np.mean([hits[k] / (k + 1) for k in range(len(order)) if y[order][k]]))


def _pr(y: np.ndarray, s: np.ndarray) -> dict:
    if not y.any():
        return {"recall": [], "precision": []}
    order = np.argsort(-s)
    hits = np.cumsum(y[order])
    return {"recall": [0.0, *(hits / y.sum()).tolist()],
            "precision": [1.0, *(hits / np.arange(1, len(y) + 1)).tolist()]}


def _ratio(a, b) -> float:
    return float(a / b) if b else 0.0


def _multi_metrics(paths: list[str]) -> dict:
    """A self-consistent metrics document of task multi, computed from Y, P and THRESHOLDS."""
    d = P >= np.array(THRESHOLDS)
    yb = Y.astype(bool)
    tp, n_pred, n_pos = (yb & d).sum(0), d.sum(0), yb.sum(0)
    per = {}
    for j, name in enumerate(LABELS):
        prec, rec = _ratio(tp[j], n_pred[j]), _ratio(tp[j], n_pos[j])
        per[name] = {"ap": _ap(Y[:, j], P[:, j]), "precision": prec, "recall": rec,
                     "f1": _ratio(2 * tp[j], n_pred[j] + n_pos[j]), "support": int(n_pos[j]),
                     "predicted": int(n_pred[j]), "threshold": THRESHOLDS[j]}
    present = [n for j, n in enumerate(LABELS) if n_pos[j]]
    fps = sorted(((i, j) for i in range(len(Y)) for j in range(len(LABELS)) if d[i, j] and not yb[i, j]),
                 key=lambda ij: -P[ij])
    fns = sorted(((i, j) for i in range(len(Y)) for j in range(len(LABELS)) if yb[i, j] and not d[i, j]),
                 key=lambda ij: P[ij])
    worst = {kind: [{"path": paths[i], "label": LABELS[j], "probability": float(P[i, j])} for i, j in rows]
             for kind, rows in (("false_positives", fps), ("false_negatives", fns))}
    aps = [per[n]["ap"] for n in present]
    return {"task": "multi", "classes": LABELS, "n_images": len(Y), "split": "test",
            "map": float(np.mean(aps)),
            "micro_precision": _ratio(tp.sum(), n_pred.sum()), "micro_recall": _ratio(tp.sum(), n_pos.sum()),
            "micro_f1": _ratio(2 * tp.sum(), n_pred.sum() + n_pos.sum()),
            "macro_precision": float(np.mean([per[n]["precision"] for n in present])),
            "macro_recall": float(np.mean([per[n]["recall"] for n in present])),
            "macro_f1": float(np.mean([per[n]["f1"] for n in present])),
            "subset_accuracy": float(np.mean((yb == d).all(1))), "hamming_loss": float(np.mean(yb != d)),
            "label_cardinality": {"true": float(Y.sum() / len(Y)), "predicted": float(d.sum() / len(Y))},
            "per_label": per, "pr_curves": {n: _pr(Y[:, j], P[:, j]) for j, n in enumerate(LABELS)},
            "cooccurrence": (Y.T @ Y).tolist(), "thresholds": THRESHOLDS, "temperature": [1.0, 1.1, 0.9, 1.0],
            "worst": worst,
            "baselines": {"prior": {"map": 0.45, "macro_f1": 0.4},
                          "logistic": {"map": 0.7, "macro_f1": 0.6,
                                       "description": "logistic regression per label on the same features"}}}


@pytest.fixture
def metrics(tmp_path):
    """The document over 7 generated thumbnails and one missing file (image 3: a false positive, bird,
    and a false negative, dog)."""
    paths = [_png(tmp_path / f"img_{i}.png", i) for i in range(len(Y))]
    paths[3] = str(tmp_path / "gone" / "missing.png")
    return _multi_metrics(paths)


def _section(html: str, title: str) -> str:
    """The HTML of one section: from its heading to the next."""
    start = html.index(f"<h2>{title}</h2>")
    end = html.find("<h2>", start + 1)
    return html[start:end if end > 0 else len(html)]


def _figure(html: str, alt: str) -> Image.Image:
    src = re.search(r'<img alt="' + re.escape(alt) + r'" src="data:image/png;base64,([^"]+)"', html).group(1)
    img = Image.open(io.BytesIO(base64.b64decode(src)))
    img.load()
    return img


def _tiles(section_html: str) -> list[tuple[str, str]]:
    """(path shown under a tile, the tile's HTML), in page order."""
    return [(m.group(2), m.group(1)) for m in
            re.finditer(r'<div class="tile">(.*?)<div class="p">([^<]*)</div></div>', section_html)]


def test_the_hand_made_document_is_what_the_tests_assume(metrics):
    per = metrics["per_label"]
    assert [round(per[n]["f1"], 4) for n in LABELS] == [round(1 / 3, 4), 1.0, round(4 / 7, 4), 0.0]
    assert per["fish"]["ap"] is None and metrics["cooccurrence"][1][2] == 1
    for kind in ("false_positives", "false_negatives"):
        assert any(w["path"].endswith("missing.png") for w in metrics["worst"][kind])


def test_multi_report_lists_labels_weakest_first(metrics):
    html = build_report({}, [], metrics)
    part = _section(html, "Per label")
    rows = re.findall(r"<tr(?: class=\"worst\")?><td>([^<]*)</td>", part.split("<tbody>", 1)[1])
    assert rows == [*WEAKEST_FIRST, "overall"]
    assert '<tr class="worst"><td>bird</td>' in part  # the weakest highlighted
    bird = re.search(r"<tr class=\"worst\">(.*?)</tr>", part).group(1)
    expected = ["bird", f"{per_ap(metrics, 'bird'):.3f}", "0.333", "0.333", "0.333", "3", "3", "0.50"]
    assert re.findall(r"<td>([^<]*)</td>", bird) == expected
    fish = re.search(r"<tr><td>fish</td>(.*?)</tr>", part).group(1)
    assert fish.startswith("<td>—</td>")  # AP undefined
    _figure(part, "per-label average precision and F1")
    for title in ("Confusion matrix", "Per class", "Calibration", "Misclassified images"):
        assert f"<h2>{title}</h2>" not in html


def per_ap(metrics: dict, name: str) -> float:
    return metrics["per_label"][name]["ap"]


def test_multi_report_headline_and_sections(metrics):
    html = build_report({"backbone": "resnet18", "data": "/data/photos.csv"}, [], metrics)
    cards = re.findall(r'<div class="card[^"]*"><b>([^<]*)</b><span>([^<]*)</span>', html)
    shown = {label: value for value, label in cards}
    assert shown["mAP"] == f"{metrics['map']:.4f}" and shown["micro-F1"] == f"{metrics['micro_f1']:.4f}"
    assert shown["Hamming loss (wrong label decisions)"] == f"{metrics['hamming_loss']:.4f}"
    assert shown["subset accuracy (exact label set)"] == f"{metrics['subset_accuracy']:.4f}"
    assert shown["images (test split)"] == "8" and "weakest label (F1): bird" in shown
    for title in ("Run", "Against the simple baselines", "Per label", "Precision-recall curves",
                  "Label co-occurrence", "Worst false positives", "Worst false negatives", "Decisions"):
        assert f"<h2>{title}</h2>" in html, title
    assert not re.search(r'(src|href)="(https?:|file:|//)', html)


def test_multi_report_draws_pr_curves_and_cooccurrence(metrics):
    html = build_report({}, [], metrics)
    pr = _figure(_section(html, "Precision-recall curves"), "precision-recall curves per label")
    co = _section(html, "Label co-occurrence")
    counts = _figure(co, "label co-occurrence, counts")
    rates = _figure(co, "label co-occurrence, P(column | row)")
    assert min(pr.size) > 100 and min(counts.size) > 100 and min(rates.size) > 100
    assert counts.tobytes() != rates.tobytes()


def test_pr_curves_become_small_multiples_past_eight_labels():
    curve = {"recall": [0.0, 0.5, 1.0], "precision": [1.0, 1.0, 0.5]}
    one = Image.open(io.BytesIO(plots.pr_curves({f"l{i}": curve for i in range(8)}, {})))
    many = Image.open(io.BytesIO(plots.pr_curves({f"l{i}": curve for i in range(9)}, {})))
    assert many.width > 1.5 * one.width  # a grid of panels, six a row, not one panel


def test_conditional_rates_divide_by_the_row_label_count():
    rates = plots.conditional_rates([[4, 2, 0], [2, 5, 0], [0, 0, 0]])
    assert rates[0].tolist() == [1.0, 0.5, 0.0] and rates[1].tolist() == [0.4, 1.0, 0.0]
    assert np.isnan(rates[2]).all()


def test_worst_errors_show_thumbnails_and_a_placeholder_for_a_missing_file(metrics):
    html = build_report({}, [], metrics)
    for title, kind in (("Worst false positives", "false_positives"),
                        ("Worst false negatives", "false_negatives")):
        tiles = _tiles(_section(html, title))
        assert [path for path, _ in tiles] == [w["path"] for w in metrics["worst"][kind]]  # document order
        assert any(path.endswith("missing.png") for path, _ in tiles)
        for w, (_, tile) in zip(metrics["worst"][kind], tiles):
            if w["path"].endswith("missing.png"):
                assert '<div class="missing"' in tile and "<img" not in tile
            else:
                assert 'src="data:image/jpeg;base64,' in tile
            assert f"{w['label']} ({w['probability']:.2f})" in tile


def test_multi_baselines_warn_where_the_model_is_below_one(metrics):
    part = _section(build_report({}, [], metrics), "Against the simple baselines")
    assert "logistic regression per label on the same features" in part and '<p class="warn">' not in part
    metrics["baselines"]["logistic"]["map"] = metrics["map"] + 0.2
    part = _section(build_report({}, [], metrics), "Against the simple baselines")
    assert '<p class="warn">' in part and "below logistic regression per label" in part


def test_decisions_render_from_the_config_and_survive_missing_keys(metrics):
    config = {"task": "multi", "classes": LABELS,
              "decision": {"thresholds": [0.31, 0.62, 0.5, 0.45], "temperature": [1.2, 0.8, 1.0, 1.0],
                           "fitted_on": "validation (40 images)"}}
    html = build_report(config, [], metrics)
    part = _section(html, "Decisions")
    assert "<td>bird</td><td>0.310</td><td>1.200</td>" in part and "Fitted on validation (40 images)." in part
    assert "a threshold per label (0.31 to 0.62)" in _section(html, "Run")
    part = _section(build_report({"decision": {"fitted_on": "x"}}, [], metrics), "Decisions")
    assert "<td>cat</td><td>0.500</td><td>1.100</td>" in part  # from the metrics' thresholds and temperatures
    for key in ("thresholds", "temperature"):
        del metrics[key]
    assert "Not recorded" in _section(build_report({"decision": None}, [], metrics), "Decisions")


def test_multi_training_curves_use_the_recorded_scores(metrics):
    history = [{"stage": "head", "epoch": e, "loss": 1 / e, "val_loss": 1.2 / e, "val_map": 0.5 + e / 20,
                "val_macro_f1": 0.4 + e / 20, "lr": 0.01} for e in range(1, 5)]
    history += [{"stage": "fine-tune", "epoch": 0, "loss": None, "val_loss": 0.3, "val_map": 0.7, "lr": None}]
    part = _section(build_report({"recipe": {"metric": "map"}}, history, metrics), "Training")
    assert "head: 4 epochs, best val mAP 0.7000 at epoch 4" in part
    assert min(_figure(part, "training curves").size) > 100


def _labelled(tmp_path, groups) -> list[Item]:
    items = []
    for labels, split, n in groups:
        for _ in range(n):
            items.append(Item(_png(tmp_path / f"f{len(items):02d}.png", 100 + len(items), size=40), -1, split,
                              labels=labels))
    return items


# (labels, split, images): cat 13 images, dog 7, grass 14, never 0; 3 images carry no label
CLASSES = ["cat", "dog", "grass", "never"]
GROUPS = [((0, 2), "train", 8), ((0, 1, 2), "train", 4), ((1,), "val", 2), ((), "train", 2), ((), "val", 1),
          ((0, 1), "test", 1), ((2,), "test", 2)]


@pytest.fixture
def multi_manifest(tmp_path):
    items = _labelled(tmp_path, GROUPS)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    items.append(Item(str(broken), -1, "train", labels=(0, 1)))  # unreadable: counted nowhere
    return Manifest(CLASSES, items, source=str(tmp_path), splits_given=True, task="multi")


def test_audit_of_multilabel_data_counts_cardinality_rare_labels_and_cooccurrence(multi_manifest,
                                                                                   monkeypatch):
    monkeypatch.setattr(audit_module, "find_images", lambda source: multi_manifest)
    doc = audit("whatever.csv", classifier=object())  # the classifier is never asked for multi-label data
    assert doc["task"] == "multi" and doc["n_usable"] == 20 and len(doc["unreadable"]) == 1
    assert doc["counts"] == {"train": {"cat": 12, "dog": 4, "grass": 12, "never": 0},
                             "val": {"cat": 0, "dog": 2, "grass": 0, "never": 0},
                             "test": {"cat": 1, "dog": 1, "grass": 2, "never": 0}}
    assert doc["empty_classes"] == ["never"]
    ml = doc["multilabel"]
    assert ml["cardinality"] == {"images": 20, "mean": pytest.approx(34 / 20), "max": 3,
                                 "images_with": {"0": 3, "1": 4, "2": 9, "3+": 4}}
    assert ml["by_split"]["val"]["images_with"] == {"0": 1, "1": 2, "2": 0, "3+": 0}
    assert [(r["label"], r["images"]) for r in ml["rare_labels"]] == [("never", 0), ("dog", 7)]
    assert ml["rare_labels"][1]["by_split"] == {"train": 4, "val": 2, "test": 1}
    co = ml["cooccurrence"]
    assert co["counts"] == [[13, 5, 12, 0], [5, 7, 4, 0], [12, 4, 14, 0], [0, 0, 0, 0]]
    assert co["conditional"][0][2] == pytest.approx(12 / 13)
    assert co["conditional"][2][0] == pytest.approx(12 / 14)
    assert co["conditional"][1][0] == pytest.approx(5 / 7) and co["conditional"][3] == [None] * 4
    pairs = [(p["a"], p["b"], p["images"]) for p in co["top_pairs"]]
    assert pairs == [("cat", "grass", 12), ("cat", "dog", 5), ("dog", "grass", 4)]
    assert "label_issues" not in doc and "single-label data only" in doc["label_issues_skipped"]


def test_rare_labels_include_a_label_under_one_percent_of_images():
    y = np.zeros((1100, 3), dtype=np.int64)
    y[:10, 0] = 1  # 10 images: not under 10, but 0.9 % of 1,100
    y[:12, 1] = 1  # 12 images, 1.09 %: not rare
    y[:9, 2] = 1  # 9 images: rare
    rare = _rare_labels(y, ["a", "b", "c"], {"all": np.ones(1100, dtype=bool)})
    assert [r["label"] for r in rare] == ["c", "a"]


def test_multilabel_duplicates_compare_label_sets(tmp_path):
    a = _png(tmp_path / "a.png", 1)
    shutil.copy(a, tmp_path / "same_set.png")
    b = _png(tmp_path / "b.png", 2)
    shutil.copy(b, tmp_path / "other_set.png")
    items = [Item(a, -1, "train", labels=(2, 0)),
             Item(str(tmp_path / "same_set.png"), -1, "train", labels=(0, 2)),
             Item(b, -1, "train", labels=(1,)),
             Item(str(tmp_path / "other_set.png"), -1, "train", labels=())]
    doc = audit_manifest(Manifest(["x", "y", "z"], items, task="multi"))
    groups = {frozenset(g["labels"]): g["conflicting_labels"] for g in doc["exact_duplicates"]}
    assert groups == {frozenset({"x;z"}): False, frozenset({"y", ""}): True}


def test_summary_and_inspect_page_show_the_multilabel_section(multi_manifest):
    doc = audit_manifest(multi_manifest, classifier=object())
    lines = summary_lines(doc)
    assert "20 usable images in 4 labels (multi-label)" in lines[0]
    assert ("Labels per image: mean 1.70, at most 3; 3 images with no label, 4 with 1, 9 with 2, "
            "4 with 3 or more") in lines
    assert "Rare labels (under 10 images or 1% of them): never (0), dog (7)" in lines
    top = ("Labels seen together most often: cat & grass on 12 images (P(grass | cat) 0.92, "
           "P(cat | grass) 0.86)")
    assert any(line.startswith(top) for line in lines)
    assert doc["label_issues_skipped"] in lines
    html = build_inspect_page(doc)
    part = _section(html, "Multi-label")
    assert "<td>all</td><td>20</td><td>1.70</td><td>3</td><td>4</td><td>9</td><td>4</td><td>3</td>" in part
    assert "<td>dog</td><td>7</td><td>35.00%</td><td>4</td><td>2</td><td>1</td>" in part
    assert "<td>cat</td><td>grass</td><td>12</td><td>0.92</td><td>0.86</td>" in part
    for alt in ("label co-occurrence, counts", "label co-occurrence, P(column | row)"):
        assert min(_figure(part, alt).size) > 100
    assert "<h2>Images per label and split</h2>" in html and "<th>label</th>" in html
    assert "Not looked for in multi-label data." in _section(html, "Likely label errors")
