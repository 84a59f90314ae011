"""The model card (README.md in Hugging Face's format) of a timm export, built from the run's config.json
and metrics.json: every figure in it is read from them, none is written here. Formatting only."""

from __future__ import annotations

import json
from pathlib import Path

WEAKEST = 3  # classes named under "Known weak classes"
SPLITS = ("train", "val", "test")
_COLUMNS = {"ap": "AP", "f1": "F1", "accuracy": "accuracy", "precision": "precision", "recall": "recall",
            "support": "support", "predicted": "predicted", "threshold": "threshold"}


def model_card(config: dict, metrics: dict | None, *, timm_config: dict, folder: Path,
               split_counts: dict | None = None, name: str = "model") -> str:
    """README.md for an export folder. `config`: the run's config.json; `metrics`: its metrics.json (None
    when it has none); `timm_config`: the exported config.json; `split_counts`: {split: {"images": n,
    "classes": {class: n}}} from the run's split.csv."""
    card = _Card(config, metrics or {}, timm_config, Path(folder), split_counts, name)
    return "\n".join(part for part in (card.header(), card.title(), card.description(), card.data(),
                                       card.labels(), card.recipe(), card.evaluation(), card.calibration(),
                                       card.weak(), card.use(), card.loading()) if part) + "\n"


def _q(s) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is a subset of it)."""
    return json.dumps(str(s), ensure_ascii=False)


def _cell(v) -> str:
    """A Markdown table cell: a figure to 4 places, or text with its pipes escaped."""
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _code(s) -> str:
    return f"`{str(s).replace('`', '')}`"


def _table(header: list[str], rows: list[list], align: list[str] | None = None) -> str:
    align = align or ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class _Card:
    def __init__(self, config, metrics, timm_config, folder, split_counts, name):
        self.c, self.m, self.t, self.folder, self.splits, self.name = \
            config, metrics, timm_config, folder, split_counts, name
        self.classes = list(config.get("classes", timm_config.get("label_names", [])))
        self.multi = config.get("task") == "multi"
        self.arch = timm_config["architecture"]
        self.info = timm_config.get("imgtune", {})
        self.kind = "label" if self.multi else "class"
        self.kinds = "labels" if self.multi else "classes"
        self.per_class = self.m.get("per_label" if self.multi else "per_class") or {}

    # -- metadata -----------------------------------------------------------------------------
    def header(self) -> str:
        tags = ["image-classification", "timm", "imgtune"] + (["multi-label-classification"] if self.multi else [])
        names = [("map", "mAP"), ("macro_f1", "macro-F1"), ("subset_accuracy", "subset accuracy")] if self.multi \
            else [("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro-F1")]
        ids = {"map": "mean_average_precision", "macro_f1": "f1", "subset_accuracy": "accuracy",
               "accuracy": "accuracy", "balanced_accuracy": "balanced_accuracy"}
        lines = ["---", "library_name: timm", "tags:", *[f"- {t}" for t in tags], "pipeline_tag: image-classification"]
        base = self._timm_weights()
        if base:
            lines.append(f"base_model: {_q(base)}")
        have = [(k, label) for k, label in names if isinstance(self.m.get(k), (int, float))]
        if have:
            lines += ["metrics:", *[f"- {i}" for i in dict.fromkeys(ids[k] for k, _ in have)]]
            split = self.m.get("split", "test")
            data = str(self.c.get("data", "data"))
            lines += ["model-index:", f"- name: {_q(self.name)}", "  results:", "  - task:",
                      "      type: image-classification", "      name: Image Classification", "    dataset:",
                      f"      name: {_q(Path(data).name or data)}",
                      f"      type: {'csv' if data.lower().endswith('.csv') else 'imagefolder'}",
                      f"      split: {_q(split)}", "    metrics:"]
            for k, label in have:
                lines += [f"    - type: {ids[k]}", f"      value: {float(self.m[k])!r}",
                          f"      name: {_q(f'{split} {label}')}"]
        return "\n".join(lines + ["---", ""])

    def _timm_weights(self) -> str | None:
        """A Hugging Face id for the backbone's weights when they are timm's own from the hub."""
        parts = str(self.c.get("weights", "")).split(":")
        if len(parts) == 3 and parts[0] == "timm" and parts[2]:
            return f"timm/{parts[1]}.{parts[2]}"
        return None

    def _weights(self) -> str:
        w = str(self.c.get("weights", ""))
        kind, _, rest = w.partition(":")
        if kind == "random":
            return "none: trained from a random initialisation"
        if kind == "timm":
            return f"timm's {_code(rest.replace(':', '.').rstrip('.'))} (ImageNet)"
        if kind == "file":
            return f"a local safetensors file (sha256 {rest}...)"
        if kind.endswith("_pytorch_model"):
            return f"ImageNet, from the PyPI package {_code(kind.replace('_', '-'))} (sha256 {rest}...)"
        return _code(w) if w else "not recorded"

    # -- sections -----------------------------------------------------------------------------
    def title(self) -> str:
        what = f"{len(self.classes)} labels (multi-label)" if self.multi else f"{len(self.classes)} classes"
        return (f"# {self.name}\n\nAn image classifier for {what}, trained with imgtune "
                f"{self.c.get('versions', {}).get('imgtune', '')} and exported for timm "
                f"{self.info.get('timm', '')}: {_code(self.arch)} with its classifier for these "
                f"{self.kinds}.\n")

    def description(self) -> str:
        d = self.c.get("data_config", {})
        size = d.get("image_size")
        head = ((self.c.get("head_selection") or {}).get("description")
                or f"{self.c.get('head', {}).get('kind', '')} head")
        ft = self.c.get("finetune") or {}
        tuned = "the last blocks fine-tuned" if ft.get("kept") else "the backbone frozen"
        out = ("a sigmoid per label (multi-label): each label is given or not on its own" if self.multi else
               "a softmax over the classes: one class per image")
        recipe = self.c.get("recipe") or {}
        return "\n".join([
            "## Model description", "",
            (f"- **Architecture:** timm {_code(self.arch)} (imgtune backbone {_code(self.c.get('backbone', ''))}), "
             f"{self.t.get('num_features', '')} pooled features into "
             f"{_code(self.t['pretrained_cfg'].get('classifier'))}, a linear layer with {len(self.classes)} outputs."),
            f"- **Pretrained weights:** {self._weights()}.",
            f"- **Trained:** {head}, {tuned}.",
            (f"- **Input:** RGB, {size} x {size} pixels: the shorter side resized to {size} "
             f"({d.get('interpolation', 'bicubic')}), the centre cropped, scaled to 0..1, then (x - mean) / std with "
             f"mean {d.get('mean')} and std {d.get('std')}. config.json's pretrained_cfg says so to timm "
             "(crop_pct 1.0), so timm's `resolve_data_config` + `create_transform` preprocess as imgtune did."),
            f"- **Output:** {len(self.classes)} logits, {out}.",
            (f"- **Recipe:** imgtune's {_code(recipe.get('name', 'default'))}, choices made for "
             f"{str(recipe.get('metric', self.info.get('metric', 'accuracy'))).replace('_', ' ')}."), ""])

    def data(self) -> str:
        data = self.c.get("data", "")
        counts = self.c.get("counts") or {}
        lines = ["## Training data", "",
                 (f"Source: {_code(data)} ({'a CSV file' if str(data).lower().endswith('.csv') else 'a folder'}). "
                  f"{sum(counts.values()):,} images used, {self.c.get('skipped', 0):,} skipped (unreadable or not "
                  "images)."), ""]
        splits = [s for s in SPLITS if s in (self.splits or counts)]
        if self.splits:
            rows = [[c, *[self.splits[s]["classes"].get(c, 0) for s in splits],
                     sum(self.splits[s]["classes"].get(c, 0) for s in splits)] for c in self.classes]
            rows.append(["all images", *[self.splits[s]["images"] for s in splits],
                         sum(self.splits[s]["images"] for s in splits)])
            per = "images carrying each label" if self.multi else "images per class"
            lines += [f"{per.capitalize()} and split:", "", _table([self.kind, *splits, "total"], rows)]
        else:
            lines += [_table(["split", "images"], [[s, counts[s]] for s in splits]), ""]
            cc = self.c.get("class_counts") or {}
            if cc:
                lines += [_table([self.kind, "images"], [[c, cc.get(c, 0)] for c in self.classes])]
        return "\n".join(lines + [""])

    def labels(self) -> str:
        return "\n".join([f"## {'Labels' if self.multi else 'Classes'}", "",
                          "Index in the logits, as config.json's `label_names` lists them.", "",
                          _table(["index", self.kind], [[i, c] for i, c in enumerate(self.classes)],
                                 ["---:", "---"]), ""])

    def recipe(self) -> str:
        r = self.c.get("recipe") or {}
        d = self.c.get("data_config") or {}
        sel = self.c.get("head_selection") or {}
        head = self.c.get("head") or r.get("head") or {}
        rows = [["recipe", r.get("name", "default")], ["metric optimised", r.get("metric", "")],
                ["image size", d.get("image_size", "")], ["head", head.get("kind", "")]]
        if sel.get("description"):
            rows.append(["head selection", (f"{sel['description']}, by {sel.get('folds', '')}-fold cross-validation "
                                            f"on {sel.get('images', '')} images")])
        elif head.get("kind") in ("linear", "mlp"):
            rows.append(["head training", (f"{head.get('optimizer')} lr {head.get('lr')}, {head.get('epochs')} "
                                           f"epochs, batch {head.get('batch_size')}, dropout {head.get('dropout')}")])
        ft, f = r.get("finetune") or {}, self.c.get("finetune") or {}
        if ft.get("epochs"):
            rows += [["fine-tune epochs", ft.get("epochs")], ["unfrozen block groups", ft.get("unfreeze")],
                     ["learning rates", f"blocks {ft.get('lr')}, head {ft.get('head_lr')}"],
                     ["optimiser", (f"{ft.get('optimizer')}, weight decay {ft.get('weight_decay')}, "
                                    f"{ft.get('schedule')} schedule")],
                     ["batch size", ft.get("batch_size")], ["augmentation", ft.get("augment")]]
        if f.get("reason"):
            rows.append(["fine-tuning", ("kept: " if f.get("kept") else "not kept: ") + f["reason"]])
        if self.multi and r.get("multi_loss"):
            rows.append(["loss", r["multi_loss"]])
        rows.append(["seed", self.c.get("seed", 0)])
        total = (self.c.get("seconds") or {}).get("total")
        if isinstance(total, (int, float)):
            rows.append(["training time", f"{total:.1f} s"])
        v = self.c.get("versions") or {}
        if v:
            rows.append(["versions", ", ".join(f"{k} {x}" for k, x in v.items())])
        return "\n".join(["## Training recipe", "", _table(["setting", "value"], rows, ["---", "---"]), ""])

    def evaluation(self) -> str:
        lines = ["## Evaluation", ""]
        if not self.m:
            return "\n".join(lines + ["The run has no metrics.json: it was not evaluated.", ""])
        split, n = self.m.get("split", "test"), self.m.get("n_images", 0)
        keys = [("map", "mAP"), ("macro_f1", "macro-F1"), ("micro_f1", "micro-F1"),
                ("subset_accuracy", "subset accuracy"), ("hamming_loss", "Hamming loss")] if self.multi else \
            [("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro-F1")]
        figures = ", ".join(f"{label} {self.m[k]:.4f}" for k, label in keys if isinstance(self.m.get(k), (int, float)))
        lines.append(f"On the {split} split ({n:,} images): {figures}.")
        top = {k: v for k, v in (self.m.get("top_k_accuracy") or {}).items() if str(k) != "1"}
        if top:
            lines[-1] += " " + ", ".join(f"top-{k} accuracy {v:.4f}" for k, v in top.items()) + "."
        if self.per_class:
            cols = [k for k, v in next(iter(self.per_class.values())).items() if isinstance(v, (int, float))]
            rows = [[c, *[self.per_class.get(c, {}).get(k) for k in cols]] for c in self.classes if c in self.per_class]
            lines += ["", f"Per {self.kind} on the {split} split:", "",
                      _table([self.kind, *[_COLUMNS.get(k, k) for k in cols]], rows)]
        return "\n".join(lines + [""])

    def calibration(self) -> str:
        cal = self.c.get("calibration") or {}
        t = self.c.get("temperature", self.info.get("temperature"))
        where = f" (fitted on {cal['fitted_on']})" if cal.get("fitted_on") else ""
        lines = ["## Calibration", ""]
        if self.multi:
            thr = self.c.get("thresholds") or []
            lines += [(f"A temperature per label{where}: probability = sigmoid(logit / temperature); a label is "
                       "given where its probability reaches its threshold. Neither is part of timm's model: both are "
                       "in config.json under `imgtune` (`temperature`, `thresholds`)."), "",
                      _table(["label", "temperature", "threshold"],
                             [[c, float(t[i]) if isinstance(t, list) else t, float(thr[i]) if i < len(thr) else None]
                              for i, c in enumerate(self.classes)])]
            rows = [["validation binary cross-entropy", cal.get("val_bce_before"), cal.get("val_bce_after")]]
        else:
            lines.append(f"Temperature scaling: T = {float(t):.4f}{where}. It is not part of timm's model: the "
                         "calibrated probabilities are softmax(logits / T), with T from config.json's "
                         "`imgtune.temperature`.")
            offsets = self.info.get("decision_offsets") or []
            moved = [(c, b) for c, b in zip(self.classes, offsets) if b]
            if moved:
                lines.append("\nDecision offsets (added to the logits so that argmax decides for "
                             f"{str(self.info.get('metric', 'accuracy')).replace('_', ' ')}): "
                             + ", ".join(f"{c} {b:+.4f}" for c, b in moved)
                             + ". They are already in the classifier's bias, so argmax(logits) is imgtune's decision; "
                             "config.json lists them under `imgtune.decision_offsets` for reference.")
            else:
                lines.append("\nNo decision offsets were fitted (all zero): argmax(logits) decides.")
            rows = [[f"ECE, {cal.get('held_out') or 'validation'}", cal.get("val_ece_before"), cal.get("val_ece_after")],
                    [f"ECE, {self.m.get('split', 'test')}", self.m.get("ece_uncalibrated"), self.m.get("ece")]]
        rows = [r for r in rows if r[1] is not None or r[2] is not None]
        if rows:
            lines += ["", _table(["", "before", "after"], rows)]
        return "\n".join(lines + [""])

    def weak(self) -> str:
        lines = [f"## Known weak {self.kinds}", ""]
        if not self.per_class:
            return "\n".join(lines + ["No per-class figures: the run was not evaluated.", ""])
        second = "ap" if self.multi else "accuracy"
        scored = sorted(((v.get("f1", 0.0), v.get(second, 0.0), c) for c, v in self.per_class.items()))
        split = self.m.get("split", "test")
        if scored[0][:2] == scored[-1][:2]:
            lines.append(f"None stands out: every {self.kind} has F1 {scored[0][0]:.4f} on the {split} split "
                         f"({self.m.get('n_images', 0):,} images).")
        else:
            lines.append(f"The lowest F1 on the {split} split:")
            lines.append("")
            for f1, s, c in scored[:min(WEAKEST, len(scored) - 1)]:
                sup = self.per_class[c].get("support")
                lines.append(f"- **{_cell(c)}**: F1 {f1:.4f}, {_COLUMNS[second]} {s:.4f}"
                             + (f" ({sup} {split} image{'' if sup == 1 else 's'})" if sup is not None else ""))
        confused = self.m.get("most_confused") or []
        if confused:
            lines += ["", "Most often confused (true -> predicted):", ""]
            lines += [f"- {_cell(x['true'])} -> {_cell(x['predicted'])}: {x['count']} images "
                      f"({x['share_of_true']:.0%} of {_cell(x['true'])})" for x in confused[:WEAKEST]]
        return "\n".join(lines + [""])

    def use(self) -> str:
        n, k = self.m.get("n_images", 0), len(self.classes)
        source = self.c.get("data", "")
        lines = ["## Intended use and limitations", "",
                 f"- For images like those it was trained on ({_code(source)}), sorted into these {k} {self.kinds}. "
                 + ("Each label is decided on its own; an image may carry none." if self.multi else
                    "Every image gets one of them: there is no \"none of these\", so an image of something else "
                    "still gets a class; its calibrated probability is the guard."),
                 f"- The figures above come from {n:,} {self.m.get('split', 'test')} images"
                 + (f", about {n / k:.0f} per {self.kind}: treat the per-{self.kind} figures as rough."
                    if n and n / k < 100 else "."),
                 ("- Preprocess as config.json's pretrained_cfg says (timm's `resolve_data_config` + "
                  "`create_transform` do); other sizes, crops or normalisation change the outputs."),
                 "- Calibration is not in the weights: apply the temperature" + (" and thresholds" if self.multi else "")
                 + " from config.json's `imgtune` entry, as below.",
                 "- No licence is stated: the terms of the backbone's pretrained weights and of the training data apply.",
                 ""]
        return "\n".join(lines)

    def loading(self) -> str:
        path = str(self.folder)
        read = ("probabilities = torch.sigmoid(logits / temperature)\n"
                "given = [name for name, p, t in zip(labels, probabilities[0], info[\"thresholds\"]) if p >= t]\n"
                "print(given)") if self.multi else \
            ("probabilities = (logits / temperature).softmax(-1)\n"
             "print(labels[logits.argmax(-1).item()], probabilities.max().item())")
        return "\n".join([
            "## How to load with timm", "",
            ("Offline, from this folder (`local-dir:` needs a timm that has it, as the "
             f"{self.info.get('timm', '')} this was exported with does; `pretrained=True` loads the weights):"), "",
            "```python", "import json", "", "import timm", "import torch", "from PIL import Image", "",
            f"folder = {path!r}",
            "model = timm.create_model(\"local-dir:\" + folder, pretrained=True).eval()",
            "# or, with any timm 1.x: the architecture by name, this folder's weights and preprocessing",
            "config = json.load(open(folder + \"/config.json\"))",
            "# model = timm.create_model(config[\"architecture\"], pretrained=True, num_classes=config[\"num_classes\"],",
            "#     pretrained_cfg_overlay={**config[\"pretrained_cfg\"], \"file\": folder + \"/model.safetensors\"})",
            "info, labels = config[\"imgtune\"], config[\"label_names\"]",
            "temperature = torch.tensor(info[\"temperature\"])", "",
            "transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))",
            "x = transform(Image.open(\"image.jpg\").convert(\"RGB\")).unsqueeze(0)",
            "with torch.inference_mode():", "    logits = model(x)", read, "```", "",
            ("The overlay needs `num_classes` (config.json's pretrained_cfg has it): given only `file`, timm takes "
             "the registry's class count, sees it differ and drops this classifier for a random one."), ""])
