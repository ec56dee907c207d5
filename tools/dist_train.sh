#!/usr/bin/env bash
# Distributed training (and pruning) on one or more machines with torchrun:
#   bash tools/dist_train.sh CONFIG NUM_PROCS [tools/train.py options]
# e.g. `bash tools/dist_train.sh configs/digits/resnet18_digits_gfp_acts.py 2 --resume`.
# Environment: NNODES, NODE_RANK, PORT, MASTER_ADDR as in OpenMMLab's scripts; PYTHON picks the
# interpreter (default: python). On CPU-only machines set `env_cfg.dist_cfg.backend=gloo`.
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: bash tools/dist_train.sh CONFIG NUM_PROCS [tools/train.py options]" >&2
  exit 2
fi
CONFIG=$1
NPROC=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
PYTHON=${PYTHON:-python}
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

PYTHONPATH="$DIR/..${PYTHONPATH:+:$PYTHONPATH}" \
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$NPROC" \
    --master_port="$PORT" \
    "$DIR/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
