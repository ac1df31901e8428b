"""Content fingerprints: the same data gives the same id, so baselines can be cached by it."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def fingerprint_files(files: Iterable[Path], root: Path) -> str:
    """Hash of relative paths, sizes and modification times (cheap: no file is read)."""
    digest = hashlib.sha256()
    for path in sorted(files):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def fingerprint_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint_records(header: Any, *parts: Iterable[Any]) -> str:
    """Hash of a JSON-able header (labels, options) and the records of each part, streamed."""
    digest = hashlib.sha256(json.dumps(header).encode())
    for part in parts:
        for record in part:
            digest.update(json.dumps(record).encode() + b"\n")
        digest.update(b"\1")
    return digest.hexdigest()[:16]
