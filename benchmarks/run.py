#!/usr/bin/env python
"""The benchmark suite, one command: ``python benchmarks/run.py [--quick] [--out benchmarks/results]``.

Sections: 1 engine speedup by optim level (ResNet-50, BERT-base-shaped), 2 training cost per
recipe phase, 3 the default main job end to end, 4 export and compile overhead (measured during
section 1). Writes results.json and results.md to --out and prints the tables. See README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks import report, targets  # noqa: E402
from benchmarks import settings as _settings  # noqa: E402
from benchmarks.proc import ROOT  # noqa: E402

SCHEMA_VERSION = 1
SECTIONS = ("engine", "training", "e2e")
PACKAGES = ("torch", "torchvision", "sparseml", "deepsparse", "onnx", "onnxruntime", "transformers",
            "mlflow", "numpy", "sparsify-mlflow")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small, fast settings (< 5 min): checks that everything runs")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                   help="where results.json, results.md and logs/ go (default: benchmarks/results)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)} (export overhead comes with engine)")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="keep exported models and job folders here (default: a temp dir, removed at the end); "
                        "with --reuse-models, models built by an earlier run with the same code are reused")
    p.add_argument("--reuse-models", action="store_true",
                   help="reuse models in --work-dir (export times are then the earlier run's)")
    p.add_argument("--resume", action="store_true",
                   help="with --work-dir: continue an interrupted run: reuse its models, finished engine timing "
                        "groups and finished sections (results.json lists what was reused)")
    p.add_argument("--from-json", type=Path, default=None,
                   help="measure nothing: re-check the targets and re-render the tables of an earlier results.json")
    args = p.parse_args(argv)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    args.sections = [s for s in SECTIONS if s in wanted]
    if (args.reuse_models or args.resume) and args.work_dir is None:
        p.error("--reuse-models and --resume need --work-dir")
    return args


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        out["git_commit"] = commit.stdout.strip() or None
        out["git_dirty"] = str(bool(dirty.stdout.strip())).lower() if commit.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


def machine() -> dict[str, object]:
    """engines.cpu_info() plus what DeepSparse says about the ISA, and the box around it."""
    import psutil

    from sparsify_mlflow.engines import cpu_info, deepsparse_status

    info = dict(cpu_info())
    usable, status = deepsparse_status()
    info.update(deepsparse_usable=usable, deepsparse_status=status, platform=platform.platform(),
                memory_gb=round(psutil.virtual_memory().total / 2**30, 1), cpu_count_os=os.cpu_count())
    return info


class LoadMeter:
    """How much CPU other processes took while the suite ran (a shared box makes figures noisy)."""

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil
        self.t0, self.busy0, self.own0 = time.time(), self._busy(), self._own()
        self.load0 = os.getloadavg()

    def _busy(self) -> float:
        t = self.psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    @staticmethod
    def _own() -> float:
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def result(self) -> dict[str, object]:
        wall = time.time() - self.t0
        other = max(0.0, (self._busy() - self.busy0) - (self._own() - self.own0))
        return {"loadavg_start": list(self.load0), "loadavg_end": list(os.getloadavg()),
                "own_cpu_seconds": round(self._own() - self.own0, 1),
                "other_cpu_seconds": round(other, 1),
                "other_cpu_cores": round(other / wall, 3) if wall > 0 else None}


def render(path: Path, out: Path) -> int:
    results = json.loads(path.read_text())
    results["targets"] = targets.evaluate(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "results.md").write_text(report.markdown(results))
    report.print_rich(results)
    return 1 if results.get("errors") else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        return render(args.from_json, args.out.resolve())
    st = _settings.preset(args.quick)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="sparsify-benchmarks-"))).resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    from benchmarks import engine, sections

    started, t0, load = datetime.now(UTC), time.perf_counter(), LoadMeter()
    results: dict[str, object] = {
        "schema_version": SCHEMA_VERSION, "suite": "sparsify-mlflow benchmarks", "mode": st.mode,
        "command": " ".join(["python", "benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "started_at": started.isoformat(timespec="seconds"), "machine": machine(), "versions": versions(),
        "settings": st.as_dict(), "sections": {}, "section_seconds": {}, "errors": {},
    }
    say(f"benchmarks ({st.mode}): {', '.join(args.sections)}; work dir {work}")
    runners = {"engine": lambda: engine.engine_section(st, work, args.reuse_models, say, resume=args.resume),
               "training": lambda: sections.training_section(st, work, say),
               "e2e": lambda: sections.e2e_section(st, work, say)}

    settings_key = json.dumps(st.as_dict(), sort_keys=True, default=str)
    results["resumed_sections"] = {}

    def run_section(name: str) -> None:
        saved = work / "sections" / f"{name}.json"
        if args.resume and saved.is_file():
            done = json.loads(saved.read_text())
            if done["settings"] == settings_key:
                say(f"[{name}] reusing the results measured at {done['finished_at']} ({done['seconds']:.0f} s)")
                results["sections"][name], results["section_seconds"][name] = done["result"], done["seconds"]
                results["resumed_sections"][name] = done["finished_at"]
                return
        s0 = time.perf_counter()
        try:
            results["sections"][name] = runners[name]()
        except Exception as exc:  # noqa: BLE001 - one failed section must not lose the others
            say(f"[{name}] FAILED: {type(exc).__name__}: {exc}")
            results["errors"][name] = f"{type(exc).__name__}: {exc}"
        results["section_seconds"][name] = round(time.perf_counter() - s0, 1)
        say(f"[{name}] {results['section_seconds'][name]:.0f} s")
        if name in results["sections"]:
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps({"settings": settings_key, "seconds": results["section_seconds"][name],
                                         "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                                         "result": results["sections"][name]}, default=str))

    background = None
    if st.overlap_e2e and "e2e" in args.sections:  # --quick: a smoke test, so overlap the long job
        background = threading.Thread(target=run_section, args=("e2e",), daemon=True)
        background.start()
    for name in args.sections:
        if not (background and name == "e2e"):
            run_section(name)
    if background:
        background.join()

    results["wall_seconds"] = round(time.perf_counter() - t0, 1)
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["load"] = load.result()
    results["targets"] = targets.evaluate(results)
    logs = out / "logs"
    if logs.exists():
        shutil.rmtree(logs)
    shutil.copytree(work / "logs", logs, ignore=shutil.ignore_patterns("sparseml"))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "results.md").write_text(report.markdown(results))
    report.print_rich(results)
    say(f"wrote {out / 'results.json'} and {out / 'results.md'} in {results['wall_seconds'] / 60:.1f} min")
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
