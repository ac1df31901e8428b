#!/usr/bin/env bash
# Offline variant: the same synthetic YOLO dataset (polygon labels rasterised to masks, background =
# class 0), an FCN-style head on a QAT-ready ResNet-18 trunk trained from scratch: semantic segmentation.
# Set DATA to use your own YOLOv5-seg dataset (a folder with images/ and labels/, or its data.yaml).
set -euo pipefail
DATA="${DATA:-${TMPDIR:-/tmp}/sparsify-shapes-yolo}"
if [ ! -e "$DATA" ]; then
  python -m sparsify_mlflow.data.synthetic_yolo "$DATA" --images "${IMAGES:-160}" --size 64
fi
sparsify.run training-aware --use-case cv-segmentation --data "$DATA" --optim-level 0.5 \
  --no-pretrained --image-size 64 --epochs 6 --batch-size 8 "$@"
