"""The multi-label benchmark: imgtune's multi-label training against one-vs-rest logistic regression on
the same features, on two sets built from real images (benchmarks/multilabel_data.py): 2x2 mosaics of
Fashion-MNIST items and composites of Open Clip Art drawings.

    python benchmarks/multilabel.py                         # both sets, every method, cold caches
    python benchmarks/multilabel.py --quick                 # the small sizes (minutes)
    python benchmarks/multilabel.py --quick --only baseline # the baseline alone
    python benchmarks/multilabel.py --report                # the tables from the results JSON, running nothing

Methods, each in its own process under /usr/bin/time -v with a cold feature cache of its own:

- imgtune: `imgtune train DATA/labels.csv --task multi --out RUN --quiet` with every other default (the
  CSV gives the train/val/test split; imgtune reports on test in RUN/metrics.json);
- imgtune-asl: the same with `--loss asl` (asymmetric loss; the default is bce);
- baseline: scikit-learn StandardScaler + OneVsRestClassifier(LogisticRegressionCV): per label, C by
  5-fold cross-validated average precision over 1e-4..1 (imgtune.train.baselines.PROBE_CS), fitted on
  train + val, on the pooled features of imgtune's default backbone and eval transform (the accuracy
  suite's probe's extraction path); threshold 0.5; scored on test with scikit-learn's metrics, the macro
  means over the labels present in test (as imgtune's are).

Prints markdown tables (mAP, macro-F1, micro-F1, subset accuracy, wall seconds and peak RSS per set and
method, then AP and F1 per label) and keeps each row in the results JSON (--results), keyed by set, sizes
and method: a later run replaces only its own rows. A failed train is a row marked failed, with the last
line of its error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import multilabel_data  # siblings
import numpy as np
from accuracy import _cache, timed

HERE = Path(__file__).resolve().parent
METHODS = ("imgtune", "imgtune-asl", "baseline")
TRAIN_FLAGS = {"imgtune": [], "imgtune-asl": ["--loss", "asl"]}
KEPT = ("task", "classes", "n_images", "map", "macro_f1", "micro_f1", "macro_precision", "macro_recall",
        "micro_precision", "micro_recall", "subset_accuracy", "hamming_loss", "label_cardinality", "per_label",
        "C")  # what a row keeps of a metrics document (not its PR curves or worst images)


def _last_error_line(stderr: str) -> str:
    """The last non-empty line of a child's stderr before /usr/bin/time -v's report."""
    lines = stderr.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(("\tCommand being timed:", "Command exited with non-zero status", "Command terminated by")):
            lines = lines[:i]
            break
    lines = [x.strip() for x in lines if x.strip()]
    return lines[-1][:300] if lines else "(no error output)"


def _row(proc, wall, rss, cmd, metrics_path: Path) -> dict:
    row = {"wall": wall, "peak_rss_mib": rss, "command": shlex.join(cmd)}
    if proc.returncode != 0:
        return {**row, "failed": True, "error": f"exit {proc.returncode}: {_last_error_line(proc.stderr)}"}
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, ValueError) as e:
        return {**row, "failed": True, "error": f"no readable {metrics_path.name}: {e}"}
    if metrics.get("task") != "multi" or "map" not in metrics:
        return {**row, "failed": True, "error": f"{metrics_path.name} is not a multi-label document "
                                                f"(task {metrics.get('task')!r})"}
    return {**row, "metrics": {k: metrics[k] for k in KEPT if k in metrics}}


def run_train(data: Path, args, set_name: str, method: str) -> dict:
    run = args.out / "runs" / f"{args.label}-{set_name}-{method}"
    shutil.rmtree(run, ignore_errors=True)
    cmd = [sys.executable, "-m", "imgtune", "train", str(data / "labels.csv"), "--task", "multi",
           "--out", str(run), "--cache-dir", str(_cache(args, f"{set_name}-{method}")), "--quiet",
           *TRAIN_FLAGS[method], *shlex.split(args.train_flags)]
    proc, wall, rss = timed(cmd)
    row = _row(proc, wall, rss, cmd, run / "metrics.json")
    if not row.get("failed"):
        config = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
        row.update(seconds=config.get("seconds"), run=str(run))
    return row


def run_baseline(data: Path, args, set_name: str) -> dict:
    out = args.out / "runs" / f"{args.label}-{set_name}-baseline.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(HERE / "multilabel.py"), "--baseline-only", str(data), "--json", str(out),
           "--cache-dir", str(_cache(args, f"{set_name}-baseline"))]
    proc, wall, rss = timed(cmd)
    return _row(proc, wall, rss, cmd, out)


def features(paths: list[str], cache_dir: Path) -> np.ndarray:
    """Pooled features [N, D] of imgtune's default backbone through imgtune's own extraction path and
    cache (NaN rows: images it could not read), as the accuracy suite's probe takes them."""
    import functools

    import torch

    from imgtune.cache.features import FeatureCache, extract_features
    from imgtune.model.backbones import create_backbone
    from imgtune.model.frozen import fast_frozen

    backbone = create_backbone()
    cache = FeatureCache(cache_dir, backbone)
    net = functools.partial(fast_frozen, backbone.model, backbone.data_config.image_size,
                            device=torch.device("cpu"), cache_root=cache_dir,
                            key_info={**cache.key_info, "part": "features"})
    feats, _, _, _ = extract_features(backbone, paths, cache, device=torch.device("cpu"), network=net)
    return feats


def one_vs_rest(x: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0):
    """StandardScaler + OneVsRestClassifier(LogisticRegressionCV): each label's C by k-fold average
    precision over PROBE_CS, refitted on all of x."""
    import inspect
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from imgtune.train.baselines import PROBE_CS

    extra = {}  # scikit-learn >= 1.8 warns unless these are given; older ones lack them
    params = inspect.signature(LogisticRegressionCV).parameters
    if "use_legacy_attributes" in params:
        extra["use_legacy_attributes"] = False
    if params.get("l1_ratios") is not None and params["l1_ratios"].default == "warn":
        extra["l1_ratios"] = (0.0,)
    lr = LogisticRegressionCV(Cs=list(PROBE_CS), cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                              scoring="average_precision", max_iter=500, n_jobs=1, **extra)
    model = make_pipeline(StandardScaler(), OneVsRestClassifier(lr, n_jobs=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(np.asarray(x, np.float64), y)
    return model


def multilabel_scores(y: np.ndarray, probs: np.ndarray, classes: list[str], threshold: float = 0.5) -> dict:
    """imgtune's multi-label metrics document (its headline scores and per_label), computed with
    scikit-learn; the macro means over the labels with a positive in y, as imgtune's."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        f1_score,
        hamming_loss,
        precision_recall_fscore_support,
    )

    pred = (probs >= threshold).astype(int)
    present = np.flatnonzero(y.sum(0) > 0)
    ap = np.full(len(classes), np.nan)
    ap[present] = average_precision_score(y[:, present], probs[:, present], average=None)
    p, r, f, s = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    macro = {m: float(v[present].mean()) for m, v in (("precision", p), ("recall", r))}
    return {
        "task": "multi", "classes": classes, "n_images": len(y),
        "map": float(average_precision_score(y[:, present], probs[:, present], average="macro")),
        "macro_f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(y, pred, average="micro", zero_division=0)),
        "macro_precision": macro["precision"], "macro_recall": macro["recall"],
        "subset_accuracy": float(accuracy_score(y, pred)),
        "hamming_loss": float(hamming_loss(y, pred)),
        "label_cardinality": {"true": float(y.sum(1).mean()), "predicted": float(pred.sum(1).mean())},
        "per_label": {c: {"ap": None if np.isnan(ap[j]) else float(ap[j]), "precision": float(p[j]),
                          "recall": float(r[j]), "f1": float(f[j]), "support": int(s[j]),
                          "predicted": int(pred[:, j].sum()), "threshold": threshold}
                      for j, c in enumerate(classes)},
    }


def baseline_only(data: Path, out: Path, cache_dir: Path) -> None:
    """The baseline in this process: features of every listed image, the one-vs-rest fit on train + val,
    its scores on test, written to `out`."""
    rows = multilabel_data.read_labels(data)
    classes = sorted({x for _, labels, _ in rows for x in labels})
    y = np.array([[c in labels for c in classes] for _, labels, _ in rows], int)
    split = np.array([s for _, _, s in rows])
    feats = features([p for p, _, _ in rows], cache_dir)
    ok = ~np.isnan(feats).any(1)
    fit, test = ok & np.isin(split, ["train", "val"]), ok & (split == "test")
    model = one_vs_rest(feats[fit], y[fit])
    probs = model.predict_proba(feats[test].astype(np.float64))
    m = multilabel_scores(y[test], probs, classes)
    m["C"] = {c: float(np.ravel(e.C_)[0]) for c, e in zip(classes, model[-1].estimators_)}
    m["skipped"] = int((~ok).sum())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(m))


def _f(v, spec=".4f") -> str:
    return "—" if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
    lines = ["| data set | method | mAP | macro-F1 | micro-F1 | subset accuracy | wall s | peak RSS MiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        wall = f"{r['wall']:.0f}" if r.get("wall") else "—"
        rss = f"{r['peak_rss_mib']:,.0f}" if r.get("peak_rss_mib") else "—"
        if r.get("failed"):
            err = r["error"].replace("|", "\\|")
            lines.append(f"| {r['set']} | {r['method']} | failed: {err} | — | — | — | {wall} | {rss} |")
            continue
        m = r["metrics"]
        lines.append(f"| {r['set']} | {r['method']} | {m['map']:.4f} | {m['macro_f1']:.4f} | {m['micro_f1']:.4f} | "
                     f"{m['subset_accuracy']:.4f} | {wall} | {rss} |")
    return "\n".join(lines)


def per_label_tables(rows: list[dict]) -> str:
    out = []
    for s in dict.fromkeys(r["set"] for r in rows):
        mine = [r for r in rows if r["set"] == s and not r.get("failed")]
        if not mine:
            continue
        classes = mine[0]["metrics"]["classes"]
        out += [f"\n{s}, per label: AP / F1 (test support):", "",
                "| label | support | " + " | ".join(f"{r['method']} AP | {r['method']} F1" for r in mine) + " |",
                "| --- | --- | " + " | ".join("--- | ---" for _ in mine) + " |"]
        for c in classes:
            cells = []
            for r in mine:
                pl = r["metrics"]["per_label"].get(c)
                cells.append(f"{_f(pl['ap'], '.3f')} | {pl['f1']:.3f}" if pl else "— | —")
            sup = mine[0]["metrics"]["per_label"][c]["support"]
            out.append(f"| {c} | {sup} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def verdicts(rows: list[dict]) -> str:
    """Per set and imgtune method: at or above the baseline in mAP and macro-F1?"""
    out = []
    for s in dict.fromkeys(r["set"] for r in rows):
        base = next((r for r in rows if r["set"] == s and r["method"] == "baseline" and not r.get("failed")), None)
        for r in rows:
            if r["set"] != s or r["method"] == "baseline" or base is None:
                continue
            if r.get("failed"):
                out.append(f"{s} {r['method']}: failed")
                continue
            dm = r["metrics"]["map"] - base["metrics"]["map"]
            df = r["metrics"]["macro_f1"] - base["metrics"]["macro_f1"]
            ok = "meets" if dm >= 0 and df >= 0 else "BELOW"
            out.append(f"{s} {r['method']}: {ok} the target (mAP {dm:+.4f}, macro-F1 {df:+.4f} vs baseline)")
    return "\n".join(out)


def load_results(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {"rows": []}


def save_row(path: Path, row: dict) -> None:
    """Replace the row of the same set, sizes and method, keep the others."""
    doc = load_results(path)
    key = (row["set"], row["sizes"], row["method"])
    doc["rows"] = [r for r in doc["rows"] if (r["set"], r["sizes"], r["method"]) != key] + [row]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")


def selected(doc: dict, args) -> list[dict]:
    sizes = "quick" if args.quick else "full"
    order = {(s, m): i for i, (s, m) in enumerate((s, m) for s in args.sets.split(",") for m in args.methods.split(","))}
    rows = [r for r in doc["rows"] if r["sizes"] == sizes and (r["set"], r["method"]) in order]
    return sorted(rows, key=lambda r: order[(r["set"], r["method"])])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", default=",".join(multilabel_data.SETS))
    p.add_argument("--methods", "--only", default=",".join(METHODS), help=f"any of {', '.join(METHODS)}")
    p.add_argument("--quick", action="store_true", help="the small sizes of multilabel_data.SIZES")
    p.add_argument("--train-flags", default="", help="extra flags for every imgtune train")
    p.add_argument("--label", default="multilabel", help="names the runs (default: multilabel)")
    p.add_argument("--data", type=Path, default=Path("benchmarks/data"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/multilabel"))
    p.add_argument("--results", type=Path, default=HERE / "multilabel_results.json")
    p.add_argument("--warm-cache", metavar="DIR", help="share one feature cache between runs (development only: "
                                                       "wall times then leave extraction out)")
    p.add_argument("--report", action="store_true", help="run nothing: print the tables from --results")
    p.add_argument("--baseline-only", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.baseline_only:
        return baseline_only(args.baseline_only, args.json, args.cache_dir)
    if args.report:
        rows = selected(load_results(args.results), args)
        print(table(rows), per_label_tables(rows), "", verdicts(rows), sep="\n")
        return
    for m in args.methods.split(","):
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}: expected {', '.join(METHODS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    sizes = "quick" if args.quick else "full"
    machine = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    rows = []
    for s in args.sets.split(","):
        data = multilabel_data.prepare(s, args.data, quick=args.quick)
        print(f"{s}: {multilabel_data.summary(data)}", flush=True)
        for method in args.methods.split(","):
            r = run_baseline(data, args, s) if method == "baseline" else run_train(data, args, s, method)
            r.update(set=s, method=method, sizes=sizes, split_sizes=multilabel_data.SIZES[s][sizes],
                     label=args.label, date=time.strftime("%Y-%m-%d"), **machine)
            rows.append(r)
            save_row(args.results, r)
            print(table([r]).splitlines()[-1], flush=True)
    print(f"\nMachine: {machine['machine']}, {machine['cpus']} CPUs, Python {machine['python']}")
    print(table(rows))
    print(per_label_tables(rows))
    if v := verdicts(rows):
        print("\n" + v)


if __name__ == "__main__":
    main()
