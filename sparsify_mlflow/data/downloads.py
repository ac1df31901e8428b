"""Named public datasets that are downloaded on first use (users have the internet; tests do not)."""
from __future__ import annotations

import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from sparsify_mlflow.data.embedded import cache_root
from sparsify_mlflow.errors import DataError

# name -> (archive URL, folder inside the archive holding train/ and val/)
IMAGE_DATASETS = {
    "imagenette": ("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz", "imagenette2-320"),
    "imagewoof": ("https://s3.amazonaws.com/fast-ai-imageclas/imagewoof2-320.tgz", "imagewoof2-320"),
}


def named_image_dataset(name: str) -> Path | None:
    """The local ImageFolder root of a known dataset name (downloaded once), or None if unknown."""
    key = name.strip().lower()
    if key not in IMAGE_DATASETS:
        return None
    url, inner = IMAGE_DATASETS[key]
    root = cache_root() / "datasets" / key
    if (root / ".complete").exists():
        return root / inner
    tmp = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=_mkdir(root.parent)))
    try:
        archive = tmp / "archive.tgz"
        _download(url, archive, key)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp / "extracted", filter="data")  # no absolute paths or links outside
        shutil.rmtree(root, ignore_errors=True)
        (tmp / "extracted").rename(root)
        (root / ".complete").touch()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / inner


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _download(url: str, dest: Path, name: str) -> None:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with dest.open("wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=f"Downloading {name}",
                                               disable=None) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except OSError as exc:  # URLError, timeouts and refused connections are all OSErrors
        raise DataError(
            f"could not download dataset {name!r} from {url} ({exc}); without internet, pass a local "
            "ImageFolder folder with --data"
        ) from None
