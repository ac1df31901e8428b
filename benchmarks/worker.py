"""Child-process entry point: ``python -m benchmarks.worker TASK ARGS.json RESULT.json``.

Tasks: ``build`` (one model at one optim level: recipe, short training, export), ``engines``
(compile and time every variant of one model at one batch size), ``train`` (one training-cost run).
The result file is rewritten as work progresses, so a crash still leaves what was done.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
warnings.filterwarnings("ignore")


def _saver(path: Path):
    def save(data: dict[str, Any]) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, default=str))
        tmp.replace(path)

    return save


def main(argv: list[str]) -> int:
    task, args_path, out_path = argv[0], Path(argv[1]), Path(argv[2])
    args = json.loads(args_path.read_text())
    save = _saver(out_path)
    logging.basicConfig(level=logging.WARNING)
    # names the temp file DeepSparse's native report goes to while compiling (read after an abort)
    logging.getLogger("sparsify_mlflow.engines").setLevel(logging.DEBUG)
    if task == "build":
        from benchmarks.models import build_level
        from benchmarks.proc import RssSampler, maxrss_mb
        from benchmarks.settings import ModelSpec

        result = {"builds": []}
        for job in args["jobs"]:
            with RssSampler(interval=0.05) as sampler:
                built = build_level(ModelSpec(**job["spec"]), float(job["level"]), Path(job["out_dir"]),
                                    Path(job["log_dir"]), sampler, target=job["target"])
            result["builds"].append(built | {"maxrss_mb": maxrss_mb()})
            save(result)
    elif task == "engines":
        from benchmarks.engine_timing import run_groups

        result = run_groups(args, save)
    elif task == "train":
        from benchmarks.training_cost import run_trainings

        result = run_trainings(args, save)
    else:
        print(f"unknown task {task!r}", file=sys.stderr)
        return 2
    save(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
