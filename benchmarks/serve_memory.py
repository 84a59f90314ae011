"""Memory of `imgtune serve` against the number of large images in one request: for each N, a fresh
server on 127.0.0.1 gets one POST of N copies of a 9000 x 9000 black PNG (78 KB, 81 MP: under the
per-image pixel guard), and the script reads the server's peak resident memory (VmHWM) and what it
still holds afterwards (VmRSS).

    python benchmarks/serve_memory.py RUN [--copies 1 2 4 8]

Linux only (reads /proc). Prints a table and writes benchmarks/out/serve-memory.json."""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_test import free_port, multipart  # noqa: E402


def _status(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def measure(run: str, copies: int, png: bytes) -> dict:
    import subprocess

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "imgtune", "serve", run, "--port", str(port),
                             "--runtime", "torch"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/health", timeout=5)
                break
            except OSError:
                time.sleep(0.5)
        before = _status(proc.pid, "VmHWM")
        body, kind = multipart([(f"{i}.png", png) for i in range(copies)])
        start = time.monotonic()
        try:
            with urllib.request.urlopen(urllib.request.Request(url + "/predict", body, {"Content-Type": kind}),
                                        timeout=600) as r:
                status = r.status
        except urllib.error.HTTPError as e:  # 413: over the request's pixel budget
            status = e.code
        seconds = time.monotonic() - start
        return {"copies": copies, "upload_kb": round(len(body) / 1024), "status": status,
                "seconds": round(seconds, 2), "peak_mib_before": round(before),
                "peak_mib": round(_status(proc.pid, "VmHWM")), "held_after_mib": round(_status(proc.pid, "VmRSS"))}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()
    buf = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buf, "PNG")
    rows = [measure(args.run, n, buf.getvalue()) for n in args.copies]
    print("copies  upload KB  status  seconds  peak MiB (idle server)  peak MiB  held after MiB")
    for r in rows:
        print(f"{r['copies']:>6}  {r['upload_kb']:>9}  {r['status']:>6}  {r['seconds']:>7}  "
              f"{r['peak_mib_before']:>22}  {r['peak_mib']:>8}  {r['held_after_mib']:>14}")
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / "serve-memory.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
