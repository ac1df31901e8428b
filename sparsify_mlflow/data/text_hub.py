"""Hugging Face hub datasets by name (`sst2`, `imdb`, `glue/mrpc`), checked like local files.

Offline (HF_HUB_OFFLINE) or with the hub unreachable, loading fails with one line that says to
pass local files; a dataset already in the `datasets` cache loads offline too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsify_mlflow.data.text_files import SUFFIXES, Row, TextSplits, build_splits, pick_columns
from sparsify_mlflow.errors import DataError

# Friendly names -> (dataset, config); the split used for validation is found in the dataset.
HUB_ALIASES: dict[str, tuple[str, str | None]] = {
    "sst2": ("glue", "sst2"), "sst-2": ("glue", "sst2"), "glue/sst2": ("glue", "sst2"),
    "cola": ("glue", "cola"), "mrpc": ("glue", "mrpc"), "qqp": ("glue", "qqp"), "qnli": ("glue", "qnli"),
    "rte": ("glue", "rte"), "mnli": ("glue", "mnli"), "wnli": ("glue", "wnli"),
    "imdb": ("imdb", None), "ag_news": ("ag_news", None), "emotion": ("emotion", None),
    "rotten_tomatoes": ("rotten_tomatoes", None), "yelp_polarity": ("yelp_polarity", None),
}
HUB_EVAL_SPLITS = ("validation", "validation_matched", "test")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_like_hub_name(spec: str) -> bool:
    """A dataset name such as `sst2`, `imdb` or `glue/sst2` (not an existing path, no file suffix)."""
    return (not Path(spec).expanduser().exists() and Path(spec).suffix.lower() not in SUFFIXES
            and bool(_HUB_NAME.match(spec)) and not spec.startswith("."))


def resolve_hub_name(spec: str) -> tuple[str, str | None]:
    """`sst2` -> ("glue", "sst2"); `owner/name` or `name` as is; `glue/sst2` -> glue with config sst2."""
    if spec.lower() in HUB_ALIASES:
        return HUB_ALIASES[spec.lower()]
    if spec.startswith("glue/"):
        return "glue", spec.split("/", 1)[1]
    return spec, None


@dataclass
class HubRows:
    """A hub dataset's train and evaluation rows, as local files would give them, plus its features."""

    label: str                      # "glue/sst2"
    train: list[Row]
    val: list[Row] | None           # None: no evaluation split, split the training rows by seed
    eval_split: str | None
    features: Any                   # datasets.Features of the train split (ClassLabel names etc.)


def load_hub_rows(spec: str, hint: str = "--data train.jsonl, or a folder with train.jsonl and "
                  "validation.jsonl (also .json/.csv)") -> HubRows:
    """Load a Hugging Face dataset by name; offline or unreachable -> one DataError line."""
    name, config = resolve_hub_name(spec)
    label = f"{name}/{config}" if config else name
    try:
        import datasets

        datasets.logging.set_verbosity_error()
        dataset = datasets.load_dataset(name, config)
    except Exception as exc:  # noqa: BLE001 - offline, unreachable hub, unknown name: all "cannot load"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DataError(
            f"cannot load the Hugging Face dataset {label!r} ({type(exc).__name__}: {reason}); "
            f"without hub access pass local files instead: {hint}"
        ) from None
    if "train" not in dataset:
        raise DataError(f"Hugging Face dataset {label!r} has no train split (splits: {', '.join(dataset)})")
    eval_split = next((s for s in HUB_EVAL_SPLITS if s in dataset), None)
    return HubRows(label, _hub_rows(dataset["train"], f"hf:{label}/train"),
                   _hub_rows(dataset[eval_split], f"hf:{label}/{eval_split}") if eval_split else None,
                   eval_split, dataset["train"].features)


def load_hub_splits(spec: str, *, seed: int, text_column: str | None = None, pair_column: str | None = None,
                    label_column: str | None = None) -> TextSplits:
    """A hub text-classification dataset as TextSplits (ClassLabel names fix the label ids)."""
    hub = load_hub_rows(spec)
    columns = pick_columns(hub.train[0], text_column, pair_column, label_column)
    feature = hub.features.get(columns[2])
    names = list(feature.names) if hasattr(feature, "names") else None
    return build_splits(hub.train, hub.val, columns, seed=seed, files=[],
                        layout=f"hub dataset {hub.label}: train + {hub.eval_split or 'split by seed'}",
                        label_names=names)


def _hub_rows(split: Any, where: str) -> list[Row]:
    path = Path(where)
    return [Row(path, i + 1, dict(item)) for i, item in enumerate(split)]
