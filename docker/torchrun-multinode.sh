#!/usr/bin/env bash
# Multi-node training with torchrun: start this same script on every node (or through docker/slurm/train.sbatch).
#   NNODES=8 RDZV_HOST=<node 0's address> RDZV_ID=<job name> bash docker/torchrun-multinode.sh [in21k train flags]
# No node rank: the nodes meet at the c10d rendezvous hosted by the torchrun agent on RDZV_HOST, which hands out the
# ranks. Each node runs one process per GPU; every rank streams its own shards straight from object storage.
# A lost node: start this script again on it (or on its replacement) and the others restart their workers
# (--max-restarts); every rank resumes from the newest checkpoint in RUN_DIR (--resume auto). If the lost node is
# RDZV_HOST itself, every agent exits: start the script again on every node. See docs/scaling.md, "Multi-node training".
# Flags after the script's name are added to (and override) the `in21k train` flags below.
set -euo pipefail
NNODES=${NNODES:-1}
NPROC_PER_NODE=${NPROC_PER_NODE:-8}  # processes per node: one per GPU
RDZV_HOST=${RDZV_HOST:-127.0.0.1}    # node 0's address, the same on every node
RDZV_PORT=${RDZV_PORT:-29500}
RDZV_ID=${RDZV_ID:-in21k-train}      # the same on every node of a job, a new one for another job
MAX_RESTARTS=${MAX_RESTARTS:-3}      # worker-group restarts per agent (a node joining again does not count)
DATA=${DATA:-s3://my-bucket/imagenet21k-p/fall11}
RUN_DIR=${RUN_DIR:-/shared/runs/resnet50-21k}  # must be visible to every node (checkpoints, logs)

# torch >= 2.4 shares the agent's rendezvous store with the workers; then a node that joins a later rendezvous round
# (the replacement of a lost node) waits for keys the others wrote only in the first round, and the job fails
# (torch 2.14.1; see pytorch/pytorch#135712). Without sharing, every round publishes the workers' address afresh.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1

torchrun --nnodes "$NNODES" --nproc-per-node "$NPROC_PER_NODE" \
  --rdzv-backend c10d --rdzv-endpoint "$RDZV_HOST:$RDZV_PORT" --rdzv-id "$RDZV_ID" --max-restarts "$MAX_RESTARTS" \
  -m in21k train --data "$DATA" --out "$RUN_DIR" --config configs/train/default.yaml \
  --model resnet50 --batch-size 64 --loader.num-workers 8 --gpu-decode --channels-last --amp bf16 --resume auto "$@"
