"""End to end through the command line: train -> evaluate -> predict, and bad input exits cleanly."""

import csv
import json
import shlex
import shutil
import sys
from pathlib import Path

from conftest import run_watched, write_class_folders
from safetensors import safe_open

from imgtune.cli import main


def imgtune(*args, cwd=None):
    return run_watched([sys.executable, "-m", "imgtune", *map(str, args)], cwd=cwd)


def test_train_evaluate_predict(photos, cache_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(photos), "--out", str(run), "--image-size", "32", "--epochs", "1",
                 "--cache-dir", str(cache_dir), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "circle" in out and "overall" in out and f"Run folder: {run}" in out

    for name in ("config.json", "model.safetensors", "metrics.json", "history.jsonl", "split.csv", "skipped.csv"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["classes"] == ["circle", "square", "triangle"] and config["backbone"] == "efficientnet_lite0"
    with safe_open(str(run / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("backbone.") for k in keys) and any(k.startswith("head.") for k in keys)
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= {"classes", "n_images", "accuracy", "macro_f1", "top_k_accuracy", "per_class",
                            "confusion_matrix", "ece"}
    assert metrics["accuracy"] >= 0.8  # three colours on noise: an easy problem
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert {h["stage"] for h in history} == {"head", "fine-tune"}
    skipped = (run / "skipped.csv").read_text()
    assert "broken.jpg" in skipped and "notes.txt" in skipped

    # evaluate in a fresh process: the run folder alone is enough
    ev = imgtune("evaluate", run, photos, "--json", tmp_path / "m.json", "--quiet")
    assert ev.returncode == 0, ev.stderr
    assert "circle" in ev.stdout and json.loads((tmp_path / "m.json").read_text())["n_images"] == 42
    assert "Skipped 2 files" in ev.stderr

    assert main(["predict", str(run), str(photos / "circle"), "--output", str(tmp_path / "preds.csv"), "--top-k", "2",
                 "--quiet"]) == 0
    rows = list(csv.reader(open(tmp_path / "preds.csv")))
    assert rows[0] == ["path", "label", "probability", "label_1", "probability_1", "label_2", "probability_2"]
    assert len(rows) == 1 + 14
    assert sum(r[1] == "circle" for r in rows[1:]) >= 12
    assert "broken.jpg" in capsys.readouterr().err

    assert main(["predict", str(run), str(photos / "square" / "square_000.png"), "--output", str(tmp_path / "p.json")]) == 0
    assert json.loads((tmp_path / "p.json").read_text())[0]["label"] == "square"


def test_second_train_extracts_nothing(photos, tmp_path, capsys):
    args = [str(photos), "--image-size", "32", "--epochs", "0", "--cache-dir", str(tmp_path / "own-cache")]
    assert main(["train", *args, "--out", str(tmp_path / "a")]) == 0
    assert "Features: 42 extracted, 0 from the cache" in capsys.readouterr().err
    assert main(["train", *args, "--out", str(tmp_path / "b")]) == 0
    assert "Features: 0 extracted, 42 from the cache" in capsys.readouterr().err
    same = [json.loads((tmp_path / r / "metrics.json").read_text())["accuracy"] for r in "ab"]
    assert same[0] == same[1]


def _bad_cases(tmp_path, trained):
    one = write_class_folders(tmp_path / "one", 2, classes=("circle",))
    allbad = write_class_folders(tmp_path / "allbad", 3, classes=("circle", "square"))
    for p in (allbad / "square").iterdir():
        p.write_bytes(b"garbage")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.jpg").write_bytes(b"x")
    splits = tmp_path / "splits"
    write_class_folders(splits / "train", 3, classes=("circle", "square"))
    write_class_folders(splits / "test", 2, classes=("circle", "triangle"))
    (tmp_path / "columns.csv").write_text("file,class\na.png,circle\n")
    (tmp_path / "gone.csv").write_text("path,label\nnope/a.png,circle\nnope/b.png,square\n")
    run, data, _ = trained
    empties = tmp_path / "empties"
    for cls in ("a", "b"):
        (empties / cls).mkdir(parents=True)
        for i in range(5):
            (empties / cls / f"{i}.png").write_bytes(b"")
    shutil.copytree(data, tmp_path / "data")
    first = sorted((tmp_path / "data" / "circle").iterdir())[0].name
    (tmp_path / "data" / "twice.csv").write_text(f"path,label\ncircle/{first},circle\ncircle/{first},square\n")
    (tmp_path / "data" / "holdout.csv").write_text(f"path,label,split\ncircle/{first},circle,holdout\n")
    (tmp_path / "preds.csv").mkdir()
    return {
        "out inside the data": (["train", tmp_path / "data", "--out", tmp_path / "data" / "run"], "inside the data"),
        "time limit spent at start": (["train", data, "--out", tmp_path / "r13", "--time-limit", "1s"],
                                      "was spent before training could start"),
        "a file under two labels": (["train", tmp_path / "data" / "twice.csv", "--out", tmp_path / "r14"],
                                    "twice with different labels"),
        "unknown split value": (["train", tmp_path / "data" / "holdout.csv", "--out", tmp_path / "r15"],
                                "row 2: unknown split 'holdout'"),
        "every file empty": (["train", empties, "--out", tmp_path / "r16", "--cache-dir", tmp_path / "c", "--quiet"],
                             "All 10 files"),
        "test classes differ from train": (["train", splits, "--out", tmp_path / "r10"], "'triangle'"),
        "CSV without path,label": (["train", tmp_path / "columns.csv", "--out", tmp_path / "r11"], "needs columns"),
        "CSV of missing files": (["train", tmp_path / "gone.csv", "--out", tmp_path / "r12"], "none is an existing"),
        "missing path": (["train", tmp_path / "nope", "--out", tmp_path / "r1"], "does not exist"),
        "a file": (["train", tmp_path / "file.jpg", "--out", tmp_path / "r2"], "is a file"),
        "empty folder": (["train", tmp_path / "empty", "--out", tmp_path / "r3"], "Found 0 images"),
        "one class": (["train", one, "--out", tmp_path / "r4"], "at least 2 classes"),
        "all files of a class bad": (["train", allbad, "--out", tmp_path / "r5", "--image-size", "32",
                                      "--cache-dir", tmp_path / "c", "--quiet"], "found none usable in 'square'"),
        "unknown backbone": (["train", data, "--out", tmp_path / "r6", "--backbone", "nope_net"], "Unknown backbone"),
        "negative epochs": (["train", data, "--out", tmp_path / "r7", "--epochs", "-1"], "--epochs"),
        "image size 0": (["train", data, "--out", tmp_path / "r8", "--image-size", "0"], "--image-size"),
        "resume without run": (["train", data, "--out", tmp_path / "r9", "--resume"], "no run to continue"),
        "run folder taken": (["train", data, "--out", run], "already holds a run"),
        "evaluate a non-run": (["evaluate", tmp_path / "empty", data], "not a finished run"),
        "predict missing file": (["predict", run, tmp_path / "nope.jpg", "--quiet"], "found none usable"),
        "predict only bad files": (["predict", run, tmp_path / "file.jpg", "--quiet"], "found none usable"),
        "bad output suffix": (["predict", run, data / "circle", "--output", tmp_path / "x.txt"], ".csv or .json"),
        "output names a folder": (["predict", run, data / "circle", "--output", tmp_path / "preds.csv"], "is a folder"),
        "export output names a folder": (["export", run, "--output", tmp_path / "empty"], "is a folder"),
        "metrics file names a folder": (["evaluate", run, data, "--json", tmp_path / "empty"], "is a folder"),
    }


def test_bad_input_exits_2_with_one_line(tmp_path, trained_run, capsys):
    """Each case through the CLI's own entry point (an exception that escaped `main` fails the test as a
    traceback would); one fresh process shows the same from the shell."""
    cases = _bad_cases(tmp_path, trained_run)
    # known classes, but every 'square' file unreadable: evaluated on the rest, skips reported, no traceback
    r = imgtune("evaluate", trained_run[0], tmp_path / "allbad", "--json", tmp_path / "m.json", "--quiet")
    assert r.returncode == 0 and "Skipped 3 files" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = imgtune(*cases["missing path"][0])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr, r.stderr
    for name, (args, expected) in cases.items():
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse's own refusals (usage line + one error line)
            rc = e.code
        err = capsys.readouterr().err
        assert rc == 2, f"{name}: rc={rc} {err}"
        lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("skipped ")]
        assert len(lines) == 1 and expected in lines[0], f"{name}: {err}"


def test_builtin_digits_data(tmp_path):
    from imgtune.data.builtin import resolve

    root = resolve("builtin:digits", tmp_path)
    folders = sorted(p.name for p in (tmp_path / "datasets" / "digits").iterdir() if p.is_dir())
    assert folders == [str(d) for d in range(10)]
    assert sum(1 for _ in (tmp_path / "datasets" / "digits").rglob("*.png")) == 1797
    assert resolve("builtin:digits", tmp_path) == root


def test_without_a_test_split_metrics_are_on_val(tmp_path, capsys):
    root = tmp_path / "photos"
    write_class_folders(root / "train", 6, seed=11)
    write_class_folders(root / "val", 3, seed=12)
    run = tmp_path / "run"
    assert main(["train", str(root), "--out", str(run), "--image-size", "32", "--epochs", "0",
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["n_images"] == 9


def test_the_seed_recipe_end_to_end(tmp_path, capsys):
    """The reference recipe as it was: Dense-256 head trained by epochs, SGD fine-tuning of the last block
    under the heavy affine augmentation, the best epoch on validation kept, argmax decisions."""
    data = write_class_folders(tmp_path / "photos", 8, seed=13)
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--recipe", "seed", "--head-epochs", "2", "--epochs", "1",
                 "--image-size", "32", "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["recipe"]["name"] == "seed" and config["head"]["kind"] == "mlp"
    assert config["recipe"]["finetune"]["optimizer"] == "sgd" and config["recipe"]["finetune"]["augment"] == "seed"
    assert config["decision"]["offsets"] == [0.0, 0.0, 0.0]
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history if h["stage"] == "head"] == [1, 2]
    assert [h["epoch"] for h in history if h["stage"] == "fine-tune"] == [0, 1]
    assert json.loads((run / "metrics.json").read_text())["n_images"] == 3


def test_the_readme_first_command_trains_on_the_embedded_digits(tmp_path):
    """The README's first set-up command, as written there, in a fresh folder and a fresh process: exit 0,
    the per-class table of all ten digits at the end, and a run folder that scores like one."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if "imgtune train builtin:" in ln and "&&" in ln)
    argv = shlex.split(line.split("&&", 1)[1])
    assert argv[:2] == ["imgtune", "train"]
    r = run_watched([sys.executable, "-m", "imgtune", *argv[1:]], cwd=tmp_path)  # no wall-clock limit: a busy
    # machine may take many minutes; only a process silent for 15 minutes counts as hung
    assert r.returncode == 0, r.stderr[-3000:]
    out = argv[argv.index("--out") + 1]
    metrics = json.loads((tmp_path / out / "metrics.json").read_text())
    assert sorted(metrics["per_class"]) == [str(d) for d in range(10)]
    assert metrics["accuracy"] > 0.85
    table = r.stdout.splitlines()[-20:]  # the table is what the command prints last on stdout
    first_cells = {ln.replace("│", " ").split()[0] for ln in table if ln.replace("│", " ").split()}
    assert {str(d) for d in range(10)} <= first_cells, table


def test_the_command_line_starts_without_loading_torch(tmp_path):
    """`imgtune --help`, a bad flag and data that cannot train answer before PyTorch loads (it took 6 s, a
    window in which Ctrl-C printed a traceback); the library's names still import as before."""
    import subprocess

    (tmp_path / "bad.csv").write_text('path,label\n"a.png,cat\nb.png,dog\n')
    code = ("import sys, imgtune, imgtune.cli\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            f"assert imgtune.cli.main(['train', {str(tmp_path / 'bad.csv')!r}, '--out', 'r']) == 2\n"
            "assert 'torch' not in sys.modules, 'torch imported for a bad CSV'\n"
            "from imgtune import ImageClassifier, TimeLimit, TrainedModel\n"
            "assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_each_train_setting_is_one_flag_one_parameter_and_one_rule(capsys):
    """TrainSettings defines each setting once: `imgtune train` has its flag with its default, the
    classifier its keyword argument with the same default, and both refuse a bad value by the same rule."""
    import inspect

    import pytest

    from imgtune import ImageClassifier
    from imgtune.cli import build_parser
    from imgtune.config import TrainSettings
    from imgtune.errors import ParameterError

    defaults = TrainSettings.defaults()
    args = build_parser().parse_args(["train", "DATA"])
    assert {name: getattr(args, name) for name in defaults} == defaults
    assert ImageClassifier().get_params() == defaults
    assert list(inspect.signature(ImageClassifier).parameters) == list(defaults)
    for flag, text, value, said in [("--epochs", "-1", -1, "a whole number, 0 or more"),
                                    ("--image-size", "8", 8, "a whole number from 16 to 2048"),
                                    ("--metric", "f1", "f1", "one of accuracy, balanced_accuracy"),
                                    ("--seed", "-2", -2, "a whole number from 0 to 4294967295")]:
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train", "DATA", flag, text])
        assert f"argument {flag}: expected {said}" in capsys.readouterr().err
        parameter = flag[2:].replace("-", "_")
        with pytest.raises(ParameterError, match=f"^{parameter} must be {said}"):
            TrainSettings(**{parameter: value})
