#!/usr/bin/env bash
# The guide's NLP example: BERT-base (bert-base-uncased) on GLUE SST-2, 70% sparse + INT8,
# distilled from its own dense baseline.
# Needs the internet: downloads SST-2 (~7 MB) and the weights (~440 MB) from the Hugging Face hub
# on first use, and stops with one clear line when it cannot. Hours on a CPU; use a GPU.
set -euo pipefail
sparsify.run training-aware --use-case text_classification --model bert-base --data sst2 \
  --optim-level 0.5 "$@"
