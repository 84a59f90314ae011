"""The parts of a run's report that single- and multi-label runs share: the Run table, a stage's
training summary, and an evaluation beside training's record."""

from __future__ import annotations

from .html import section, table


def number(value, spec: str = ".4f") -> str:
    """A number formatted, or a dash where it is missing (None, or absent from the document)."""
    return "—" if value is None else format(value, spec)


def beside_training(m: dict, training: dict | None) -> str:
    """This evaluation and training's record (its test split), side by side."""
    if not training or training.get("task") != m.get("task"):
        return ""
    keys = [("map", "mAP"), ("macro_f1", "macro-F1")] if m.get("task") == "multi" else \
        [("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("balanced_accuracy", "balanced accuracy")]
    rows = [[name, f"{doc.get('n_images', 0):,}"] + [number(doc.get(k)) for k, _ in keys]
            for name, doc in ((f"this evaluation: {m.get('source') or 'these images'}", m),
                              (f"training's record: its {training.get('split') or 'test'} split", training))]
    return section("This evaluation beside training's record", table(["", "images"] + [n for _, n in keys], rows),
                   note="Training's metrics.json and report.html are kept as training wrote them.")



def run_rows(config: dict, *, decisions: str, temperature: str, multi: bool = False) -> list[list]:
    """The key-value rows of the Run section, with the decisions and temperature as the report words them;
    multi-label runs name labels."""
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
        ["decisions", decisions],
        ["temperature", temperature],
        ["times", ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()) or "?"],
        ["versions", ", ".join(f"{k} {v}" for k, v in config.get("versions", {}).items())],
    ]
    return rows


def stage_summary(stage: str, rows: list[dict], key: str, name: str) -> str:
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

