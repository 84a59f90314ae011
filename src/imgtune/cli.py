"""The command line: parse flags, call ImageClassifier, map failures to exit codes. Nothing imports this."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading

from . import commands, loop_commands, rules
from ._version import __version__
from .config import RUNTIMES, TrainSettings
from .errors import ConfigError, ImgtuneError, ParameterError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + error
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _typed(rule: rules.Rule):
    """A flag's type: its text read and checked by the setting's rule; argparse says what was expected."""
    def parse(text: str):
        try:
            return rule.parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def _int_at_least(lo: int, hi: int | None = None):
    return _typed(rules.whole(lo, hi))


RUNTIME_HELP = ("auto (the default): ONNX Runtime where it is installed and RUN/model.onnx was checked against "
                "the run's weights (exported now, once, when it is missing or stale), else PyTorch; torch; onnx: "
                "RUN/model.onnx (see export); onnx-int8: RUN/model.int8.onnx")
_probability = _typed(rules.probability())


def _setting_flag(p, name: str) -> None:
    """The flag of one of TrainSettings' fields, derived from it: name, default, reading, check, help."""
    o, default = TrainSettings.options()[name], TrainSettings.defaults()[name]
    flags = o.flags or ("--" + name.replace("_", "-"),)
    if isinstance(default, bool):
        p.add_argument(*flags, dest=name, action="store_true", help=o.help)
    else:
        p.add_argument(*flags, dest=name, default=default, type=_typed(o.rule), choices=o.rule.choices,
                       metavar=o.metavar, help=o.help)




def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="imgtune", description="A folder of labelled images in, an image classifier out.")
    p.add_argument("--version", action="version", version=f"imgtune {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _train_flags(sub)
    _evaluate_flags(sub)
    _predict_flags(sub)
    _export_flags(sub)
    _serve_flags(sub)
    _inspect_flags(sub)
    _suggest_flags(sub)
    _embed_flags(sub)
    _similar_flags(sub)
    _improve_flags(sub)
    return p


def _improve_flags(sub) -> None:
    r = sub.add_parser("review", help="walk through what a run flagged (likely label errors, worst mistakes, "
                                      "near-duplicates) on a local page and decide: keep, relabel or exclude")
    r.add_argument("run", metavar="RUN")
    r.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    r.add_argument("--port", type=_int_at_least(0, 65535), default=8001, help="default 8001 (0: any free port)")
    r.add_argument("--list", action="store_true", help="print the flagged images and any decisions, and exit")
    _setting_flag(r, "quiet")
    t = sub.add_parser("retrain", help="train a run again with its corrections (RUN/corrections.csv), reusing "
                                       "the feature cache; the same images in every split")
    t.add_argument("run", metavar="RUN")
    t.add_argument("--out", metavar="NEW_RUN", help="default RUN-retrain, then RUN-retrain-2, ...")
    t.add_argument("--corrections", metavar="FILE.csv", help="default RUN/corrections.csv")
    t.add_argument("--allow-new-classes", action="store_true",
                   help="let the corrections relabel images into a class the data does not have")
    t.add_argument("--epochs", type=_int_at_least(0), metavar="N",
                   help="fine-tune epochs (default: a quarter of the run's recipe's where it continues from the run's "
                        "fine-tuned model, else half; 0: the head alone, in seconds)")
    t.add_argument("--resume", action="store_true", help="continue an interrupted retrain (in --out, or the latest)")
    _feature_flags(t)
    c = sub.add_parser("compare", help="two runs on the same images: per-class differences with their noise, the "
                                       "images that changed, a verdict (console, JSON and HTML page)")
    c.add_argument("run_a", metavar="RUN_A")
    c.add_argument("run_b", metavar="RUN_B")
    c.add_argument("data", metavar="TEST_DATA", nargs="?",
                   help="labelled images to judge both on (default: the runs' own test split, when the same)")
    c.add_argument("--output", metavar="FILE.json", help="default RUN_B/comparisons/<RUN_A's name>.json; the "
                                                         "page goes beside it as .html")
    _setting_flag(c, "device")
    _setting_flag(c, "quiet")


def _train_flags(sub) -> None:
    t = sub.add_parser("train", help="train a classifier on DATA (class folders, train/val/test splits, a CSV, "
                                     "or builtin:digits)")
    t.add_argument("data", metavar="DATA")
    t.add_argument("--out", metavar="RUN", help="run folder to write (default: runs/train, then runs/train-2, ... "
                                                "the first that does not exist; with --resume the latest)")
    for name in TrainSettings.options():
        _setting_flag(t, name)
    t.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    t.add_argument("--tensorboard", action="store_true", help="per-epoch scalars for TensorBoard in RUN/tensorboard")
    t.add_argument("--mlflow", nargs="?", const=True, default=None, metavar="URI",
                   help="log the run to MLflow: parameters, epochs, test metrics, report (default URI: "
                        "$MLFLOW_TRACKING_URI, else MLflow's own; needs imgtune[mlflow])")
    t.add_argument("--corrections", metavar="FILE.csv",
                   help="relabel or exclude images without touching them: rows path,action,label,reason,time "
                        "(action keep, relabel or exclude), as imgtune review writes to RUN/corrections.csv")
    t.add_argument("--allow-new-classes", action="store_true",
                   help="let --corrections relabel images into a class the data does not have")


def _evaluate_flags(sub) -> None:
    e = sub.add_parser("evaluate", help="per-class accuracy of a run on labelled images")
    e.add_argument("run", metavar="RUN")
    e.add_argument("data", metavar="DATA")
    e.add_argument("--json", metavar="FILE", help="write metrics here instead of RUN/metrics.json (and the "
                                                  "report beside it, as FILE.html, instead of RUN/report.html)")
    e.add_argument("--tta", action="store_true", help="test-time augmentation: average flipped and zoomed views")
    e.add_argument("--runtime", default="auto", choices=RUNTIMES,
                   help=RUNTIME_HELP)
    _setting_flag(e, "device")
    _setting_flag(e, "quiet")


def _predict_flags(sub) -> None:
    r = sub.add_parser("predict", help="label new images")
    r.add_argument("run", metavar="RUN")
    r.add_argument("paths", metavar="PATH", nargs="+")
    r.add_argument("--top-k", type=_int_at_least(1), default=3, metavar="K")
    r.add_argument("--output", metavar="FILE.csv|FILE.json", help="default: CSV on stdout")
    r.add_argument("--tta", action="store_true", help="test-time augmentation: average flipped and zoomed views")
    r.add_argument("--min-confidence", type=_probability, metavar="P",
                   help="label an image 'unknown' when its calibrated top probability is below P")
    r.add_argument("--runtime", default="auto", choices=RUNTIMES,
                   help=RUNTIME_HELP)
    r.add_argument("--explain", metavar="DIR",
                   help="also write a Grad-CAM overlay per image into DIR (STEM.png, at the model's input size): "
                        "where the network looked for the class it predicted (on PyTorch, which auto picks for it)")
    _setting_flag(r, "device")
    _setting_flag(r, "quiet")


def _export_flags(sub) -> None:
    x = sub.add_parser("export", help="the model as ONNX, or as a folder timm loads (--format timm), checked "
                                      "against PyTorch on the validation images")
    x.add_argument("run", metavar="RUN")
    x.add_argument("--format", default="onnx", choices=["onnx", "timm"],
                   help="onnx: one .onnx file; timm: a folder in timm's hub format (config.json, "
                        "model.safetensors, a README.md model card)")
    x.add_argument("--output", metavar="FILE|DIR", help="default RUN/model.onnx; with --format timm a folder, "
                                                        "default RUN/timm")
    x.add_argument("--quantize", choices=["int8"], help="also write an int8 copy (FILE.int8.onnx), with its "
                                                        "accuracy and speed against fp32 on validation")
    _setting_flag(x, "quiet")


def _serve_flags(sub) -> None:
    v = sub.add_parser("serve", help="an HTTP API for a run: POST /predict, GET /health, /metadata, /docs")
    v.add_argument("run", metavar="RUN")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=_int_at_least(1, 65535), default=8000)
    v.add_argument("--workers", type=_int_at_least(1), default=1)
    v.add_argument("--top-k", type=_int_at_least(1), default=3, metavar="K")
    v.add_argument("--min-confidence", type=_probability, metavar="P",
                   help="label an image 'unknown' when its calibrated top probability is below P")
    v.add_argument("--tta", action="store_true")
    v.add_argument("--max-upload-mb", type=_int_at_least(1), default=25, metavar="MB",
                   help="larger uploads are refused with 413 (default 25)")
    v.add_argument("--header-timeout", type=_int_at_least(1, 3600), default=10, metavar="S",
                   help="a connection that has not sent a whole request's headers S seconds after connecting "
                        "(or after its previous answer) is closed (default 10)")
    v.add_argument("--runtime", default="auto", choices=RUNTIMES, help=RUNTIME_HELP)
    _setting_flag(v, "device")


def _inspect_flags(sub) -> None:
    i = sub.add_parser("inspect", help="audit a data set without changing it: counts, bad, odd, tiny and "
                                       "duplicate images, leakage between splits, likely label errors")
    i.add_argument("data", metavar="DATA")
    i.add_argument("--run", metavar="RUN", help="a trained run: adds likely label errors (found out of fold on its "
                                                "cached features; label_issues.csv), and its split")
    i.add_argument("--out", metavar="DIR", help="where inspect.json and inspect.html go (default: RUN with "
                                                "--run, else the current folder)")
    i.add_argument("--min-side", type=_int_at_least(1), default=32, metavar="PX",
                   help="images with a shorter side are reported as tiny (default 32)")
    i.add_argument("--near-bits", type=_int_at_least(0), default=2, metavar="N",
                   help="perceptual hashes this many of 64 bits apart or closer are near duplicates (default 2)")
    _feature_flags(i)


def _feature_flags(p) -> None:
    """--cache-dir, --device and --quiet, as every command that runs the backbone over images has them."""
    for name in ("cache_dir", "device", "quiet"):
        _setting_flag(p, name)


def _suggest_flags(sub) -> None:
    s = sub.add_parser("suggest", help="the unlabelled images a run would learn most from: uncertain, diverse, "
                                       "no copies of labelled ones (CSV + HTML page)")
    s.add_argument("run", metavar="RUN")
    s.add_argument("paths", metavar="UNLABELLED", nargs="+", help="image files or folders (searched recursively)")
    s.add_argument("-n", type=_int_at_least(1), default=100, metavar="N", help="how many to choose (default 100)")
    s.add_argument("--output", metavar="FILE.csv", help="default RUN/suggest.csv; the page goes beside it as .html")
    s.add_argument("--uncertainty", choices=["margin", "entropy"], default="margin",
                   help="margin: 1 - (p1 - p2) of the calibrated probabilities (default); entropy: over all classes")
    _feature_flags(s)


def _embed_flags(sub) -> None:
    m = sub.add_parser("embed", help="the run's backbone features of images as a Parquet index (path, label, "
                                     "vector), for imgtune similar")
    m.add_argument("run", metavar="RUN")
    m.add_argument("paths", metavar="PATH", nargs="+",
                   help="image files, folders (searched recursively; class folders give labels) or a CSV path,label")
    m.add_argument("--output", required=True, metavar="FILE.parquet", help="the index to write")
    _feature_flags(m)


def _similar_flags(sub) -> None:
    s = sub.add_parser("similar", help="the images of an index nearest each query image, by cosine similarity "
                                       "(CSV + HTML page)")
    s.add_argument("run", metavar="RUN")
    s.add_argument("paths", metavar="QUERY", nargs="+", help="image files or folders (searched recursively)")
    s.add_argument("--index", required=True, metavar="FILE.parquet", help="written by imgtune embed with a run "
                                                                          "of the same backbone and image size")
    s.add_argument("-k", type=_int_at_least(1), default=10, metavar="K", help="neighbours per query (default 10)")
    s.add_argument("--output", metavar="FILE.csv", help="default INDEX_STEM.similar.csv beside the index; the "
                                                        "page goes beside it as .html")
    _feature_flags(s)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that it unwinds as Ctrl-C does: temporary files are
    removed and checkpoints kept on the way out."""


def _on_sigterm(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _sigterm_unwinds():
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    before = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _refuse_folders_as_files(args)
        with _sigterm_unwinds():
            return _COMMANDS[args.command](args)
    except ParameterError as e:  # worded for the command line: the flag, not the Python parameter
        print(f"imgtune: error: {e.worded_for('--' + e.param.replace('_', '-'))}", file=sys.stderr)
        return 2
    except ImgtuneError as e:
        print(f"imgtune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        how = "terminated" if isinstance(e, Terminated) else "interrupted"
        then = ("what was done is saved: run the same command with --resume to continue"
                if args.command in ("train", "retrain")
                else "every decision is saved in RUN/corrections.csv" if args.command == "review"
                else "no partial files were left: run the same command again")
        print(f"imgtune: {how}; {then}.", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except OSError as e:  # disk full, permissions: say which file and why, without a traceback
        print(f"imgtune: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1


def _refuse_folders_as_files(args) -> None:
    """An output file named by an existing folder is refused before any work, not after it."""
    for flag in ("output", "json"):
        value = getattr(args, flag, None)
        if value and os.path.isdir(value) and not (flag == "output" and getattr(args, "format", None) == "timm"):
            raise ConfigError(f"--{flag} {value!r} is a folder; give the name of a file to write.")


_COMMANDS = {**{name: getattr(commands, name) for name in ("train", "evaluate", "predict", "export", "serve",
                                                          "inspect", "suggest", "embed", "similar")},
             **{name: getattr(loop_commands, name) for name in ("review", "retrain", "compare")}}
