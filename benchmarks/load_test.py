"""Load test of `imgtune serve`: N requests at concurrency C, a mix of good and bad uploads, against a
server this script starts on 127.0.0.1 and stops at the end.

    python benchmarks/load_test.py --run benchmarks/out/run-default --requests 1000 --concurrency 8

Reports p50/p99 latency, throughput and the count of answers by status; the target is 0 server errors
(5xx) and a server that still answers /health afterwards. Bounded in count (--requests) and in time
(--max-seconds); loopback only. Results also go to benchmarks/out/load-test.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from corpus import bomb_png  # noqa: E402  (the tests' decompression bomb)


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                    f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
                    for name, data in files) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def post(url: str, name: str, data: bytes, timeout: float) -> tuple[int, float]:
    body, ctype = multipart([(name, data)])
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, {"Content-Type": ctype}), timeout=timeout) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        e.read()
        status = e.code
    except OSError:
        status = 0  # no answer at all (connection refused or reset, timeout)
    return status, time.perf_counter() - started


def bad_uploads(good: bytes) -> list[tuple[str, bytes]]:
    return [("notes.jpg", b"<html>not an image</html>"), ("empty.png", b""), ("bomb.png", bomb_png()),
            ("truncated.png", good[: len(good) // 2]), ("random.jpg", os.urandom(4096))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def good_uploads(run: Path, n: int) -> list[tuple[str, bytes]]:
    with open(run / "split.csv", newline="") as f:
        rows = [r["path"] for r in csv.DictReader(f) if r["split"] in ("test", "val")]
    return [(Path(p).name, Path(p).read_bytes()) for p in rows[:n]]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=Path("benchmarks/out/run-default"))
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--bad-share", type=float, default=0.2)
    p.add_argument("--runtime", default="torch", choices=["torch", "onnx", "onnx-int8"])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=900)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/load-test.json"))
    args = p.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "imgtune", "serve", str(args.run), "--port", str(port),
                               "--runtime", args.runtime, "--workers", str(args.workers)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"the server did not start: {server.stderr.read().decode()[-2000:]}")
                time.sleep(0.25)

        good = good_uploads(args.run, 200)
        bad = bad_uploads(good[0][1])
        rng = random.Random(0)
        plan = [rng.choice(bad) if rng.random() < args.bad_share else rng.choice(good) for _ in range(args.requests)]
        stop_at = time.monotonic() + args.max_seconds

        def one(item):
            if time.monotonic() > stop_at:
                return None
            status, seconds = post(base + "/predict", item[0], item[1], timeout=60)
            return item in bad, status, seconds

        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = [r for r in pool.map(one, plan) if r is not None]
        wall = time.perf_counter() - started
        healthy = urllib.request.urlopen(base + "/health", timeout=5).status == 200
    finally:
        server.terminate()
        server.wait(timeout=30)

    latencies = [s for _, _, s in results]
    by_status = Counter(str(status) for _, status, _ in results)
    report = {
        "requests": len(results), "concurrency": args.concurrency, "runtime": args.runtime,
        "workers": args.workers, "good": sum(not b for b, _, _ in results), "bad": sum(b for b, _, _ in results),
        "wall_seconds": wall, "throughput_rps": len(results) / wall,
        "p50_ms": 1000 * percentile(latencies, 50), "p99_ms": 1000 * percentile(latencies, 99),
        "p50_good_ms": 1000 * percentile([s for b, _, s in results if not b], 50),
        "p99_good_ms": 1000 * percentile([s for b, _, s in results if not b], 99),
        "by_status": dict(sorted(by_status.items())),
        "server_errors": sum(n for k, n in by_status.items() if k.startswith("5") or k == "0"),
        "good_not_200": sum(1 for b, status, _ in results if not b and status != 200),
        "bad_not_4xx": sum(1 for b, status, _ in results if b and not 400 <= status < 500),
        "healthy_after": healthy,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"\n| requests | concurrency | runtime | throughput req/s | p50 ms | p99 ms | p50 / p99 ms, good only | "
          f"answers by status | server errors |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
          f"| {report['requests']:,} ({report['bad']} bad) | {args.concurrency} | {args.runtime} | "
          f"{report['throughput_rps']:.1f} | {report['p50_ms']:.0f} | {report['p99_ms']:.0f} | "
          f"{report['p50_good_ms']:.0f} / {report['p99_good_ms']:.0f} | "
          f"{', '.join(f'{k}: {v}' for k, v in report['by_status'].items())} | {report['server_errors']} |")


if __name__ == "__main__":
    main()
