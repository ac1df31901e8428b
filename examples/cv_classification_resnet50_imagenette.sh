#!/usr/bin/env bash
# The guide's computer-vision example: ResNet-50 (ImageNet weights) on Imagenette, 70% sparse + INT8.
# Needs the internet: downloads Imagenette (~330 MB) and the weights (~100 MB) on first use, and
# stops with one clear line when it cannot. Hours on a CPU; minutes on a GPU (--device auto uses it).
set -euo pipefail
sparsify.run training-aware --use-case image_classification --model resnet50 --data imagenette \
  --optim-level 0.5 "$@"
