#!/usr/bin/env bash
# The GPU check, run from the repository root on a machine with a CUDA GPU:
#
#   scripts/gpu_check.sh [OUT]          (OUT defaults to outputs/cuda_check)
#
# 1. the CUDA tests (tests/*/test_*_cuda.py), verbosely;
# 2. torch-cuda latency tables of canonical Small at batch 1 and batch 32 (nas-lut build);
# 3. a short supernet training on CUDA with fp16 AMP (nas-supernet train);
# then OUT/summary.json: the GPU, Small's table milliseconds, the training's steps/s.
# Exits non-zero when any step fails. About 3-5 minutes on one modern GPU.
set -euo pipefail

out="${1:-outputs/cuda_check}"
mkdir -p "$out"

# Without a GPU every CUDA test would be skipped and the check would prove nothing.
python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: torch sees no CUDA GPU')"

echo "== CUDA tests"
python -m pytest -v -rs -p no:cacheprovider \
    tests/training/test_training_cuda.py tests/supernet/test_supernet_cuda.py tests/cost/test_cost_cuda.py \
    2>&1 | tee "$out/tests.log"

for batch in 1 32; do
    echo "== torch-cuda table of canonical Small, batch $batch"
    # --spec alone: only Small's keys (a whole space's table takes far longer).
    nas-lut build --spec small --runtime torch-cuda --batch "$batch" --no-calibrate --no-progress \
        --passes 3 --min-run-time 0.2 --max-run-time 1 --out "$out/table_b$batch" \
        2>&1 | tee "$out/table_b$batch.log"
    nas-lut predict --table "$out/table_b$batch" small --strict 2>&1 | tee -a "$out/table_b$batch.log"
done

echo "== supernet training on CUDA (fp16 AMP)"
nas-supernet train --space mobilenetv3_small --data synthetic --out "$out/supernet" --no-resume \
    --bn-batches 2 --set train.device=cuda --set train.precision=fp16 --set train.steps=100 \
    --set train.progress=false --set data.batch_size=64 \
    2>&1 | tee "$out/supernet.log"

python - "$out" <<'PY'
import json, sys
from pathlib import Path

import torch

from nas.arch.codecs import load_spec
from nas.cost.lut import LatencyTable

out = Path(sys.argv[1])
small = load_spec("small")
progress = torch.load(out / "supernet" / "supernet.pt", map_location="cpu", weights_only=False)["progress"]
summary = {
    "gpu": torch.cuda.get_device_name(0),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    **{f"small_ms_batch{b}": round(LatencyTable.load(out / f"table_b{b}").predict(small), 4) for b in (1, 32)},
    "supernet_steps": progress["step"],
    # Training time only (evaluation and start-up excluded), as the loop records it.
    "supernet_steps_per_second": round(progress["step"] / progress["train_seconds"], 2),
}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
PY
echo "gpu_check: all steps passed; outputs in $out"
