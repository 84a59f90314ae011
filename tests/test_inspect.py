"""`imgtune inspect`: finds what is wrong with a data set and changes nothing in it."""

import hashlib
import io
import json
import os
import shutil

import numpy as np
from conftest import make_image, write_class_folders
from PIL import Image

from imgtune.cli import main


def _fingerprint(root):
    """Every file under root -> (SHA-256, mtime): what 'not modified, not moved' means."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            out[p] = (hashlib.sha256(open(p, "rb").read()).hexdigest(), os.stat(p).st_mtime_ns)
    return out


def _planted(root):
    """train/val/test class folders with one of each problem inspect must find."""
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        write_class_folders(root / split, n, seed={"train": 0, "val": 1, "test": 2}[split])
    tr = root / "train"
    (tr / "circle" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    png = io.BytesIO()
    make_image("square", np.random.default_rng(9), size=64).save(png, "PNG")
    (tr / "square" / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    make_image("square", np.random.default_rng(8)).convert("CMYK").save(tr / "square" / "cmyk.jpg", "JPEG")
    make_image("triangle", np.random.default_rng(7)).save(tr / "triangle" / "really_png.jpg", "PNG")
    make_image("circle", np.random.default_rng(6), size=12).save(tr / "circle" / "tiny.png")
    shutil.copy(tr / "circle" / "circle_000.png", root / "test" / "circle" / "leaked.png")
    shutil.copy(tr / "triangle" / "triangle_001.jpg", tr / "square" / "mislabelled_copy.jpg")
    Image.open(tr / "square" / "square_002.png").resize((37, 37)).save(root / "val" / "square" / "near.jpg",
                                                                       quality=90)
    (tr / "circle" / "notes.txt").write_text("not an image")
    return root


def test_inspect_finds_planted_problems_and_modifies_nothing(tmp_path, capsys):
    data = _planted(tmp_path / "data")
    before = _fingerprint(data)
    out = tmp_path / "audit"
    assert main(["inspect", str(data), "--out", str(out), "--quiet"]) == 0
    assert _fingerprint(data) == before  # nothing modified, moved, added or removed

    doc = json.loads((out / "inspect.json").read_text())
    assert (out / "inspect.html").stat().st_size > 10_000
    assert doc["counts"]["train"]["circle"] == 7  # 6 + the tiny one; broken.jpg is unreadable
    unreadable = {os.path.basename(r["path"]): r["reason"] for r in doc["unreadable"]}
    assert set(unreadable) == {"broken.jpg", "truncated.png", "notes.txt"}
    assert "truncated" in unreadable["truncated.png"]
    odd = {os.path.basename(r["path"]): " ".join(r["reasons"]) for r in doc["odd"]}
    assert "CMYK" in odd["cmyk.jpg"] and "is a PNG file" in odd["really_png.jpg"]
    assert [os.path.basename(r["path"]) for r in doc["tiny"]] == ["tiny.png"]

    exact = {frozenset(map(os.path.basename, g["paths"])): g for g in doc["exact_duplicates"]}
    leaked = exact[frozenset({"circle_000.png", "leaked.png"})]
    assert leaked["across_splits"] and not leaked["conflicting_labels"]
    assert exact[frozenset({"triangle_001.jpg", "mislabelled_copy.jpg"})]["conflicting_labels"]
    near = [set(map(os.path.basename, g["paths"])) for g in doc["near_duplicates"]]
    assert {"square_002.png", "near.jpg"} in near
    assert doc["leakage"]["exact_duplicates"] == 1 and doc["leakage"]["near_duplicates"] >= 1
    printed = capsys.readouterr().out
    assert "Exact duplicates: 2 groups" in printed and "inspect.html" in printed


def test_inspect_with_a_run_finds_a_wrong_label(trained_run, tmp_path):
    run, data, _ = trained_run
    copy = tmp_path / "photos"
    shutil.copytree(data, copy)
    make_image("circle", np.random.default_rng(42)).save(copy / "square" / "actually_a_circle.png")
    before = _fingerprint(copy)
    out = tmp_path / "out"
    assert main(["inspect", str(copy), "--run", str(run), "--out", str(out), "--quiet"]) == 0
    assert _fingerprint(copy) == before
    issues = json.loads((out / "inspect.json").read_text())["label_issues"]
    assert issues and os.path.basename(issues[0]["path"]) == "actually_a_circle.png"
    assert issues[0]["suggested"] == "circle" and issues[0]["label"] == "square"
    assert not (run / "inspect.json").exists()  # --out wins over the run folder


def test_inspect_reports_a_one_class_folder_instead_of_refusing(tmp_path, capsys):
    data = write_class_folders(tmp_path / "one", 3, classes=("circle",))
    assert main(["inspect", str(data), "--out", str(tmp_path), "--quiet"]) == 0
    assert "in 1 class;" in capsys.readouterr().out


def test_inspect_of_a_missing_folder_is_one_line(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
