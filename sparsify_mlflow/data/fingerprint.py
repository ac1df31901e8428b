"""Content fingerprints: the same data gives the same id, so baselines can be cached by it."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def fingerprint_files(files: Iterable[Path], root: Path) -> str:
    """Hash of relative paths, sizes and modification times (cheap: no file is read)."""
    digest = hashlib.sha256()
    for path in sorted(files):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def fingerprint_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
