#!/usr/bin/env bash
# GPU check: the model-zoo speed table (maximal batch, training and inference img/s at 90% of it)
# for the four models of the original's table, beside its V100 figures, in one <= 10-minute device call.
#
# From the repository root on a lent H100/H200:
#   bash scripts/gpu_speed_table.sh        (rows on stdout; JSON lines in $OUT/speed_table.jsonl)
# It needs only python3 with torch, torchvision, timm, numpy, pyyaml (the device image has them): the code runs
# from src/ through PYTHONPATH; the 11,221-class fall11 tree is built in (no WordNet, no data).
# Settings: 224 px, fp16 autocast (the original's AMP), channels_last, eager, synthetic tensors on the GPU, the
# semantic softmax loss and Adam; the search doubles from 32 until CUDA runs out of memory, then bisects.
# The "Maximal batch size" column depends on the card's memory (V100: 16 GB in the original's table).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/in21k_speed_table}
STEPS=${STEPS:-50}
mkdir -p "$OUT"
RESULTS="$OUT/speed_table.jsonl"
: > "$RESULTS"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "cpus: $(nproc)  $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
$PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"

row() {  # model limit_s
  local model=$1 limit=$2
  if ! $PY -c "import timm, sys; sys.exit(0 if timm.is_model('$model') else 1)"; then
    echo "== $model: not in this timm, skipped"; return
  fi
  echo "== $model"
  timeout "$limit" $PY -m in21k.benchmarks.train --model "$model" --search-start 32 --steps "$STEPS" --warmup 10 \
    --amp fp16 --channels-last --tree fall11 --json | tee -a "$RESULTS" || echo "   ($model did not finish within ${limit}s)"
}
row mobilenetv3_large_100 130
row resnet50 130
row tresnet_m 130
row vit_base_patch16_224 150

$PY - "$RESULTS" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print()
print("| Backbone | card | Maximal batch size | Maximal training speed (img/sec) | Maximal inference speed (img/sec) "
      "| V100 (original): batch / train / infer | ratio train / infer vs V100 |")
print("| :---: | :---: | :---: | :---: | :---: | :---: | :---: |")
for r in rows:
    ref = r.get("reference_v100") or {}
    print("| %s | %s | %s | %.0f | %.0f | %s / %s / %s | %s / %s |" % (
        r["model"], r["device"], r["max_batch"], r["train_img_s"], r["infer_img_s"], ref.get("max_batch", "-"),
        ref.get("train_img_s", "-"), ref.get("infer_img_s", "-"), r.get("ratio_train"), r.get("ratio_infer")))
PYEOF
