"""The improvement loop measured: labels made noisy on purpose, a simulated reviewer who looks at the
first K images a run flags (imgtune review's order) and corrects exactly those that are truly wrong,
then `imgtune retrain`; each run scored on the set's clean test split.

    python benchmarks/improve_loop.py --sets digits:pairs,fashion-mnist:random --ks 50,100,200 --rounds 2

DATA/<set>/{train,test}/<class>/ as benchmarks/accuracy_data.py writes them. Noise on the training
images only, seeded: `random` moves 5 % of them to another class at random; `pairs` moves 10 % of each
class to the class the clean run confuses it with most (its mean probability on that class's training
images): the realistic case. Every run is a fresh `python -m imgtune` process: the clean run with a
cold feature cache of its own (the "cold run"), the noisy run and every retrain sharing a second cache.
Rows go to benchmarks/out/improve-loop.jsonl and a table to the console."""

from __future__ import annotations

import argparse
import csv
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"


def files(folder: Path) -> list[tuple[str, str]]:
    return sorted((str(p.resolve()), p.parent.name) for p in folder.glob("*/*") if p.is_file())


def write_labels(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows)
    return path


def timed(cmd: list[str]) -> dict:
    """Run a command to its end -> wall and CPU seconds (user+sys of the process and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "stderr": r.stderr}


def train(data: Path, run: Path, cache: Path) -> dict:
    return timed([sys.executable, "-m", "imgtune", "train", str(data), "--out", str(run), "--cache-dir", str(cache),
                  "--quiet"])


def retrain(run: Path, out: Path, cache: Path) -> dict:
    return timed([sys.executable, "-m", "imgtune", "retrain", str(run), "--out", str(out), "--cache-dir",
                  str(cache), "--quiet"])


def scored(run: Path, test: Path) -> dict:
    from imgtune import ImageClassifier

    m = ImageClassifier.load(run, quiet=True).evaluate(test)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
            "per_class": {c: round(v["accuracy"], 4) for c, v in m["per_class"].items()}}


def noisy_labels(rows: list[tuple[str, str]], kind: str, clean_run: Path, seed: int = 0) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    classes = sorted({c for _, c in rows})
    out = list(rows)
    if kind == "random":
        for i in rng.choice(len(rows), round(0.05 * len(rows)), replace=False):
            out[i] = (rows[i][0], str(rng.choice([c for c in classes if c != rows[i][1]])))
        return out
    partner = confused_with(rows, classes, clean_run)
    for c in classes:
        idx = [i for i, (_, y) in enumerate(rows) if y == c]
        for i in rng.choice(idx, round(0.10 * len(idx)), replace=False):
            out[i] = (rows[i][0], partner[c])
    return out


def confused_with(rows, classes, clean_run: Path) -> dict[str, str]:
    """Each class -> the other class the clean model gives its training images the most probability."""
    from imgtune import ImageClassifier

    clf = ImageClassifier.load(clean_run, quiet=True)
    preds = clf.predict([p for p, _ in rows], top_k=len(clf.classes_))
    mass = {c: dict.fromkeys(classes, 0.0) for c in classes}
    for (_, y), r in zip(rows, preds):
        for c, p in r["top_k"]:
            mass[y][c] += p
    return {c: max((o for o in classes if o != c), key=lambda o: mass[c][o]) for c in classes}


def review_round(run: Path, truth: dict[str, str], k: int) -> dict:
    """The simulated reviewer: the first K undecided flagged images, each relabelled to its true class
    where its given label is wrong, kept where it is right. -> what was shown and how many were wrong."""
    from imgtune.review import Review

    review = Review(run)
    shown = [i for i, it in enumerate(review.items) if it["path"] not in review.decisions][:k]
    wrong = 0
    for i in shown:
        it = review.items[i]
        true = truth[str(Path(it["path"]).resolve())]
        if it["label"] != true:
            review.decide(i, "relabel", true, "benchmark reviewer")
            wrong += 1
        else:
            review.decide(i, "keep")
    return {"shown": len(shown), "wrong": wrong}


def run_set(name: str, kind: str, ks: list[int], rounds: int, data_root: Path, work: Path,
            more_rounds_for: set[int] | None = None, reuse: bool = False) -> list[dict]:
    train_dir, test = data_root / name / "train", data_root / name / "test"
    rows = files(train_dir)
    truth = dict(rows)
    work = work / f"{name}-{kind}"
    if not reuse:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    results = []

    def trained(run: Path, how) -> dict:
        """A run's timing: measured now, or with `reuse` read back from an earlier pass's run folder."""
        saved = run / "bench-timing.json"
        if reuse and saved.exists():
            return json.loads(saved.read_text())
        shutil.rmtree(run, ignore_errors=True)
        t = how()
        saved.write_text(json.dumps({k: v for k, v in t.items() if k != "stderr"}))
        return t

    def record(label: str, run: Path, t: dict, **extra) -> dict:
        r = {"set": name, "noise": kind, "run": label, **scored(run, test), "wall_s": t["wall_s"], "cpu_s": t["cpu_s"],
             **extra}
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "per_class"}), flush=True)
        with open(OUT / "improve-loop.jsonl", "a") as f:
            f.write(json.dumps({**r, "date": time.strftime("%Y-%m-%d")}) + "\n")
        return r

    clean_csv = write_labels(work / "clean.csv", rows)
    record("clean (cold cache)", work / "clean",
           trained(work / "clean", lambda: train(clean_csv, work / "clean", work / "cache-cold")))
    noisy = noisy_labels(rows, kind, work / "clean")
    flipped = sum(a != b for (_, a), (_, b) in zip(rows, noisy))
    noisy_csv = write_labels(work / "noisy.csv", noisy)
    cache = work / "cache"
    if not cache.exists():  # the noisy run's images are the clean run's: as a user's
        shutil.copytree(work / "cache-cold", cache)
    record("noisy", work / "noisy", trained(work / "noisy", lambda: train(noisy_csv, work / "noisy", cache)),
           flipped=flipped)
    for k in ks:
        run = work / "noisy"
        for r in range(1, (rounds if more_rounds_for is None or k in more_rounds_for else 1) + 1):
            reviewed = work / f"k{k}-r{r}-reviewed"
            shutil.rmtree(reviewed, ignore_errors=True)
            shutil.rmtree(work / f"k{k}-r{r}", ignore_errors=True)
            shutil.copytree(run, reviewed)  # each K starts from the noisy run's own flags
            seen = review_round(reviewed, truth, k)
            out = work / f"k{k}-r{r}"
            t = retrain(reviewed, out, cache)
            record(f"K={k} round {r}", out, t, **seen, precision=round(seen["wrong"] / max(1, seen["shown"]), 3))
            run = out
    return results


def table(rows: list[dict]) -> str:
    clean = {(r["set"], r["noise"]): r for r in rows if r["run"].startswith("clean")}
    noisy = {(r["set"], r["noise"]): r for r in rows if r["run"] == "noisy"}
    lines = ["| set (noise) | run | accuracy | macro-F1 | recovered | shown | wrong | reviewer precision | wall s | CPU s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        key = (r["set"], r["noise"])
        lost = clean[key]["accuracy"] - noisy[key]["accuracy"] if key in noisy else 0
        rec = "" if r["run"].startswith(("clean", "noisy")) or lost <= 0 else \
            f"{(r['accuracy'] - noisy[key]['accuracy']) / lost:.0%}"
        lines.append(f"| {r['set']} ({r['noise']}) | {r['run']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {rec} | "
                     f"{r.get('shown', '')} | {r.get('wrong', r.get('flipped', ''))} | {r.get('precision', '')} | "
                     f"{r['wall_s']:.0f} | {r['cpu_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="digits:pairs,fashion-mnist:random", help="SET:random|pairs, comma-separated")
    ap.add_argument("--ks", default="50,100,200")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reuse", action="store_true", help="keep the clean and noisy runs of an earlier pass in --work")
    ap.add_argument("--more-rounds-for", help="K values that get every round (default: all); the rest get one")
    ap.add_argument("--data", default=str(HERE / "data"))
    ap.add_argument("--work", default=str(OUT / "improve-loop"))
    a = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    rows = []
    for spec in a.sets.split(","):
        name, kind = spec.split(":")
        more = None if a.more_rounds_for is None else {int(k) for k in a.more_rounds_for.split(",")}
        rows += run_set(name, kind, [int(k) for k in a.ks.split(",")], a.rounds, Path(a.data), Path(a.work), more,
                        a.reuse)
        print(table(rows), flush=True)


if __name__ == "__main__":
    main()
