"""Deterministic 80/20 train/validation splits for data that comes without a validation set.

One place for the rule every reader follows: the split depends only on the seed, a class (or a
group) with two or more members is on both sides, a single one stays in training.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from typing import TypeVar

VAL_FRACTION = 0.2
T = TypeVar("T")


def _n_val(n: int) -> int:
    return max(1, round(n * VAL_FRACTION)) if n > 1 else 0


def stratified_split(items: list[T], label: Callable[[T], int], seed: int) -> tuple[list[T], list[T]]:
    """Per-class split, so every class with 2+ items is in both splits (train grouped by class:
    the training loaders shuffle)."""
    rng = random.Random(seed)
    by_label: dict[int, list[T]] = {}
    for item in items:
        by_label.setdefault(label(item), []).append(item)
    train: list[T] = []
    val: list[T] = []
    for key in sorted(by_label):
        members = by_label[key][:]
        rng.shuffle(members)
        n_val = _n_val(len(members))
        val += members[:n_val]
        train += members[n_val:]
    return train, val


def split_by_seed(items: list[T], seed: int, group: Callable[[T], Hashable] | None = None) -> tuple[list[T], list[T]]:
    """Split items of one ``group`` to the same side.

    For data without a class label to stratify by (tagged sentences, questions: grouped by their
    context so a validation question never reads a paragraph seen in training).
    """
    groups: dict[Hashable, list[T]] = {}
    for i, item in enumerate(items):
        groups.setdefault(i if group is None else group(item), []).append(item)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    n_val = _n_val(len(keys))
    val = [item for key in keys[:n_val] for item in groups[key]]
    train = [item for key in keys[n_val:] for item in groups[key]]
    return train, val
