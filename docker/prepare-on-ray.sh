#!/usr/bin/env bash
# Run on the Ray head node (`ray submit docker/ray-cluster.yaml docker/prepare-on-ray.sh`): prepares
# fall11 from object storage to object storage. Credentials come from the node's IAM role or AWS_* vars.
set -euo pipefail
RAW=${RAW:-s3://my-bucket/imagenet21k/fall11_whole.tar}
OUT=${OUT:-s3://my-bucket/imagenet21k-p/fall11}
in21k prepare --raw "$RAW" --out "$OUT" --config /opt/in21k/configs/prepare/fall11.yaml --ray-address auto
