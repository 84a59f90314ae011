"""The accuracy suite: every default is judged here, on real, imbalanced and out-of-domain data, side by
side with the simple baselines.

    python benchmarks/accuracy.py                       # every set x every method, cold caches
    python benchmarks/accuracy.py --sets clipart --methods default,probe

Data sets (benchmarks/accuracy_data.py, each written once with a fixed, seeded split): Fashion-MNIST,
Fashion-MNIST long-tailed (imbalance 50, balanced test), Open Clip Art (7 categories, 5:1) and
scikit-learn's digits. Methods, each in its own process under /usr/bin/time -v with a cold feature cache
of its own:

- default: `imgtune train DATA --out RUN` with every default (DATA holds train/ and test/; imgtune takes
  its validation split from train and reports on test);
- seed: the same with `--recipe seed --time-limit LIMIT`;
- probe: scikit-learn StandardScaler + LogisticRegression on the pooled features of imgtune's own
  backbone and eval transform, C by 5-fold cross-validation on train (imgtune.train.baselines);
- majority: always the largest training class.

Prints (and appends to OUT/results.jsonl) accuracy, macro-F1, balanced accuracy, per-class accuracy,
wall seconds and peak RSS for each pair.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import accuracy_data
import numpy as np

HERE = Path(__file__).resolve().parent
METHODS = ("default", "seed", "probe", "majority")


def timed(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float, float | None]:
    """Run `cmd` under /usr/bin/time -v -> (process, wall seconds, peak RSS MiB)."""
    started = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - started
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    cpu = sum(float(v) for v in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", proc.stderr))
    proc.cpu_seconds = cpu or None  # user + system of the whole process, beside its wall time
    return proc, wall, int(rss.group(1)) / 1024 if rss else None


def _cache(args, name: str) -> Path:
    if args.warm_cache:
        return Path(args.warm_cache)
    path = args.out / "cache" / name
    shutil.rmtree(path, ignore_errors=True)
    return path


def run_train(data: Path, args, set_name: str, method: str) -> dict:
    run = args.out / "runs" / f"{args.label}-{set_name}-{method}"
    shutil.rmtree(run, ignore_errors=True)
    flags = shlex.split(args.default_flags if method == "default" else f"--recipe seed --time-limit {args.seed_limit}")
    cmd = [sys.executable, "-m", "imgtune", "train", str(data), "--out", str(run),
           "--cache-dir", str(_cache(args, f"{set_name}-{method}")), "--quiet", *flags]
    proc, wall, rss = timed(cmd)
    if proc.returncode != 0:
        raise SystemExit(f"{set_name}/{method} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())
    return {"metrics": metrics, "wall": wall, "cpu": proc.cpu_seconds, "peak_rss_mib": rss, "command": shlex.join(cmd),
            "seconds": config.get("seconds"), "decision": config.get("decision"), "run": str(run)}


def run_probe(data: Path, args, set_name: str) -> dict:
    out = args.out / "runs" / f"{args.label}-{set_name}-probe.json"
    cmd = [sys.executable, str(HERE / "accuracy.py"), "--probe-only", str(data), "--json", str(out),
           "--cache-dir", str(_cache(args, f"{set_name}-probe"))]
    proc, wall, rss = timed(cmd)
    if proc.returncode != 0:
        raise SystemExit(f"{set_name}/probe failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {"metrics": json.loads(out.read_text()), "wall": wall, "cpu": proc.cpu_seconds, "peak_rss_mib": rss,
            "command": shlex.join(cmd)}


def files(data: Path, split: str, classes: list[str]) -> tuple[list[str], np.ndarray]:
    paths, labels = [], []
    for c, name in enumerate(classes):
        for p in sorted((data / split / name).iterdir()):
            paths.append(str(p))
            labels.append(c)
    return paths, np.array(labels, int)


def probe_only(data: Path, out: Path, cache_dir: Path) -> None:
    """The probe in this process: features through imgtune's extraction path, then imgtune.train.baselines."""
    import functools

    import torch

    from imgtune.cache.features import FeatureCache, extract_features
    from imgtune.metrics import evaluate
    from imgtune.model.backbones import create_backbone
    from imgtune.model.frozen import fast_frozen
    from imgtune.train.baselines import logistic_probe

    classes = sorted(d.name for d in (data / "train").iterdir() if d.is_dir())
    (tr, y_tr), (te, y_te) = files(data, "train", classes), files(data, "test", classes)
    backbone = create_backbone()
    cache = FeatureCache(cache_dir, backbone)
    net = functools.partial(fast_frozen, backbone.model, backbone.data_config.image_size,
                            device=torch.device("cpu"), cache_root=cache_dir,
                            key_info={**cache.key_info, "part": "features"})
    feats, bad, _, _ = extract_features(backbone, tr + te, cache, device=torch.device("cpu"), network=net)
    ok = ~np.isnan(feats).any(1)
    x_tr, x_te = feats[:len(tr)], feats[len(tr):]
    ok_tr, ok_te = ok[:len(tr)], ok[len(tr):]
    model = logistic_probe(x_tr[ok_tr], y_tr[ok_tr])
    probs = model.predict_proba(x_te[ok_te].astype(np.float64))
    m = evaluate(y_te[ok_te], probs, classes)
    m["C"] = float(model.named_steps["logisticregression"].C)
    m["skipped"] = len(bad)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(m))


def majority(data: Path) -> dict:
    from imgtune.metrics import evaluate
    from imgtune.train.baselines import majority_class

    classes = sorted(d.name for d in (data / "train").iterdir() if d.is_dir())
    _, y_tr = files(data, "train", classes)
    _, y_te = files(data, "test", classes)
    probs = np.zeros((len(y_te), len(classes)))
    probs[:, majority_class(y_tr, len(classes))] = 1
    return {"metrics": evaluate(y_te, probs, classes), "wall": None, "peak_rss_mib": None}


def table(rows: list[dict]) -> str:
    lines = ["| data set | method | accuracy | macro-F1 | balanced accuracy | worst class | CPU s | wall s | peak RSS MiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        m = r["metrics"]
        worst = min(m["per_class"].items(), key=lambda kv: kv[1]["accuracy"])
        wall = f"{r['wall']:.0f}" if r.get("wall") else "—"
        cpu = f"{r['cpu']:.0f}" if r.get("cpu") else "—"
        rss = f"{r['peak_rss_mib']:,.0f}" if r.get("peak_rss_mib") else "—"
        lines.append(f"| {r['set']} | {r['method']} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} | "
                     f"{m['balanced_accuracy']:.4f} | {worst[0]} {worst[1]['accuracy']:.3f} | {cpu} | {wall} | {rss} |")
    return "\n".join(lines)


def per_class_tables(rows: list[dict]) -> str:
    out = []
    for s in dict.fromkeys(r["set"] for r in rows):
        mine = [r for r in rows if r["set"] == s]
        classes = mine[0]["metrics"]["classes"]
        out += [f"\n{s}, per-class accuracy (test support):", "",
                "| class | support | " + " | ".join(r["method"] for r in mine) + " |",
                "| --- | --- | " + " | ".join("---" for _ in mine) + " |"]
        for c in classes:
            sup = mine[0]["metrics"]["per_class"][c]["support"]
            out.append(f"| {c} | {sup} | " + " | ".join(f"{r['metrics']['per_class'][c]['accuracy']:.3f}"
                                                       for r in mine) + " |")
    return "\n".join(out)


def report(args) -> None:
    labels = args.report.split(",")
    chosen: dict[tuple[str, str], dict] = {}
    for line in (args.out / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("label") in labels:
            key = (r["set"], r["method"])
            if key not in chosen or labels.index(r["label"]) >= labels.index(chosen[key]["label"]):
                chosen[key] = r
    sets, methods = args.sets.split(","), args.methods.split(",")
    rows = [chosen[(s, m)] for s in sets for m in methods if (s, m) in chosen]
    print(table(rows))
    print(per_class_tables(rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", default=",".join(accuracy_data.SETS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seed-limit", default="5m", help="--time-limit of the seed recipe's runs (default 5m)")
    p.add_argument("--default-flags", default="", help="extra flags for the default method's train")
    p.add_argument("--label", default="suite", help="names the runs and the results (default: suite)")
    p.add_argument("--data", type=Path, default=Path("benchmarks/data"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/accuracy"))
    p.add_argument("--warm-cache", metavar="DIR", help="share one feature cache between runs (development only: "
                                                       "wall times then leave extraction out)")
    p.add_argument("--report", metavar="LABEL[,LABEL...]",
                   help="run nothing: print the tables from OUT/results.jsonl, the latest row of each data set "
                        "and method among these labels (the later label wins)")
    p.add_argument("--probe-only", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.probe_only:
        return probe_only(args.probe_only, args.json, args.cache_dir)
    if args.report:
        return report(args)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in args.sets.split(","):
        data = accuracy_data.prepare(s, args.data)
        for method in args.methods.split(","):
            if method == "majority":
                r = majority(data)
            elif method == "probe":
                r = run_probe(data, args, s)
            elif method in ("default", "seed"):
                r = run_train(data, args, s, method)
            else:
                raise SystemExit(f"unknown method {method!r}: expected {', '.join(METHODS)}")
            r.update(set=s, method=method, label=args.label, date=time.strftime("%Y-%m-%d"))
            rows.append(r)
            with open(args.out / "results.jsonl", "a") as f:
                f.write(json.dumps(r) + "\n")
            print(table([r]).splitlines()[-1], flush=True)
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(table(rows))
    print(per_class_tables(rows))


if __name__ == "__main__":
    main()
