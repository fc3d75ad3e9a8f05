#!/usr/bin/env bash
# GPU check: training img/s fed by synthetic GPU tensors vs. by our loader (GPU decode).
#
# One script for one <= 10-minute call on a lent H100/H200 with 16 cores, run from the repository root:
#   bash scripts/gpu_check.sh            (results: $OUT/gpu_check.jsonl and the summary on stdout)
# It needs only python3 with torch, torchvision, timm, numpy, pillow, pyyaml (the device image has them):
# the code runs from src/ through PYTHONPATH, and the shards are written on that machine by
# in21k.benchmarks.data.make_bench_data (224 px JPEGs at quality 95, the real 11,221-class tree), so
# neither WordNet, Ray nor the raw release is needed there.
#
# Targets (docs/benchmarks.md, "Training"): loader-fed >= 0.9 of synthetic for resnet50, >= 0.7 for mobilenetv3_large_100.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/in21k_gpu_check}
DATA=${DATA:-/tmp/in21k_bench_data}
WORKERS=${WORKERS:-12}
mkdir -p "$OUT"
RESULTS="$OUT/gpu_check.jsonl"
: > "$RESULTS"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "cpus: $(nproc)  $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
$PY -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"

# The GPU-only unit test of the decode path (CUDA decode_jpeg vs CPU); skipped quietly if pytest is missing.
timeout 120 $PY -m pytest -q -p no:cacheprovider -o addopts="" tests/training/test_feed.py 2>&1 | tail -3 || true

# 1. Shards, written here (16,384 train images in 64 shards: enough for 64 readers and several epochs).
if [ ! -f "$DATA/_info.json" ]; then
  time $PY -c "from in21k.benchmarks.data import make_bench_data as m; m('$DATA', images=16384, shards=64, workers=16)"
fi

# 2. One model at a time, each under its own time limit so a slow one cannot eat the others' time.
bench() {  # model batch steps limit_s [extra args]
  local model=$1 batch=$2 steps=$3 limit=$4; shift 4
  echo "== $model batch $batch, $steps steps"
  timeout "$limit" $PY -m in21k.benchmarks.train --data "$DATA" --model "$model" --batch-size "$batch" \
    --steps "$steps" --warmup 15 --amp bf16 --channels-last --gpu-decode --loader.num-workers "$WORKERS" --json "$@" \
    | tee -a "$RESULTS" || echo "   ($model did not finish within ${limit}s)"
}
bench resnet50 256 200 170 --cpu-decode-too
bench mobilenetv3_large_100 512 150 120
bench vit_base_patch16_224 256 100 120

# 3. Summary against the targets.
$PY - "$RESULTS" <<'PYEOF'
import json, sys
targets = {"resnet50": 0.9, "mobilenetv3_large_100": 0.7}
for line in open(sys.argv[1]):
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    t = targets.get(r["model"])
    verdict = "" if t is None else ("  target %.2f: %s" % (t, "MET" if r.get("loader_ratio", 0) >= t else "NOT MET"))
    print("%-24s %s | synthetic %8.1f img/s | loader (GPU decode) %8.1f img/s | ratio %.3f | input path alone %8.1f img/s%s"
          % (r["model"], r["device"], r["synthetic_img_s"], r.get("loader_img_s", 0), r.get("loader_ratio", 0),
             r.get("loader_feed_only_img_s", 0), verdict))
    if "loader_cpu_decode_img_s" in r:
        print("%-24s   CPU-decode loader path for reference: %.1f img/s (ratio %.3f)"
              % ("", r["loader_cpu_decode_img_s"], r["loader_cpu_decode_ratio"]))
PYEOF
