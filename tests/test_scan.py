"""Folder and CSV layouts -> a manifest with seeded, stratified splits; bad layouts -> one clear error."""

import os
import re
import sys

import pytest
from conftest import run_watched, write_class_folders

from imgtune.data.scan import labelled_files, scan
from imgtune.errors import DataError


def test_class_folders_get_a_seeded_stratified_split(tmp_path):
    root = write_class_folders(tmp_path / "photos", 20)
    m = scan(root, seed=3)
    assert m.classes == ["circle", "square", "triangle"]
    assert m.counts() == {"train": 48, "val": 6, "test": 6}
    for split in ("val", "test"):
        assert sorted(it.label for it in m.split(split)) == [0, 0, 1, 1, 2, 2]
    assert scan(root, seed=3).items == m.items
    assert scan(root, seed=4).items != m.items
    assert m.summary() == "Found 60 images in 3 classes: 48 train, 6 val, 6 test."


def test_split_folders_are_used_as_given(tmp_path):
    for split in ("train", "validation", "test"):
        write_class_folders(tmp_path / "d" / split, 4, seed=len(split))
    m = scan(tmp_path / "d")
    assert m.counts() == {"train": 12, "val": 12, "test": 12}
    assert all("/validation/" in it.path for it in m.split("val"))


def test_val_is_taken_from_train_when_missing(tmp_path):
    write_class_folders(tmp_path / "d" / "train", 10)
    write_class_folders(tmp_path / "d" / "test", 2)
    m = scan(tmp_path / "d")
    assert m.counts() == {"train": 27, "val": 3, "test": 6}


def test_csv_with_relative_paths_and_skips(tmp_path):
    root = write_class_folders(tmp_path / "photos", 5)
    rows = ["path,label"] + [f"photos/{c}/{c}_{i:03d}.{'jpg' if i % 2 else 'png'},{c}"
                             for c in ("circle", "square") for i in range(5)]
    rows.append("photos/gone.png,circle")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    m = scan(tmp_path / "labels.csv")
    assert m.classes == ["circle", "square"] and len(m.items) == 10
    assert m.skipped == [(str(tmp_path / "photos/gone.png"), "file not found")]
    assert "(1 skipped)" in m.summary()
    # paths relative to the CSV's folder, each listed file found once with its label
    assert sorted((it.path, it.label) for it in m.items) == sorted(
        (str(root / c / f"{c}_{i:03d}.{'jpg' if i % 2 else 'png'}"), k) for k, c in enumerate(("circle", "square"))
        for i in range(5))


def test_split_csv_round_trips(tmp_path):
    m = scan(write_class_folders(tmp_path / "photos", 10), seed=1)
    m.write_csv(tmp_path / "split.csv")
    again = scan(tmp_path / "split.csv")
    assert again.classes == m.classes and set(again.items) == set(m.items)


def test_non_images_are_reported(tmp_path):
    root = write_class_folders(tmp_path / "p", 3)
    (root / "circle" / "readme.txt").write_text("x")
    m = scan(root)
    assert [p for p, _ in m.skipped] == [str(root / "circle" / "readme.txt")]


def _file(p):
    (p / "f.jpg").write_bytes(b"x")
    return p / "f.jpg"


def _empty(p):
    (p / "empty").mkdir()
    return p / "empty"


def _bad_csv(p):
    (p / "bad.csv").write_text("file,cls\na,b\n")
    return p / "bad.csv"


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "does not exist"),
    (_file, "is a file, not a folder"),
    (_empty, "Found 0 images"),
    (lambda p: write_class_folders(p / "one", 3, classes=("circle",)), "at least 2 classes.*found 1"),
    (_bad_csv, r"needs columns 'path' \(or 'file_name'\) and 'label'"),
])
def test_bad_layouts(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        scan(make(tmp_path))


def test_test_classes_must_be_known(tmp_path):
    write_class_folders(tmp_path / "d" / "train", 3, classes=("circle", "square"))
    write_class_folders(tmp_path / "d" / "test", 3, classes=("circle", "triangle"))
    with pytest.raises(DataError, match="classes that the training data does not"):
        scan(tmp_path / "d")


def test_labelled_files_prefers_the_test_split(tmp_path):
    write_class_folders(tmp_path / "d" / "train", 3)
    write_class_folders(tmp_path / "d" / "test", 2)
    m = labelled_files(tmp_path / "d", ["circle", "square", "triangle"])
    assert len(m.items) == 6 and all("/test/" in it.path for it in m.items)


def test_file_name_that_is_not_utf8_round_trips_through_split_csv(tmp_path):
    root = write_class_folders(tmp_path / "p", 4)
    odd = root.joinpath("circle").as_posix().encode() + b"/caf\xe9.png"
    os.rename(root / "circle" / "circle_000.png", odd)
    m = scan(root)
    m.write_csv(tmp_path / "split.csv")
    again = scan(tmp_path / "split.csv")
    assert set(again.items) == set(m.items)
    assert any(it.path.encode("utf-8", "surrogateescape") == odd for it in again.items)


def _partly_split_csv(tmp_path, column: str, label_of) -> tuple:
    """A CSV of 3 classes x 12 images where only some rows fill the `split` column: per class, 3 rows
    say test, and one row says train -> (the CSV's path, {absolute path: the split given, or ""})."""
    root = write_class_folders(tmp_path / "photos", 12)
    rows, given = [f"path,{column},split"], {}
    for c in ("circle", "square", "triangle"):
        for i in range(12):
            p = f"photos/{c}/{c}_{i:03d}.{'jpg' if i % 2 else 'png'}"
            split = "test" if i < 3 else "train" if i == 3 else ""
            rows.append(f"{p},{label_of(c)},{split}")
            given[str(root.parent / p)] = split
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "labels.csv", given


@pytest.mark.parametrize("column,label_of", [("label", lambda c: c), ("labels", lambda c: f"{c};shape")],
                         ids=["single-label", "multi-label"])
def test_a_partly_filled_split_column_keeps_every_given_split_and_splits_only_the_rest(tmp_path, column,
                                                                                       label_of):
    csv_path, given = _partly_split_csv(tmp_path, column, label_of)
    m = scan(csv_path, seed=0)
    assert m.multi == (column == "labels")
    found = {it.path: it.split for it in m.items}
    assert set(found) == set(given)
    for path, split in given.items():  # a row that names its split stays in it
        if split:
            assert found[path] == split, path
    # the rest make up train and val: test is what the CSV said it is, and nothing more
    assert {p for p, s in found.items() if s == "test"} == {p for p, s in given.items() if s == "test"}
    assert m.counts()["val"] > 0 and m.counts()["train"] > 9
    assert "24 of 36 CSV rows name no split: split into train and val" in m.summary()
    assert scan(csv_path, seed=0).items == m.items  # seeded


def test_a_partly_filled_split_column_through_the_cli_never_trains_on_the_test_rows(tmp_path):
    """The CLI in a fresh process: the rows marked test are the test split in split.csv, and the
    console says how the rest was split."""
    import csv
    import subprocess
    import sys

    csv_path, given = _partly_split_csv(tmp_path, "label", lambda c: c)
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "imgtune", "train", str(csv_path), "--out", str(run),
                           "--image-size", "32", "--epochs", "0"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    said = " ".join((done.stdout + done.stderr).split())  # the console wraps long lines
    assert "24 of 36 CSV rows name no split: split into train and val" in said
    # the output is a pipe, not a terminal: each stage says when it starts, no silent minutes
    assert re.search(r"Extracting features: \d+ to do \.\.\.", said) and "Head: choosing its L2 strength" in said
    with open(run / "split.csv", newline="") as f:
        written = {r["path"]: r["split"] for r in csv.DictReader(f)}
    assert {p for p, s in written.items() if s == "test"} == {p for p, s in given.items() if s == "test"}
    assert all(written[p] == "train" for p, s in given.items() if s == "train")


@pytest.mark.parametrize("labels", [["", "", ""], ["red", "", "red"], ['["red"]', "[]", '["red"]']],
                         ids=["all empty", "one label", "one label as JSON"])
def test_a_multi_label_csv_with_fewer_than_two_labels_is_one_line_exit_2(tmp_path, capsys, labels):
    """A fresh process: exit 2 and one line naming what was found, no traceback."""
    import subprocess
    import sys

    write_class_folders(tmp_path / "p", 1)
    files = sorted((tmp_path / "p").rglob("*.png")) + sorted((tmp_path / "p").rglob("*.jpg"))
    rows = ["path,labels"] + [f'{f},"{v.replace(chr(34), chr(34) * 2)}"' for f, v in zip(files, labels)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    done = subprocess.run([sys.executable, "-m", "imgtune", "train", str(tmp_path / "m.csv"), "--out",
                           str(tmp_path / "run")], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "at least two distinct labels" in err[0], done.stderr


def test_a_folder_holding_a_csv_says_to_give_the_csv_and_a_csv_without_val_speaks_of_rows(tmp_path):
    (tmp_path / "hf").mkdir()
    make = __import__("conftest").make_image
    import numpy as np

    rng = np.random.default_rng(0)
    for i in range(4):
        make("circle" if i % 2 else "square", rng).save(tmp_path / "hf" / f"{i}.png")
    (tmp_path / "hf" / "metadata.csv").write_text("file_name,label\n" + "\n".join(
        f"{i}.png,{'circle' if i % 2 else 'square'}" for i in range(4)) + "\n")
    with pytest.raises(DataError, match=r"metadata\.csv: give that CSV as DATA"):
        scan(tmp_path / "hf")
    one_each = tmp_path / "one.csv"
    one_each.write_text("path,label\nhf/0.png,square\nhf/1.png,circle\n")
    from imgtune.data.scan import require_usable

    with pytest.raises(DataError, match="mark some rows val in a split column"):
        require_usable(scan(one_each))


@pytest.mark.parametrize("body, expected", [
    ('{0},"red\n{1},blue\n{2},green\n', "row 2: cannot be read as CSV"),  # a quote never closed
    ('{0},red\n{1},"blue\n{2},green"\n', "row 3: the label 'blue\\n"),  # closed rows later
    ('{0},red\n{1},"{2}"\n', "looks like an image file's path"),
    ('{0},"[""red;x""]"\n{1},"[""blue""]"\n{2},red\n', "contains ';'"),
], ids=["unterminated quote", "quote closed rows later", "a path as label", "; in a JSON label"])
def test_a_csv_that_cannot_be_read_back_as_written_is_one_line_naming_the_row(tmp_path, body, expected):
    """Read strictly, in a fresh process: exit 2, one line naming the row; never a run trained on what a
    quote left open swallowed, nor a label that split.csv and predictions could not write back."""
    write_class_folders(tmp_path / "p", 1)
    files = sorted(str(f) for f in (tmp_path / "p").rglob("*.*"))
    header = "path,labels\n" if "[" in body else "path,label\n"
    (tmp_path / "m.csv").write_text(header + body.format(*files))
    done = run_watched([sys.executable, "-m", "imgtune", "train", str(tmp_path / "m.csv"), "--out",
                        str(tmp_path / "run")])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and expected in err[0], done.stderr
    assert not (tmp_path / "run" / "split.csv").exists()
