"""CPU and wall seconds of one small fit (36 generated images at 32 px, 2 fine-tune epochs) in a process
whose imports are already warm: what most of the test suite's trainings cost. Run it against two trees
to compare them, alternating:

    for i in 1 2; do PYTHONPATH=/tmp/before/src python benchmarks/small_fit.py; python benchmarks/small_fit.py; done

Prints which imgtune it timed and its CPU (user+sys of the process) and wall seconds."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # as the test suite runs
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import write_class_folders  # noqa: E402

import imgtune  # noqa: E402
from imgtune import ImageClassifier  # noqa: E402


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="imgtune-small-fit-"))
    try:
        data = write_class_folders(root / "photos", 12, seed=3)
        # the first fit warms the imports; the second, with a cache of its own, is the one timed
        ImageClassifier(image_size=32, epochs=0, quiet=True, device="cpu", cache_dir=str(root / "warm")).fit(
            data, out=root / "warm-run")
        cpu, wall = time.process_time(), time.perf_counter()
        ImageClassifier(image_size=32, epochs=2, batch_size=8, cache_dir=str(root / "cache"), quiet=True,
                        device="cpu").fit(data, out=root / "run")
        print(f"{imgtune.__file__}: {time.process_time() - cpu:.1f} CPU-s, {time.perf_counter() - wall:.1f} s wall")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
