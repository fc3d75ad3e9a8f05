#!/usr/bin/env bash
# Run on the Ray head node (`ray submit docker/ray-cluster.yaml docker/prepare-on-ray.sh`): prepares
# fall11 from object storage to object storage. Credentials come from the node's IAM role or AWS_* vars of the
# node, never from this script's command line. The cluster runs with token authentication: the driver joins it with
# the token file named by RAY_AUTH_TOKEN_PATH, which docker/ray-cluster.yaml sets on every node (docs/security.md).
set -euo pipefail
: "${RAY_AUTH_TOKEN_PATH:?the cluster's token file; set on every node by docker/ray-cluster.yaml (docs/security.md)}"
export RAY_AUTH_MODE=token
RAW=${RAW:-s3://my-bucket/imagenet21k/fall11_whole.tar}
OUT=${OUT:-s3://my-bucket/imagenet21k-p/fall11}
in21k prepare --raw "$RAW" --out "$OUT" --config /opt/in21k/configs/prepare/fall11.yaml --ray-address auto
