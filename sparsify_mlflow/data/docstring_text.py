"""A real, offline text-classification set: which library wrote this docstring?

The embedded sentiment set is generated and too easy to show what pruning costs (dense and sparse
both score 100%). This one is human-written text that ships with the project's own dependencies:
the summary paragraph of public functions' and classes' docstrings in eight installed libraries,
labelled by the library. Sources are read with `ast` (nothing is imported or executed), names that
give the answer away (the library's own name and aliases) are masked, duplicates across libraries
are dropped, and each library is sampled to the same size with a fixed seed. The texts depend on the
installed versions, which the lock pins; the versions are part of the cache key.
"""
from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import random
import re
from collections.abc import Iterator
from pathlib import Path

from sparsify_mlflow.data.embedded import cached_splits, json_lines
from sparsify_mlflow.data.fingerprint import fingerprint_text
from sparsify_mlflow.errors import DataError

SPEC = "embedded:docstrings"
# label -> (import name, distribution name, words masked in its texts). Eight libraries of the lock
# with at least a few hundred documented public names each, from overlapping fields (arrays,
# tensors, models, plots, tracking, databases), so topic words alone do not decide.
LIBRARIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "numpy": ("numpy", "numpy", ("numpy", "np")),
    "scipy": ("scipy", "scipy", ("scipy",)),
    "torch": ("torch", "torch", ("torch", "pytorch")),
    "sklearn": ("sklearn", "scikit-learn", ("sklearn", "scikit-learn", "scikit")),
    "matplotlib": ("matplotlib", "matplotlib", ("matplotlib", "mpl", "pyplot", "plt")),
    "transformers": ("transformers", "transformers", ("transformers", "hugging face", "huggingface")),
    "mlflow": ("mlflow", "mlflow", ("mlflow",)),
    "sqlalchemy": ("sqlalchemy", "SQLAlchemy", ("sqlalchemy",)),
}
ROWS_PER_LABEL = 330        # 8 x 330 = 2,640 rows, 80/20 -> ~2.1k training rows
MIN_CHARS, MAX_CHARS = 40, 400
VALIDATION_SHARE = 0.2
_SEED = 20261203
GENERATOR_VERSION = 1
_SKIP_PARTS = {"tests", "test", "testing", "_vendor", "vendored", "externals", "examples", "benchmarks"}


def docstring_dataset(rows_per_label: int | None = None) -> Path:
    """Folder with train.jsonl and validation.jsonl (80/20 per label, ROWS_PER_LABEL by default), built
    once into the cache."""
    rows_per_label = rows_per_label or ROWS_PER_LABEL
    versions = " ".join(f"{dist}=={_version(dist)}" for _, dist, _ in LIBRARIES.values())
    name = f"docstrings-v{GENERATOR_VERSION}-{rows_per_label}-{fingerprint_text(versions)}"
    return cached_splits(name, lambda: build_rows(rows_per_label), json_lines, ".jsonl",
                         validation_rows=len(LIBRARIES) * _validation_rows(rows_per_label))


def build_rows(rows_per_label: int) -> list[dict[str, str]]:
    """`rows_per_label` texts per library {"text", "label"}: the validation fifth of every library first,
    then the rest (the order `docstring_dataset` cuts them in), each part shuffled."""
    from tqdm.auto import tqdm

    texts = {label: set(_texts(label))  # reads every source file once: about a minute, then cached
             for label in tqdm(LIBRARIES, desc=f"{SPEC}: reading installed sources", unit="library", disable=None)}
    labels_of: dict[str, set[str]] = {}
    for label, found in texts.items():
        for text in found:
            labels_of.setdefault(text, set()).add(label)
    rng = random.Random(_SEED)
    validation: list[dict[str, str]] = []
    train: list[dict[str, str]] = []
    for label, found in texts.items():
        unique = sorted(t for t in found if len(labels_of[t]) == 1)  # a text two libraries share has no answer
        if len(unique) < rows_per_label:
            dist = LIBRARIES[label][1]
            raise DataError(f"{SPEC}: {label} ({dist} {_version(dist)}) has {len(unique)} usable docstrings, "
                            f"fewer than the {rows_per_label} per label this set needs")
        chosen = rng.sample(unique, rows_per_label)
        cut = _validation_rows(rows_per_label)
        validation += [{"text": t, "label": label} for t in chosen[:cut]]
        train += [{"text": t, "label": label} for t in chosen[cut:]]
    rng.shuffle(validation)
    rng.shuffle(train)
    return validation + train


def _validation_rows(rows_per_label: int) -> int:
    return round(rows_per_label * VALIDATION_SHARE)


def summary(doc: str) -> str | None:
    """The docstring's first paragraph on one line, if it is prose of a useful length."""
    first = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0]
    text = " ".join(first.split())
    if not MIN_CHARS <= len(text) <= MAX_CHARS or text.startswith((">>>", "..", ":", "#")) or "::" in text:
        return None
    return text


def mask(text: str, words: tuple[str, ...]) -> str:
    """Replace the library's own names (as words or dotted prefixes, any case) by "lib"."""
    pattern = r"\b(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + r")\b"
    return re.sub(pattern, "lib", text, flags=re.IGNORECASE)


def _texts(label: str) -> Iterator[str]:
    """The masked summary of every documented public function, class and method of the library."""
    module, _, words = LIBRARIES[label]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"{SPEC}: the library {module!r} is not installed (the set is read from its sources)")
    root = Path(next(iter(spec.submodule_search_locations)))
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(p in _SKIP_PARTS or p.startswith("test_") for p in parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for doc in _docstrings(tree):
            text = summary(doc)
            if text:
                yield mask(text, words)


def _docstrings(tree: ast.Module) -> Iterator[str]:
    """Docstrings of the module's public functions and classes, and of those classes' public methods."""
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    for node in tree.body:
        if isinstance(node, defs) and not node.name.startswith("_"):
            inner = [i for i in node.body if isinstance(i, defs[:2]) and not i.name.startswith("_")] \
                if isinstance(node, ast.ClassDef) else []
            for item in (node, *inner):
                doc = ast.get_docstring(item)
                if doc:
                    yield doc


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "missing"
