"""The diagnosis benchmarks (issue 15), on the accuracy suite's Fashion-MNIST subset (500 training and
200 test images per class, benchmarks/accuracy_data.py):

1. label errors: 5 % of the training labels flipped to another class (seeded), then
   `imgtune train DATA --out RUN --epochs 0` and `imgtune inspect DATA --run RUN` (out-of-fold
   probabilities + confident learning, label_issues.csv) against the rule `inspect --run` used before
   (the run's own model on its training images: given label < 0.2 while another class > 0.6), and the
   same rule on the out-of-fold probabilities; precision and recall among the training images.
2. learning-curve forecast: the curve (heads on 25-100 % of 250 images per class, 3 seeds, C by the head
   selection's cross-validation) forecasts each class's accuracy at 500 per class; a head fitted on
   500 per class measures it. Mean absolute error against the naive forecast "no change".
3. simulated active learning: start with 20 labelled images per class, 5 rounds of 100 more chosen from
   the rest of the 5,000 by imgtune's ranking (its default pool: the n most uncertain; and wider pools
   of 2n and 5n, where margin x distance trades uncertainty for spread) and at random; after each round a
   head (C by cross-validation) is scored on the 2,000 test images. 5 seeds each.

Each part prints a markdown table; every figure goes to the results JSON.

    python benchmarks/diagnosis.py                 # all three
    python benchmarks/diagnosis.py --only curve    # one part (label-errors, curve, active)

(The head's probabilities in part 3 are softmax of its logits, uncalibrated: a temperature does not
change which images are least sure by much, and the simulation fits no validation split.)

The features are the default backbone's at its own input size, read from a feature cache of the
benchmark's own (benchmarks/out/diagnosis/cache): the first part's `train` fills it.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from accuracy_data import fashion_mnist  # noqa: E402

from imgtune.cache.features import FeatureCache, extract_features  # noqa: E402
from imgtune.diagnose import learning_curve  # noqa: E402
from imgtune.diagnose.label_errors import GIVEN_BELOW, OTHER_ABOVE  # noqa: E402
from imgtune.diagnose.next_images import rank_for_labelling  # noqa: E402
from imgtune.infer.calibration import softmax  # noqa: E402
from imgtune.model.backbones import create_backbone  # noqa: E402
from imgtune.model.linear import Search, cross_validate, fit_candidate, logits  # noqa: E402

FLIP_SHARE = 0.05
SEED = 0


def scores(y, pred, k) -> dict:
    from sklearn.metrics import f1_score

    return {"accuracy": float(np.mean(pred == y)), "macro_f1": float(f1_score(y, pred, average="macro")),
            "per_class": [float(np.mean(pred[y == c] == c)) for c in range(k)]}


def flipped_copy(clean: Path, out: Path, share: float, seed: int) -> dict[str, str]:
    """DATA with `share` of the training images moved to another (random) class folder -> {path: true class}."""
    if (out / "flips.json").exists():
        return json.loads((out / "flips.json").read_text())
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(clean, out)
    rng = np.random.default_rng(seed)
    files = sorted((out / "train").glob("*/*.png"))
    classes = sorted(p.name for p in (out / "train").iterdir())
    flips = {}
    for i in rng.choice(len(files), int(round(share * len(files))), replace=False):
        src = files[i]
        wrong = rng.choice([c for c in classes if c != src.parent.name])
        dst = out / "train" / wrong / src.name
        src.rename(dst)
        flips[str(dst.resolve())] = src.parent.name
    (out / "flips.json").write_text(json.dumps(flips))
    return flips


def imgtune(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "imgtune", *args], check=True)


def label_errors(work: Path, cache: Path) -> dict:
    """Each way of finding the flips, on two runs over the flipped data: the head alone (--epochs 0) and
    the default recipe (fine-tuned), whose model has learnt more of its training labels."""
    clean = work / "fashion-mnist"
    if not (clean / ".complete").exists():
        fashion_mnist(clean)
        (clean / ".complete").write_text("")
    data = work / "fmnist-flipped"
    flips = flipped_copy(clean, data, FLIP_SHARE, SEED)
    train = sorted(str(p.resolve()) for p in (data / "train").glob("*/*.png"))
    truth = set(flips)

    def pr(ranked: list[str]) -> dict:
        """Precision and recall of the flagged images, and the precision of the first len(truth) of them
        (the top of the list a person reviews)."""
        ranked = [p for p in ranked if p in set(train)]
        found = set(ranked)
        hit = len(found & truth)
        top = ranked[:len(truth)]
        return {"flagged": len(found), "correct": hit, "precision": hit / len(found) if found else None,
                "recall": hit / len(truth), "precision_at_flips": len(set(top) & truth) / len(truth)}

    def listed(path: Path) -> list[str]:
        with open(path, newline="") as f:
            return [str(Path(r["path"]).resolve()) for r in csv.DictReader(f)]

    methods = {}
    for name, flags in (("head only (--epochs 0)", ("--epochs", "0")), ("default recipe", ())):
        run = work / ("run-flipped" if flags else "run-flipped-default")
        if not (run / "metrics.json").exists():
            shutil.rmtree(run, ignore_errors=True)
            imgtune("train", str(data), "--out", str(run), *flags, "--cache-dir", str(cache), "--quiet")
        inspected = work / f"inspect-{run.name}"
        imgtune("inspect", str(data), "--run", str(run), "--out", str(inspected), "--cache-dir", str(cache), "--quiet")
        # the rule inspect --run used before: the run's own model on its training images
        from imgtune.classifier import ImageClassifier

        clf = ImageClassifier.load(run, quiet=True)
        probs = clf.predict_proba(train)
        given = np.array([clf.classes_.index(Path(p).parent.name) for p in train])
        p_given = probs[np.arange(len(train)), given]
        other = probs.copy()
        other[np.arange(len(train)), given] = -1
        old = [train[i] for i in np.argsort(p_given, kind="stable")
               if p_given[i] < GIVEN_BELOW and other[i].max() > OTHER_ABOVE]
        methods[f"{name}: in-sample rule (before)"] = pr(old)
        if not flags:  # the new ways judge on the backbone's cached features: the same for both runs
            from imgtune.cache.features import frozen_features
            from imgtune.diagnose.label_errors import _rule, out_of_fold_probabilities
            from imgtune.model.linear import head_candidate

            x, _, _ = frozen_features(clf.trained_, train, cache_dir=cache)
            oof, _ = out_of_fold_probabilities(x, given, len(clf.classes_), candidate=head_candidate(clf.trained_))
            methods["out-of-fold rule"] = pr([train[i] for i in _rule(oof, given)])
        methods[f"{name}: out-of-fold + confident learning (inspect --run)"] = pr(listed(inspected / "label_issues.csv"))
        methods[f"{name}: out-of-fold + confident learning (train's label_issues.csv)"] = pr(
            listed(run / "label_issues.csv"))
    return {"train_images": len(train), "flipped": len(truth), "methods": methods}


def features(work: Path, cache: Path) -> tuple:
    clean = work / "fashion-mnist"
    if not (clean / ".complete").exists():
        fashion_mnist(clean)
        (clean / ".complete").write_text("")
    classes = sorted(p.name for p in (clean / "train").iterdir())
    out = []
    backbone = create_backbone()
    for split in ("train", "test"):
        paths = sorted(str(p) for p in (clean / split).glob("*/*.png"))
        y = np.array([classes.index(Path(p).parent.name) for p in paths])
        x, bad, _, _ = extract_features(backbone, paths, FeatureCache(cache, backbone), device=_cpu())
        assert not bad
        out += [x, y]
    return (*out, classes)


def _cpu():
    import torch

    return torch.device("cpu")


def chosen_head(x, y, k, seed):
    sel = cross_validate(x, y, k, Search.plain("accuracy", seed))
    return sel.candidate


def curve_forecast(work: Path, cache: Path, draws: int = 4) -> dict:
    """`draws` random halves (250 per class) of the training images each forecast the per-class accuracy
    of a head on all 500 per class; the forecasts are scored against that head's measured accuracy."""
    x, y, xt, yt, classes = features(work, cache)
    k = len(classes)
    cand = chosen_head(x, y, k, SEED)
    measured = scores(yt, logits(xt, fit_candidate(x, y, k, cand)).argmax(1), k)
    truth = np.array(measured["per_class"])
    forecasts = {"imgtune (exponent shrunk to the overall one)": [], "each class's own exponent": [],
                 "no change": []}
    at_250, overall_250, exponents = [], [], []
    for draw in range(draws):
        half = learning_curve.subsample(y, 0.5, np.random.default_rng([SEED, draw]))
        c = chosen_head(x[half], y[half], k, SEED)
        curve = learning_curve.measure(x[half], y[half], xt, yt, k, candidate=c, seed=draw)
        rows = {r["class"]: r for r in learning_curve.forecast(curve, classes)}
        now = np.array([rows[n]["now"] for n in classes])  # the head at 250 per class
        own = np.array([rows[n]["class_exponent"] for n in classes])
        forecasts["imgtune (exponent shrunk to the overall one)"].append([rows[n]["forecast"] for n in classes])
        forecasts["each class's own exponent"].append(1 - (1 - now) * 2.0 ** -own)
        forecasts["no change"].append(now)
        at_250.append(now)
        overall_250.append(curve["overall"][-1])
        exponents.append([rows[n]["exponent"] for n in classes])
    summary = {}
    for name, f in forecasts.items():
        f = np.array(f)
        gains = f - np.array(at_250)
        summary[name] = {"mae": float(np.mean(np.abs(f - truth))),
                         "overall_error": float(np.mean(f.mean(axis=1) - truth.mean())),
                         "gain_correlation": None if name == "no change" else float(np.mean(
                             [np.corrcoef(g, truth - a)[0, 1] for g, a in zip(gains, at_250)]))}
    mean_250 = np.mean(at_250, axis=0)
    main_forecast = np.mean(forecasts["imgtune (exponent shrunk to the overall one)"], axis=0)
    table = [{"class": n, "at_250": float(mean_250[j]), "forecast_500": float(main_forecast[j]),
              "measured_500": float(truth[j]), "exponent": float(np.mean(exponents, axis=0)[j])}
             for j, n in enumerate(classes)]
    return {"c": cand.c, "draws": draws, "classes": table, "methods": summary,
            "overall_250": float(np.mean(overall_250)), "overall_500": measured["accuracy"]}


def active_learning(work: Path, cache: Path, seeds=(0, 1, 2, 3, 4), start=20, add=100, rounds=5) -> dict:
    x, y, xt, yt, classes = features(work, cache)
    k = len(classes)
    pools = {"imgtune (default: the n most uncertain, spread first)": 1, "pool 2n (margin x distance)": 2,
             "pool 5n (margin x distance)": 5}
    results: dict[str, list[list[dict]]] = {**{name: [] for name in pools}, "random": []}
    for s in seeds:
        rng = np.random.default_rng([SEED, s])
        first = np.concatenate([rng.choice(np.flatnonzero(y == c), start, replace=False) for c in range(k)])
        for name in results:
            labelled = list(first)
            per_round = []
            pick_rng = np.random.default_rng([SEED, s, 1])
            for r in range(rounds + 1):
                idx = np.array(labelled)
                cand = chosen_head(x[idx], y[idx], k, s)
                head = fit_candidate(x[idx], y[idx], k, cand)
                per_round.append({"labelled": len(idx), **scores(yt, logits(xt, head).argmax(1), k)})
                if r == rounds:
                    break
                rest = np.setdiff1d(np.arange(len(y)), idx)
                if name == "random":
                    new = pick_rng.choice(rest, add, replace=False)
                else:
                    probs = softmax(logits(x[rest], head))
                    ranking = rank_for_labelling(probs, x[rest], x[idx], add, pool_factor=pools[name])
                    new = rest[ranking.chosen]
                labelled += [int(i) for i in new]
            results[name].append(per_round)
    summary = {}
    for name, runs in results.items():
        summary[name] = [{"labelled": runs[0][r]["labelled"],
                          "accuracy": float(np.mean([run[r]["accuracy"] for run in runs])),
                          "accuracy_sd": float(np.std([run[r]["accuracy"] for run in runs])),
                          "macro_f1": float(np.mean([run[r]["macro_f1"] for run in runs]))}
                         for r in range(rounds + 1)]
    return {"seeds": list(seeds), "start_per_class": start, "add": add, "rounds": rounds, "curves": summary}


def markdown(res: dict) -> str:
    out = []
    if "label_errors" in res:
        le = res["label_errors"]
        out += [f"Label errors: {le['flipped']:,} of {le['train_images']:,} training labels flipped ({FLIP_SHARE:.0%}).",
                "", f"| method | flagged | correct | precision | recall | precision of the first {le['flipped']} |",
                "| --- | --- | --- | --- | --- | --- |"]
        for name, m in le["methods"].items():
            prec = "n/a" if m["precision"] is None else f"{m['precision']:.3f}"
            out.append(f"| {name} | {m['flagged']:,} | {m['correct']:,} | {prec} | {m['recall']:.3f} | "
                       f"{m['precision_at_flips']:.3f} |")
        out.append("")
    if "curve" in res:
        cv = res["curve"]
        out += [f"Learning-curve forecast (C={cv['c']:g}; means over {cv['draws']} random halves of 250 per class): "
                "per-class accuracy of a head at 250 per class, imgtune's forecast for 500 per class, and a "
                "head fitted on all 500 per class.", "",
                "| class | at 250 | forecast 500 | measured 500 | exponent b |", "| --- | --- | --- | --- | --- |"]
        for r in cv["classes"]:
            out.append(f"| {r['class']} | {r['at_250']:.3f} | {r['forecast_500']:.3f} | {r['measured_500']:.3f} | "
                       f"{r['exponent']:.2f} |")
        out += [f"| overall | {cv['overall_250']:.3f} | | {cv['overall_500']:.3f} | |", "",
                "| forecast | per-class mean absolute error | overall error (mean of classes) | correlation of "
                "forecast and measured per-class gains |", "| --- | --- | --- | --- |"]
        for name, m in cv["methods"].items():
            corr = "—" if m["gain_correlation"] is None else f"{m['gain_correlation']:.2f}"
            out.append(f"| {name} | {m['mae']:.4f} | {m['overall_error']:+.4f} | {corr} |")
        out.append("")
    if "active" in res:
        al = res["active"]
        names = list(al["curves"])
        out += [f"Simulated active learning: {al['start_per_class']} per class to start, {al['add']} more per round, "
                f"mean accuracy (macro-F1) over seeds {al['seeds']}.", "",
                "| labelled | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
        for r in range(al["rounds"] + 1):
            cells = [f"{al['curves'][n][r]['accuracy']:.4f} ({al['curves'][n][r]['macro_f1']:.4f})" for n in names]
            out.append(f"| {al['curves'][names[0]][r]['labelled']:,} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["label-errors", "curve", "active"])
    ap.add_argument("--work", type=Path, default=HERE / "out" / "diagnosis")
    ap.add_argument("--results", type=Path, default=HERE / "diagnosis_results.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    cache = args.work / "cache"
    res = json.loads(args.results.read_text()) if args.results.exists() else {}
    parts = {"label-errors": ("label_errors", label_errors), "curve": ("curve", curve_forecast),
             "active": ("active", active_learning)}
    for name, (key, fn) in parts.items():
        if args.only in (None, name):
            res[key] = fn(args.work, cache)
            args.results.write_text(json.dumps(res, indent=1))
    print(markdown(res))


if __name__ == "__main__":
    main()
