#!/usr/bin/env bash
# nlp-sentiment_analysis: the same code as text classification under Sparsify's second name.
# Any JSONL/JSON/CSV with a text and a label column works; here a local file written by the script.
set -euo pipefail
data="$(mktemp -d)/reviews.csv"
python - "$data" <<'PY'
import csv, sys
from sparsify_mlflow.data.embedded_text import generate
rows = generate(1200)
with open(sys.argv[1], "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=["sentence", "sentiment"])
    writer.writeheader()
    writer.writerows({"sentence": r["text"], "sentiment": r["label"]} for r in rows)
PY
sparsify.run training-aware --use-case sentiment --data "$data" --label-column sentiment \
  --optim-level 0.5 "$@"
