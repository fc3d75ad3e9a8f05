#!/usr/bin/env bash
# Multi-node training with torchrun: run this same script on every node (or through docker/slurm/train.sbatch).
#   NNODES=8 NODE_RANK=<0..7> MASTER_ADDR=<node 0's address> bash docker/torchrun-multinode.sh
# Each node runs one process per GPU; every rank streams its own shards straight from object storage.
set -euo pipefail
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
DATA=${DATA:-s3://my-bucket/imagenet21k-p/fall11}
RUN_DIR=${RUN_DIR:-/shared/runs/resnet50-21k}  # must be visible to every node (checkpoints, logs)

torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$GPUS_PER_NODE" \
  --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
  -m in21k train --data "$DATA" --out "$RUN_DIR" --config configs/train/default.yaml \
  --model resnet50 --batch-size 64 --loader.num-workers 8 --gpu-decode --channels-last --amp bf16 --resume auto
