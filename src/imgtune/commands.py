"""The subcommands behind `imgtune`: each takes the parsed arguments, runs the library, prints what a
person reads and returns the exit code (the improvement loop's are in loop_commands.py). cli.py parses and
maps errors; nothing imports either."""

from __future__ import annotations

import sys

from .atomic import require_writable


def train(args) -> int:
    import time

    if not args.resume:
        check_data(args.data, seed=args.seed, task=args.task, corrections=args.corrections,
                   allow_new_classes=args.allow_new_classes)
    from .classifier import ImageClassifier
    from .config import TrainSettings
    from .report.console import headline, print_metrics
    from .runs.folder import RunFolder
    from .train.budget import TimeLimit, parse_duration, process_age

    settings = {name: getattr(args, name) for name in TrainSettings.options()}  # the flags made from them
    if args.time_limit is not None:  # the command's limit counts from the start of the process: imports too
        settings["time_limit"] = TimeLimit(parse_duration(args.time_limit), started=time.perf_counter() - process_age())
    clf = ImageClassifier(**settings)
    out = args.out or _default_run_folder(args.resume)
    clf.fit(args.data, out=out, resume=args.resume, tensorboard=args.tensorboard, mlflow=args.mlflow,
            corrections=args.corrections, allow_new_classes=args.allow_new_classes)
    if not clf.ranks_.main:  # under torchrun, rank 0 reports for all
        return 0
    m = clf.metrics_
    print_metrics(m, title=f"{m['split'].capitalize()} split: {headline(m)}")
    print(f"Run folder: {clf.run_dir_}\nReport: {RunFolder(clf.run_dir_).report}")
    return 0


def check_data(data: str, *, seed: int, task: str | None, corrections: str | None, allow_new_classes: bool) -> None:
    """What the fit's scan would refuse in DATA (and in a corrections file), refused in a second, before
    PyTorch loads (about 6 s): a bad CSV or folder is one line at once. The fit scans again; a scan reads
    names, not images (0.2 s for 5,000 files). builtin:NAME is the library's own data and is not checked."""
    from .data.corrections import apply_corrections
    from .data.scan import require_usable, scan

    if str(data).startswith("builtin:"):
        return
    manifest = scan(data, seed=seed, task=task)
    if corrections is not None:
        require_usable(apply_corrections(manifest, corrections, allow_new_classes=allow_new_classes)[0])


def _default_run_folder(resume: bool) -> str:
    """train without --out: runs/train, runs/train-2, ... (the first that does not exist), or with
    --resume the latest of them; said in one line, since the user did not name it."""
    import os

    from .errors import ConfigError
    from .runs.folder import latest_run_folder, next_run_folder

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank must name the same folder
        raise ConfigError("under torchrun, train needs --out RUN: the processes must agree on one run folder.")
    out = latest_run_folder("runs/train") if resume else next_run_folder("runs/train")
    if out is None:
        raise ConfigError("--resume without --out: no runs/train* folder to continue; give --out RUN.")
    print(f"Run folder: {out}{' (continuing the latest)' if resume else ''}", file=sys.stderr)
    return str(out)


def evaluate(args) -> int:
    from pathlib import Path

    from .classifier import ImageClassifier
    from .report.console import headline, print_metrics
    from .report.page import write_report
    from .runs.folder import RunFolder

    run = RunFolder(args.run)
    # beside training's record, never over it: metrics.json and report.html stay what training wrote
    out = Path(args.json) if args.json else evaluation_path(run, args.data)
    require_writable(out, out.with_suffix(".html"))  # before the work
    clf = ImageClassifier.load(args.run, device=args.device, quiet=args.quiet, runtime=args.runtime)
    m = clf.evaluate(args.data, tta=args.tta)
    if m["skipped"]:
        print(f"Skipped {len(m['skipped'])} files that could not be used (listed in the metrics file).",
              file=sys.stderr)
    run.write_metrics(m, out)
    report = write_report(run.path, m, out.with_suffix(".html"))
    print_metrics(m, title=f"{m['source']}: {headline(m)}")
    if "tta" in m:
        print(f"Test-time augmentation: accuracy {m['tta']['accuracy']:.4f} against "
              f"{m['tta']['accuracy_without']:.4f} without ({m['tta']['gain'] * 100:+.2f} points).")
    print(f"Metrics: {out}\nReport: {report}")
    return 0


def evaluation_path(run, data: str):
    """RUN/evaluations/<data>.json: named after the data's path (its last two parts), so that evaluating
    the same data again replaces its own evaluation and no other."""
    import re
    from pathlib import Path

    parts = [p for p in Path(str(data).rstrip("/")).resolve().parts[-2:] if p not in ("/", "")]
    name = re.sub(r"[^\w.-]+", "_", "-".join(parts)).strip("._") or "data"
    return run.path / "evaluations" / f"{name}.json"


def predict(args) -> int:
    """Rows are written as their batches finish (memory flat in the number of images); under torchrun the
    processes share the files (infer/sharded.py)."""
    import time

    from .classifier import ImageClassifier
    from .devices import ranks_and_device
    from .errors import ConfigError
    from .infer.sharded import write_predictions
    from .infer.writers import check_output
    from .progress import Reporter

    if args.output:
        check_output(args.output)
    if args.explain:
        _check_explain(args)
    with ranks_and_device(args.device) as (ranks, device):
        if ranks.active and args.explain:
            raise ConfigError("--explain runs in one process: run predict --explain without torchrun.")
        quiet = args.quiet or not ranks.main
        clf = ImageClassifier.load(args.run, device=str(device), quiet=quiet, runtime=args.runtime,
                                   needs_gradients="--explain" if args.explain else None)
        started = time.perf_counter()
        kept = [] if args.explain else None  # --explain draws each answered file afterwards
        written = write_predictions(clf.trained_, args.paths, args.output, ranks=ranks, top_k=args.top_k,
                                    tta=args.tta, min_confidence=args.min_confidence, reporter=Reporter(quiet),
                                    on_rows=kept.extend if kept is not None else None)
        for path, reason in written.skipped:
            print(f"skipped {path}: {reason}", file=sys.stderr)
    if not ranks.main:
        return 0
    n = written.n
    if not n:
        print(f"imgtune: error: expected images to predict; found none usable in {' '.join(args.paths)}",
              file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    if not args.quiet:
        where = f" to {args.output}" if args.output else ""
        processes = f" by {ranks.world} processes" if ranks.active else ""
        print(f"Wrote {n:,} predictions{where} in {seconds:.1f} s ({n / seconds:,.1f} images/s{processes}).",
              file=sys.stderr)
    if args.explain:
        from .infer.explain import write_overlays

        overlays = write_overlays(clf.trained_, kept, args.explain)
        if not args.quiet:
            print(f"Wrote {len(overlays):,} Grad-CAM overlays to {args.explain}", file=sys.stderr)
    return 0


def _check_explain(args) -> None:
    """--explain needs gradients and a folder to write into: refused before any work when it cannot."""
    import os

    from .errors import ConfigError

    if args.runtime not in ("torch", "auto"):
        raise ConfigError(f"--explain: ONNX runtime has no gradients, use --runtime torch for --explain "
                          f"(received --runtime {args.runtime}).")
    if os.path.exists(args.explain) and not os.path.isdir(args.explain):
        raise ConfigError(f"--explain {args.explain!r} is a file; give a folder to write the overlays into.")


def export(args) -> int:
    from .classifier import ImageClassifier
    from .deploy.export import export_onnx
    from .progress import Reporter

    if args.format == "timm":
        return _export_timm(args)
    clf = ImageClassifier.load(args.run, device="cpu", quiet=args.quiet)
    r = export_onnx(clf.trained_, args.output, quantize=args.quantize, reporter=Reporter(args.quiet))
    agreement = "label-set" if clf.trained_.task == "multi" else "top-1"
    print(f"Wrote {r['output']}: parity with PyTorch on {r['parity_images']:,} validation images: {agreement} "
          f"agreement {r['top1_agreement']:.2%}, max |logit difference| {r['max_abs_logit_diff']:.2e}.")
    q = r.get("int8")
    if q:
        line = f"Wrote {q['output']} ({q['bytes']['int8'] / 2**20:.1f} MiB against {q['bytes']['fp32'] / 2**20:.1f})"
        if q.get("accuracy_drop") is not None:
            line += (f": {q['split']} accuracy {q['int8_accuracy']:.4f} against {q['fp32_accuracy']:.4f} in fp32 "
                     f"({q['accuracy_drop'] * 100:+.2f} points lost), {q['speedup']:.2f}x the fp32 speed.")
        print(line)
        if q.get("speedup") is not None and q["speedup"] < 1:
            print(f"note: int8 ran slower than fp32 here ({q['speedup']:.2f}x); it pays on CPUs with int8 dot-product "
                  "instructions (AVX-512 VNNI, AMX); on this one serve and predict the fp32 model.")
        if q.get("within_limit") is False:
            print(f"warning: int8 loses more than 1 point of {q['split']} accuracy; prefer the fp32 model.",
                  file=sys.stderr)
    return 0


def _export_timm(args) -> int:
    from pathlib import Path

    from .classifier import ImageClassifier
    from .deploy.timm_export import check_output, export_timm
    from .errors import ConfigError
    from .progress import Reporter

    if args.quantize:
        raise ConfigError(f"--quantize {args.quantize} applies to --format onnx; a timm export keeps the fp32 weights.")
    check_output(Path(args.output or Path(args.run) / "timm"))  # before the model is loaded
    clf = ImageClassifier.load(args.run, device="cpu", quiet=args.quiet, runtime="torch")
    r = export_timm(clf.trained_, args.output, reporter=Reporter(args.quiet))
    print(f"Wrote {r['output']} ({', '.join(r['files'])}) for timm's {r['architecture']}: timm's logits match "
          f"imgtune's on {r['parity_images']:,} validation images, max |logit difference| {r['max_abs_logit_diff']:.2e}, "
          f"{r['agreement']:.2%} the same {'label sets' if clf.trained_.task == 'multi' else 'top-1 class'}.")
    return 0

def serve(args) -> int:
    from .deploy.serve import ServeSettings, serve

    serve(args.run, ServeSettings(args.host, args.port, args.workers, args.device, args.runtime, args.top_k,
                                  args.min_confidence, args.tta, args.max_upload_mb * 2**20, args.header_timeout))
    return 0


def inspect(args) -> int:
    from pathlib import Path

    from .atomic import write_json_atomic, write_text_atomic
    from .inspect_data import audit
    from .diagnose.label_errors import write_label_issues
    from .progress import Reporter
    from .report.inspect_page import build_inspect_page, summary_lines
    from .runs.folder import RunFolder

    clf = None
    if args.run:
        from .classifier import ImageClassifier

        clf = ImageClassifier.load(args.run, device=args.device, quiet=args.quiet)
    out = Path(args.out or args.run or ".")
    doc = audit(args.data, classifier=clf, run_split=RunFolder(args.run).split if args.run else None,
                min_side=args.min_side, near_distance=args.near_bits, reporter=Reporter(args.quiet),
                cache_dir=args.cache_dir)
    write_json_atomic(out / "inspect.json", doc)
    if "label_issues" in doc:
        write_label_issues(doc["label_issues"], out / "label_issues.csv")
    write_text_atomic(out / "inspect.html", build_inspect_page(doc))
    print("\n".join(summary_lines(doc)))
    print(f"Details: {out / 'inspect.json'}\nPage: {out / 'inspect.html'}")
    return 0


def suggest(args) -> int:
    from pathlib import Path

    from .atomic import write_text_atomic
    from .classifier import ImageClassifier
    from .diagnose.suggest import suggest as rank
    from .diagnose.suggest import write_suggestions
    from .errors import ParameterError
    from .progress import Reporter
    from .report.suggest_page import build_suggest_page
    from .runs.folder import RunFolder

    out = Path(args.output) if args.output else RunFolder(args.run).path / "suggest.csv"
    if out.suffix.lower() != ".csv":
        raise ParameterError("output", f"must end in .csv; received {str(out)!r}.")
    require_writable(out, out.with_suffix(".html"))  # before the work
    clf = ImageClassifier.load(args.run, device=args.device, quiet=args.quiet)
    result = rank(clf.trained_, args.paths, args.n, uncertainty=args.uncertainty, cache_dir=args.cache_dir,
                  reporter=Reporter(args.quiet))
    for path, reason in result["skipped"]:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    write_suggestions(result, out)
    write_text_atomic(out.with_suffix(".html"), build_suggest_page(result, args.run))
    dupes = result["duplicates"]
    print(f"Chose {len(result['rows']):,} of {result['n_candidates']:,} unlabelled images to label next"
          + (f" ({len(dupes):,} near-duplicates left out)" if dupes else "") + ".")
    print(f"List: {out}\nPage: {out.with_suffix('.html')}")
    return 0


def embed(args) -> int:
    from pathlib import Path

    from .classifier import ImageClassifier
    from .errors import ParameterError
    from .infer import embed as embeddings
    from .progress import Reporter

    out = Path(args.output)
    if out.suffix.lower() != ".parquet":
        raise ParameterError("output", f"must end in .parquet; received {str(out)!r}.")
    embeddings.require_pyarrow()  # before the images are read, not after
    clf = ImageClassifier.load(args.run, device=args.device, quiet=args.quiet)
    emb = embeddings.embed(clf.trained_, args.paths, cache_dir=args.cache_dir, reporter=Reporter(args.quiet))
    for path, reason in emb.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    embeddings.write_index(emb, out)
    n_labelled = sum(y is not None for y in emb.labels)
    print(f"Embedded {len(emb.paths):,} images ({n_labelled:,} with labels"
          + (f", {len(emb.skipped):,} skipped" if emb.skipped else "") + f"): {emb.space['dim']}-dimensional "
          f"features of {emb.space['backbone']} at {emb.space['image_size']} px.\nIndex: {out}")
    return 0


def similar(args) -> int:
    from pathlib import Path

    from .atomic import write_text_atomic
    from .classifier import ImageClassifier
    from .errors import ParameterError
    from .infer import embed as embeddings
    from .progress import Reporter
    from .report.similar_page import build_similar_page

    out = Path(args.output) if args.output else embeddings.default_output(args.index)
    if out.suffix.lower() != ".csv":
        raise ParameterError("output", f"must end in .csv; received {str(out)!r}.")
    require_writable(out, out.with_suffix(".html"))  # before the work
    embeddings.require_pyarrow()
    clf = ImageClassifier.load(args.run, device=args.device, quiet=args.quiet)
    result = embeddings.similar(clf.trained_, args.paths, args.index, args.k, cache_dir=args.cache_dir,
                                reporter=Reporter(args.quiet), run=f"run {args.run!r}")
    for path, reason in result["skipped"]:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    embeddings.write_neighbours(result, out)
    write_text_atomic(out.with_suffix(".html"), build_similar_page(result, args.run))
    print(f"Found the {min(args.k, result['n_index']):,} nearest of {result['n_index']:,} indexed images for "
          f"{len(result['queries']):,} queries ({result['method']}).\nList: {out}\nPage: {out.with_suffix('.html')}")
    return 0
