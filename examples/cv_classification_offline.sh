#!/usr/bin/env bash
# Offline variant: sklearn's bundled digits as an ImageFolder, a QAT-ready ResNet-18 from scratch.
# Runs anywhere in a few minutes on 2 cores; same pipeline, MLflow contents and registry entry.
set -euo pipefail
sparsify.run training-aware --use-case image_classification --optim-level 0.5 "$@"
