"""torchrun: two processes on CPU (gloo) train the same run as one process does."""

import csv
import json
import re
import sys

from conftest import run_watched, write_class_folders

from imgtune.cache.store import ShardStore
from imgtune.cli import main


def _args(data, run, cache) -> list[str]:
    return ["train", str(data), "--out", str(run), "--image-size", "32", "--epochs", "2", "--cache-dir", str(cache),
            "--seed", "3", "--device", "cpu"]


def test_two_processes_match_one(tmp_path, capsys):
    data = write_class_folders(tmp_path / "photos", 25, seed=4)  # 75 images: an odd number to share out
    assert main(_args(data, tmp_path / "one", tmp_path / "cache-one")) == 0  # one process: this one
    one = capsys.readouterr()
    two = run_watched([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                       "imgtune", *_args(data, tmp_path / "two", tmp_path / "cache-two")])  # a guard against a hang
    assert two.returncode == 0, two.stderr[-3000:]
    m1, m2 = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("one", "two"))
    assert abs(m1["accuracy"] - m2["accuracy"]) <= 0.005
    # every image extracted once, into the one cache, by one rank or the other
    assert sum(len(ShardStore(d, {}).index()) for d in (tmp_path / "cache-two" / "features").iterdir()) == 75
    # (--augment auto's orientation test extracted a sample first: those come from the cache)
    found = re.search(r"Features: (\d+) extracted, (\d+) from the cache", two.stderr)
    assert found and int(found.group(1)) + int(found.group(2)) == 75, two.stderr[-2000:]
    # every training image seen once per epoch; DistributedSampler's padding is said and counted
    with open(tmp_path / "two" / "split.csv", newline="") as f:
        n_train = sum(row["split"] == "train" for row in csv.DictReader(f))
    padding = (-n_train) % 2
    history = [json.loads(x) for x in (tmp_path / "two" / "history.jsonl").read_text().splitlines()]
    ft = [h for h in history if h["stage"] == "fine-tune" and h["epoch"] > 0]
    assert [h["images"] for h in ft] == [n_train + padding] * 2
    if padding:
        assert f"repeats {padding} image(s) per epoch" in " ".join(two.stderr.split())  # as wrapped
    # rank 0 alone wrote the run and printed the table
    assert two.stdout.count("Run folder:") == 1 and (tmp_path / "two" / "report.html").exists()
    assert one.out.count("Test split:") == two.stdout.count("Test split:") == 1
