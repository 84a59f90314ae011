"""Figures for the HTML pages, drawn with matplotlib's Agg backend (no display needed) -> PNG bytes."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

STAGE_COLOURS = {"head": "#4c72b0", "fine-tune": "#dd8452"}
plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                     "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 100})


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", dpi=110)
    plt.close(fig)
    return buf.getvalue()


MULTI_SCORES = (("val_map", "mAP"), ("val_macro_f1", "macro-F1"), ("val_micro_f1", "micro-F1"))


def training_curves(history: list[dict], scores: tuple[tuple[str, str], ...] | None = None,
                    score_title: str = "validation accuracy") -> bytes:
    """Loss, validation score and learning rate per epoch, both stages on one time line.

    `scores` are the (history key, legend name) pairs of the middle panel; by default the single-label
    accuracy and, where recorded, balanced accuracy. Given explicitly, each key is drawn where present."""
    if scores is None:
        return _training_curves(history, _single_score_lines, score_title)

    def draw(ax, x, rows, c, stage):
        _score_lines(ax, x, rows, c, stage, scores)
    return _training_curves(history, draw, score_title)


def _single_score_lines(ax, x: list[int], rows: list[dict], c: str, stage: str) -> None:
    """The single-label middle panel: accuracy always, balanced accuracy where the history has it."""
    ax.plot(x, [r["val_accuracy"] for r in rows], color=c, marker="." if len(x) < 30 else None,
            label=f"{stage} accuracy")
    if "val_balanced_accuracy" in rows[0]:
        ax.plot(x, [r["val_balanced_accuracy"] for r in rows], color=c, ls=":",
                label=f"{stage} balanced acc.")


def _score_lines(ax, x: list[int], rows: list[dict], c: str, stage: str,
                 scores: tuple[tuple[str, str], ...]) -> None:
    """One line per score key the history records (the first solid, the others dotted or dash-dotted)."""
    styles = ("-", ":", "-.", (0, (1, 3)))
    for k, (key, name) in enumerate(scores):
        points = [(xi, r[key]) for xi, r in zip(x, rows) if r.get(key) is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], color=c, ls=styles[k % len(styles)],
                    marker="." if k == 0 and len(points) < 30 else None, label=f"{stage} {name}")


def _training_curves(history: list[dict], draw_scores, score_title: str) -> bytes:
    """The three panels; `draw_scores(ax, x, rows, colour, stage)` draws a stage's validation scores."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    x0 = 0
    for stage in ("head", "fine-tune"):
        rows = [r for r in history if r.get("stage") == stage]
        if not rows:
            continue
        x = [x0 + r["epoch"] for r in rows]
        c = STAGE_COLOURS[stage]
        trained = [(xi, r) for xi, r in zip(x, rows) if r.get("loss") is not None]
        axes[0].plot([xi for xi, _ in trained], [r["loss"] for _, r in trained], color=c, label=f"{stage} train",
                     marker="." if len(trained) < 30 else None)
        validated = [(xi, r) for xi, r in zip(x, rows) if r.get("val_loss") is not None]
        axes[0].plot([xi for xi, _ in validated], [r["val_loss"] for _, r in validated], color=c, ls="--",
                     marker="x" if len(validated) < 30 else None, label=f"{stage} val")  # one point shows too
        draw_scores(axes[1], x, rows, c, stage)
        axes[2].plot([xi for xi, _ in trained], [r["lr"] for _, r in trained], color=c, label=stage,
                     marker="." if len(trained) < 30 else None)
        if x0:
            for ax in axes:
                ax.axvline(x0 + 0.5, color="grey", lw=0.8)
        x0 = x[-1]
    for ax, title in zip(axes, ("loss", score_title, "learning rate")):
        ax.set_title(title)
        ax.set_xlabel("epoch (head, then fine-tune)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no tick at 1.5
        if ax.lines:
            ax.legend(fontsize=7)
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    return png(fig)


def per_class_bars(metrics: dict) -> bytes:
    classes = list(metrics["per_class"])
    pcs = metrics["per_class"]
    y = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(6.5, 0.3 * len(classes) + 1.0))
    h = 0.27
    for k, (name, colour) in enumerate((("accuracy", "#4c72b0"), ("precision", "#55a868"), ("f1", "#c44e52"))):
        ax.barh(y + (k - 1) * h, [pcs[c][name] for c in classes], height=h, color=colour,
                label="accuracy (= recall)" if name == "accuracy" else name)
    ax.axvline(metrics["accuracy"], color="black", lw=0.8, ls="--", label=f"overall accuracy {metrics['accuracy']:.3f}")
    ax.set_yticks(y, classes)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, frameon=False)
    return png(fig)


def confusion(cm, classes: list[str], *, normalise: bool) -> bytes:
    cm = np.asarray(cm, dtype=float)
    values = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalise else cm
    n = len(classes)
    side = min(9.0, 1.6 + 0.36 * n)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalise else max(values.max(), 1))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.grid(False)
    ax.set_title("row-normalised (share of each true class)" if normalise else "counts")
    _annotate(ax, values, shares=normalise)
    return png(fig)


def _annotate(ax, values: np.ndarray, *, shares: bool) -> None:
    """Each non-zero cell of a square heat map written in it (a share to 2 decimals, else a count), up to
    25 rows; white on the dark cells."""
    n = len(values)
    if n > 25:
        return
    top = values.max() or 1
    for i in range(n):
        for j in range(n):
            v = values[i, j]
            if v:
                ax.text(j, i, f"{v:.2f}" if shares else f"{int(v)}", ha="center", va="center",
                        fontsize=7 if n > 12 else 8, color="white" if v > 0.6 * top else "black")


def reliability(metrics: dict) -> bytes:
    """Accuracy against confidence per bin, before and (when calibrated) after temperature scaling."""
    panels = [("after calibration", metrics["reliability"], metrics["ece"])]
    if "reliability_uncalibrated" in metrics:
        panels.insert(0, ("before calibration", metrics["reliability_uncalibrated"], metrics["ece_uncalibrated"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (title, r, ece) in zip(axes[0], panels):
        n_bins = len(r["count"])
        edges = np.linspace(0, 1, n_bins + 1)
        acc = [a if a is not None else 0 for a in r["accuracy"]]
        conf = [c if c is not None else 0 for c in r["confidence"]]
        ax.bar(edges[:-1], acc, width=1 / n_bins, align="edge", color="#4c72b0", edgecolor="white",
               label="accuracy")
        shown = [c if n else np.nan for c, n in zip(conf, r["count"])]
        ax.step(edges, [*shown, shown[-1]], where="post", color="#c44e52", lw=1.2, label="mean confidence")
        ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls="--", label="perfectly calibrated")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title}: ECE {ece:.4f}" if title else f"ECE {ece:.4f}")
        ax.legend(fontsize=7, loc="upper left")
    return png(fig)


def split_counts(counts: dict[str, dict[str, int]]) -> bytes:
    """Images per class, stacked by split (the data audit)."""
    classes = sorted({c for per in counts.values() for c in per})
    fig, ax = plt.subplots(figsize=(7.5, 0.3 * len(classes) + 1.2))
    left = np.zeros(len(classes))
    palette = {"train": "#4c72b0", "val": "#55a868", "test": "#dd8452", "all": "#4c72b0"}
    for split, per in counts.items():
        v = np.array([per.get(c, 0) for c in classes], dtype=float)
        ax.barh(classes, v, left=left, color=palette.get(split, "#8172b3"), label=split)
        left += v
    ax.invert_yaxis()
    ax.set_xlabel("images")
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)  # above the bars, never on them
    return png(fig)


def per_label_bars(metrics: dict, order: list[str]) -> bytes:
    """Average precision and F1 per label (multi-label), in `order` from the top; a label without a
    positive image (AP undefined) has no AP bar. Dashed lines: mAP and macro-F1."""
    per = metrics["per_label"]
    y = np.arange(len(order))
    fig, ax = plt.subplots(figsize=(6.5, 0.3 * len(order) + 1.0))
    h = 0.38
    ap = [per[n].get("ap") for n in order]
    ax.barh(y - h / 2, [np.nan if v is None else v for v in ap], height=h, color="#4c72b0",
            label="average precision")
    ax.barh(y + h / 2, [per[n].get("f1", 0.0) for n in order], height=h, color="#c44e52", label="F1")
    if metrics.get("map") is not None:
        ax.axvline(metrics["map"], color="#4c72b0", lw=0.8, ls="--", label=f"mAP {metrics['map']:.3f}")
    if metrics.get("macro_f1") is not None:
        ax.axvline(metrics["macro_f1"], color="#c44e52", lw=0.8, ls="--",
                   label=f"macro-F1 {metrics['macro_f1']:.3f}")
    ax.set_yticks(y, order)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, frameon=False)
    return png(fig)


def pr_curves(curves: dict[str, dict], ap: dict[str, float | None], *, single_panel_max: int = 8) -> bytes:
    """Precision against recall per label: one panel with a line per label when there are at most
    `single_panel_max` labels, else small multiples (one panel per label). `ap` goes in the legend."""
    names = [n for n in curves if curves[n].get("recall")]
    if len(names) <= single_panel_max:
        fig, ax = plt.subplots(figsize=(5.6, 4.2))
        for n in names:
            ax.plot(curves[n]["recall"], curves[n]["precision"], lw=1.2,
                    label=f"{n} (AP {_ap_text(ap.get(n))})")
        _pr_axes(ax, "precision-recall per label")
        if names:
            ax.legend(fontsize=7, loc="lower left")
        return png(fig)
    cols = 6
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.0 * rows), squeeze=False, sharex=True,
                             sharey=True)
    for ax, n in zip(axes.flat, names):
        ax.plot(curves[n]["recall"], curves[n]["precision"], lw=1.1, color="#4c72b0")
        _pr_axes(ax, f"{n}: AP {_ap_text(ap.get(n))}", labels=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    fig.supxlabel("recall", fontsize=9)
    fig.supylabel("precision", fontsize=9)
    fig.tight_layout()
    return png(fig)


def _pr_axes(ax, title: str, labels: bool = True) -> None:
    """Unit square axes for a precision-recall curve."""
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9 if labels else 8)
    if labels:
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")


def _ap_text(ap: float | None) -> str:
    """An average precision for a legend: three places, or n/a where undefined."""
    return "n/a" if ap is None else f"{ap:.3f}"


def conditional_rates(matrix) -> np.ndarray:
    """P(column | row) = matrix[r][c] / matrix[r][r] from a label co-occurrence matrix (diagonal: the
    label's own count); rows of a label with no image are NaN."""
    m = np.asarray(matrix, dtype=float)
    diag = np.diag(m)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(diag[:, None] > 0, m / np.where(diag > 0, diag, 1)[:, None], np.nan)


def cooccurrence(matrix, labels: list[str], *, conditional: bool) -> bytes:
    """Label co-occurrence heat map: images carrying both labels (the diagonal: the label's own count),
    or the conditional rate P(column | row) = count(row and column) / count(row)."""
    counts = np.asarray(matrix, dtype=float).reshape(len(labels), len(labels))
    values = conditional_rates(counts) if conditional else counts
    n = len(labels)
    side = min(9.0, 1.6 + 0.36 * n)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    shown = np.nan_to_num(values)
    im = ax.imshow(shown, cmap="Purples", vmin=0, vmax=1 if conditional else max(shown.max(), 1))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("label (column)")
    ax.set_ylabel("label (row)")
    ax.grid(False)
    ax.set_title("P(column | row): share of the row label's images that carry the column label"
                 if conditional else "images carrying both labels (diagonal: the label's images)", fontsize=8)
    _annotate(ax, shown, shares=conditional)
    return png(fig)


def learning_curves(curve: dict, classes: list[str], highlight: list[str] | None = None) -> bytes:
    """Per-class accuracy of head fits against training images per class (log scale), overall dashed;
    the `highlight`ed classes in colour, the rest grey."""
    n = np.asarray(curve["train_per_class"], float)
    acc = np.asarray(curve["accuracy"], float)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    shown = set(highlight or classes[:8])
    for j, c in enumerate(classes):
        if c in shown:
            ax.plot(n[:, j], acc[:, j], marker="o", ms=3, lw=1.4, label=c)
        else:
            ax.plot(n[:, j], acc[:, j], color="#b8bec6", lw=0.8)
    ax.plot(n.mean(axis=1), curve["overall"], color="black", ls="--", lw=1, label="overall")
    ax.set_xscale("log")
    ax.set_xlabel("training images per class")
    ax.set_ylabel(f"accuracy on {curve.get('split', 'test')}")
    ax.legend(fontsize=7, loc="lower right", ncol=2, frameon=False)
    return png(fig)
