"""The improvement loop's subcommands (review, retrain, compare): each takes the parsed arguments, runs
the library, prints what a person reads and returns the exit code, as commands.py does for the rest."""

from __future__ import annotations

import sys

from .atomic import require_writable


def retrain(args) -> int:
    import time

    from .improve import retrain as retrain_run
    from .report.console import headline, print_metrics
    from .runs.folder import RunFolder

    started = time.perf_counter()
    clf = retrain_run(args.run, args.out, corrections=args.corrections, allow_new_classes=args.allow_new_classes,
                      epochs=args.epochs, resume=args.resume, device=args.device, cache_dir=args.cache_dir,
                      quiet=args.quiet, say=lambda line: args.quiet or print(line, file=sys.stderr, flush=True))
    m = clf.metrics_
    print_metrics(m, title=f"{m['split'].capitalize()} split: {headline(m)}")
    print(f"Retrained in {time.perf_counter() - started:.0f} s (features and trunk views from the cache where "
          f"the images were seen before; the first run's steps took {_first_run_seconds(args.run):.0f} s).")
    print(f"Run folder: {clf.run_dir_}\nReport: {RunFolder(clf.run_dir_).report}\nCompare: imgtune compare "
          f"{args.run} {clf.run_dir_}")
    return 0


def _first_run_seconds(run: str) -> float:
    import json

    from .runs.folder import RunFolder

    try:
        return float(json.loads(RunFolder(run).config.read_text()).get("seconds", {}).get("total", 0.0))
    except (OSError, ValueError, AttributeError):
        return 0.0


def compare(args) -> int:
    from pathlib import Path

    from .atomic import write_json_atomic, write_text_atomic
    from .improve import DifferentImages, recorded
    from .improve import compare as compare_runs
    from .report.compare_page import build_compare_page
    from .runs.folder import RunFolder

    b = RunFolder(args.run_b)
    out = Path(args.output) if args.output else b.path / "comparisons" / f"{Path(args.run_a).resolve().name}.json"
    require_writable(out, out.with_suffix(".html"))
    try:
        doc = compare_runs(args.run_a, args.run_b, args.data, device=args.device, quiet=args.quiet)
    except DifferentImages as e:  # what each run recorded, side by side; the per-image part needs TEST_DATA
        print(f"imgtune: error: {e}\nEach run's own record, on its own images:", file=sys.stderr)
        for side, r in zip("AB", recorded(args.run_a, args.run_b)):
            print(f"  {side}: {r['run']}: accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f} on its "
                  f"{r['split']} split ({r['n_images']:,} images)", file=sys.stderr)
        return 2
    o = doc["overall"]
    print(f"A: {doc['a']}\nB: {doc['b']}\nOn {doc['n_images']:,} images ({doc['images']}):")
    print(f"  accuracy {o['accuracy']['a']:.4f} -> {o['accuracy']['b']:.4f} "
          f"({o['accuracy']['difference'] * 100:+.1f} ± {o['accuracy']['interval'] * 100:.1f} points), macro-F1 "
          f"{o['macro_f1']['a']:.4f} -> {o['macro_f1']['b']:.4f} "
          f"({o['macro_f1']['difference'] * 100:+.1f} ± {o['macro_f1']['interval'] * 100:.1f})")
    width = max(len(c) for c in doc["per_class"])
    for c, d in doc["per_class"].items():
        r = d["recall"]
        print(f"  {c:<{width}}  accuracy {r['a']:.3f} -> {r['b']:.3f} ({r['difference'] * 100:+.1f} ± "
              f"{r['interval'] * 100:.1f})  F1 {d['f1']['difference'] * 100:+.1f} ± {d['f1']['interval'] * 100:.1f}"
              f"  ({d['support']:,} images)")
    print(f"{len(doc['wrong_to_right']):,} images went from wrong to right, {len(doc['right_to_wrong']):,} from "
          f"right to wrong.\nVerdict: {doc['verdict']}")
    write_json_atomic(out, doc)
    write_text_atomic(out.with_suffix(".html"), build_compare_page(doc))
    print(f"Comparison: {out}\nPage: {out.with_suffix('.html')}")
    return 0


def review(args) -> int:
    from .review import Review, list_items, serve_review

    if args.list:
        print(list_items(Review(args.run)))
        return 0
    serve_review(args.run, args.host, args.port, ready=lambda line: print(line, flush=True))
    return 0
