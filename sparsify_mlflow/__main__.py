"""`python -m sparsify_mlflow ...` is `sparsify.run ...` (what the MLproject entry points call)."""
import sys

from sparsify_mlflow.cli import main

sys.exit(main())
