"""Small generated images: each class is a shape of its own colour on a noisy background."""

from __future__ import annotations

import os

# One compute thread per process, in this process and every process the tests start (set before NumPy
# and PyTorch load): on the tests' 32-pixel images a second thread only spins, measured at 30-40 % more
# CPU-seconds for the same wall time per fit, and the suite must stay light beside other work on a
# shared machine. A user's OMP_NUM_THREADS is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

COLOURS = {"circle": (220, 40, 40), "square": (40, 180, 60), "triangle": (50, 80, 220)}


def make_image(cls: str, rng: np.random.Generator, size: int = 40) -> Image.Image:
    bg = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    img = Image.fromarray(bg)
    d = ImageDraw.Draw(img)
    c = COLOURS[cls]
    o = int(rng.integers(2, 8))
    if cls == "circle":
        d.ellipse([o, o, size - o, size - o], fill=c)
    elif cls == "square":
        d.rectangle([o, o, size - o, size - o], fill=c)
    else:
        d.polygon([(size // 2, o), (o, size - o), (size - o, size - o)], fill=c)
    return img


def write_class_folders(root: Path, per_class: int, seed: int = 0, classes=tuple(COLOURS)) -> Path:
    rng = np.random.default_rng(seed)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            fmt = "JPEG" if i % 2 else "PNG"
            make_image(cls, rng).save(root / cls / f"{cls}_{i:03d}.{'jpg' if fmt == 'JPEG' else 'png'}", fmt)
    return root


@pytest.fixture
def photos(tmp_path) -> Path:
    """photos/<class>/*: 3 classes x 14 images, one corrupt file and one text file among them."""
    root = write_class_folders(tmp_path / "photos", 14)
    (root / "circle" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "square" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="session", autouse=True)
def shared_feature_cache(tmp_path_factory) -> Path:
    """One feature cache for the whole session, in every process the tests start, and never the user's
    ~/.cache. Sharing is safe: an entry is keyed by the image's content, the transform and the backbone,
    so a test reads exactly what it would have computed. Tests about the cache itself pass their own."""
    cache = tmp_path_factory.mktemp("feature-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMGTUNE_CACHE", str(cache))
        yield cache


@pytest.fixture
def cache_dir(shared_feature_cache) -> Path:
    return shared_feature_cache


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """One trained run shared by the read-only tests: (run folder, data folder, cache). Its model.onnx is
    exported here, so that the commands' --runtime auto finds it current and writes nothing into the run."""
    from imgtune.cli import main

    base = tmp_path_factory.mktemp("trained")
    data = write_class_folders(base / "photos", 14, seed=1)
    run, cache = base / "run", base / "cache"  # its own cache: tests read what it holds
    assert main(["train", str(data), "--out", str(run), "--image-size", "32", "--epochs", "1",
                 "--cache-dir", str(cache), "--quiet"]) == 0
    assert main(["export", str(run), "--quiet"]) == 0
    return run, data, cache


def make_multilabel_image(labels: tuple[str, ...], rng: np.random.Generator, size: int = 48) -> Image.Image:
    """Each label's shape, in its colour, in a cell of a 2x2 grid of its own choosing, on noise."""
    img = Image.fromarray(rng.integers(0, 60, (size, size, 3), dtype=np.uint8))
    d = ImageDraw.Draw(img)
    half = size // 2
    for cls, cell in zip(labels, rng.permutation(4)):
        x, y = (cell % 2) * half, (cell // 2) * half
        c, o = COLOURS[cls], 3
        if cls == "circle":
            d.ellipse([x + o, y + o, x + half - o, y + half - o], fill=c)
        elif cls == "square":
            d.rectangle([x + o, y + o, x + half - o, y + half - o], fill=c)
        else:
            d.polygon([(x + half // 2, y + o), (x + o, y + half - o), (x + half - o, y + half - o)], fill=c)
    return img


def write_multilabel_csv(root: Path, n: int, seed: int = 0, name: str = "labels.csv") -> Path:
    """root/images/*.png with 0-3 of the shapes each, and root/NAME: path,labels (";"-joined, empty for
    none). Every label set of the three shapes occurs."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = ["path,labels"]
    for i in range(n):
        labels = tuple(c for c in COLOURS if rng.random() < 0.45) if i >= 8 else \
            tuple(c for j, c in enumerate(COLOURS) if i >> j & 1)
        make_multilabel_image(labels, rng).save(root / "images" / f"m{seed}_{i:03d}.png")
        rows.append(f"images/m{seed}_{i:03d}.png,{';'.join(labels)}")
    (root / name).write_text("\n".join(rows) + "\n")
    return root / name


def run_watched(cmd: list[str], *, cwd=None, env=None, silence: float = 900.0) -> subprocess.CompletedProcess:
    """Run `cmd` to its end, capturing stdout and stderr as text; killed only when for `silence` seconds it
    has printed nothing and used no CPU time. A guard against a hang that a slow, busy machine never
    trips, however long the command takes there: a live imgtune prints a progress line at least every
    30 s inside every long stage (progress.HEARTBEAT), and a quiet one keeps using the CPU."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: dict[str, list[str]] = {"stdout": [], "stderr": []}
    last = [time.monotonic()]

    def pump(name: str, stream) -> None:
        for line in stream:
            out[name].append(line)
            last[0] = time.monotonic()

    threads = [threading.Thread(target=pump, args=(n, s), daemon=True)
               for n, s in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for t in threads:
        t.start()
    cpu = [-1.0]
    while proc.poll() is None:
        now = _cpu_seconds(proc.pid)
        if now > cpu[0]:
            cpu[0], last[0] = now, time.monotonic()
        if time.monotonic() - last[0] > silence:
            proc.kill()
            proc.wait()
            pytest.fail(f"{cmd[:4]} printed nothing and used no CPU for {silence:.0f} s: hung. Last output: "
                        f"{''.join(out['stderr'][-5:])}")
        time.sleep(1)
    for t in threads:
        t.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(out["stdout"]), "".join(out["stderr"]))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants, live or finished (Linux /proc; 0
    elsewhere): torchrun's launcher idles while its workers compute."""
    stats = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                stats[int(entry)] = (int(fields[1]), sum(int(v) for v in fields[11:15]))
            except (OSError, ValueError, IndexError):
                continue
    tree, total = {pid}, 0
    changed = True
    while changed:
        changed = False
        for p, (parent, _) in stats.items():
            if parent in tree and p not in tree:
                tree.add(p)
                changed = True
    total = sum(stats[p][1] for p in tree if p in stats)
    return total / os.sysconf("SC_CLK_TCK") if stats else 0.0
