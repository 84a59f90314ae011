#!/usr/bin/env bash
# One short check on a machine with a CUDA GPU (under 8 minutes): train on the embedded digits at 224 px
# with one GPU, then report images/s for feature extraction and for fine-tuning, and the test accuracy.
# Installs nothing when imgtune is already importable; everything it writes goes to $OUT
# (default benchmarks/out/gpu): train.log, the run folder, gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out/gpu}
mkdir -p "$OUT"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU is visible')"
python -c "import imgtune" 2>/dev/null || python -m pip install --quiet -e .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt" || true
rm -rf "$OUT/run" "$OUT/cache"
timeout 420 python -m imgtune train builtin:digits --out "$OUT/run" --image-size 224 --epochs 3 \
    --batch-size 128 --device cuda --cache-dir "$OUT/cache" 2>&1 | tee "$OUT/train.log"
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
config = json.loads((out / "run" / "config.json").read_text())
metrics = json.loads((out / "run" / "metrics.json").read_text())
history = [json.loads(x) for x in (out / "run" / "history.jsonl").read_text().splitlines()]
ft = [h for h in history if h["stage"] == "fine-tune" and h["epoch"] > 0]
n = sum(config["counts"].values())
result = {"gpu": (out / "gpu.txt").read_text().strip() if (out / "gpu.txt").exists() else None,
          "images": n, "image_size": config["data_config"]["image_size"],
          "extraction_images_per_s": n / config["seconds"]["features"],
          "finetune_images_per_s": [round(h["images"] / h["seconds"], 1) for h in ft],
          "test_accuracy": metrics["accuracy"], "seconds": config["seconds"]}
(out / "gpu_check.json").write_text(json.dumps(result, indent=2))
print(json.dumps(result, indent=2))
PY
