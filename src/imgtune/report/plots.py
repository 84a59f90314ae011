"""Figures for the HTML pages, drawn with matplotlib's Agg backend (no display needed) -> PNG bytes."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STAGE_COLOURS = {"head": "#4c72b0", "fine-tune": "#dd8452"}
plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                     "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 100})


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def training_curves(history: list[dict]) -> bytes:
    """Loss, validation score and learning rate per epoch, both stages on one time line."""
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
        axes[0].plot(x, [r["val_loss"] for r in rows], color=c, ls="--", label=f"{stage} val")
        axes[1].plot(x, [r["val_accuracy"] for r in rows], color=c, marker="." if len(x) < 30 else None,
                     label=f"{stage} accuracy")
        if "val_balanced_accuracy" in rows[0]:
            axes[1].plot(x, [r["val_balanced_accuracy"] for r in rows], color=c, ls=":",
                         label=f"{stage} balanced acc.")
        axes[2].plot([xi for xi, _ in trained], [r["lr"] for _, r in trained], color=c, label=stage,
                     marker="." if len(trained) < 30 else None)
        if x0:
            for ax in axes:
                ax.axvline(x0 + 0.5, color="grey", lw=0.8)
        x0 = x[-1]
    for ax, title in zip(axes, ("loss", "validation accuracy", "learning rate")):
        ax.set_title(title)
        ax.set_xlabel("epoch (head, then fine-tune)")
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
    if n <= 25:
        top = values.max() or 1
        for i in range(n):
            for j in range(n):
                v = values[i, j]
                if v:
                    ax.text(j, i, f"{v:.2f}" if normalise else f"{int(v)}", ha="center", va="center",
                            fontsize=7 if n > 12 else 8, color="white" if v > 0.6 * top else "black")
    return png(fig)


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
    ax.legend(fontsize=7)
    return png(fig)
