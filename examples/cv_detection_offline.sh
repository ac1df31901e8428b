#!/usr/bin/env bash
# Offline variant: a synthetic YOLO dataset (squares, discs, triangles on varied backgrounds, polygon
# labels read as boxes), a CenterNet-style head on a QAT-ready ResNet-18 trunk trained from scratch.
# No detection dataset or pretrained detector is reachable offline, so the data is drawn here.
# Set DATA to use your own YOLOv5 dataset (a folder with images/ and labels/, or its data.yaml).
set -euo pipefail
DATA="${DATA:-${TMPDIR:-/tmp}/sparsify-shapes-yolo}"
if [ ! -e "$DATA" ]; then
  python -m sparsify_mlflow.data.synthetic_yolo "$DATA" --images "${IMAGES:-160}" --size 64
fi
sparsify.run training-aware --use-case cv-detection --data "$DATA" --optim-level 0.5 \
  --no-pretrained --image-size 64 --epochs 6 --batch-size 8 "$@"
