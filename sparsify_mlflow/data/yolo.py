"""YOLOv5-layout datasets (images/ + labels/, one .txt per image), checked line by line before training.

Layouts accepted (the ones YOLOv5 users have):
- `data.yaml` (passed as --data, or found in the --data folder): `train`/`val` name image folders
  (relative to `path`, else to the yaml's folder), `names` is a list or an {id: name} mapping;
- ROOT/images/{train,val}/ with ROOT/labels/{train,val}/;
- ROOT/images/ with ROOT/labels/, split deterministically by seed (20% validation).
A label file is the image's path with its last `images` folder replaced by `labels` and the suffix
by `.txt` (YOLOv5's rule). Without `names`, classes are named class_0..class_N from the largest id.

Label lines: detection `class x_center y_center width height`; segmentation
`class x1 y1 x2 y2 x3 y3 ...` (a polygon of 3+ points). Detection also takes polygon lines (their
bounding box, as YOLOv5 does). All coordinates are normalised to [0, 1].

Policy for bad input: a malformed label line (field count, non-number, coordinate outside [0, 1],
class id beyond `names`, polygon under 3 points) stops the run with `file:line: ...`: a wrong
label silently trains a wrong model. Unreadable images are skipped and counted (YOLOv5 drops
"corrupt" images too), and so are label files without an image (YOLOv5 never looks at them);
both are listed in the run's `data/skipped.txt`. An image without a label file has no objects.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from sparsify_mlflow.data.imagefolder import IMAGE_EXTENSIONS
from sparsify_mlflow.data.splits import split_by_seed
from sparsify_mlflow.errors import DataError

TASKS = ("detection", "segmentation")
BOX_FIELDS = ("class", "x_center", "y_center", "width", "height")


@dataclass(frozen=True)
class YoloObject:
    cls: int
    box: tuple[float, float, float, float]                  # x1, y1, x2, y2, normalised
    polygon: tuple[tuple[float, float], ...] | None = None   # normalised points (segmentation lines)


@dataclass(frozen=True)
class YoloSample:
    image: Path
    objects: tuple[YoloObject, ...]


@dataclass
class YoloSplits:
    names: list[str]
    train: list[YoloSample]
    val: list[YoloSample]
    layout: str
    files: list[Path]                                   # images and label files, for the fingerprint
    skipped: list[str] = field(default_factory=list)    # "path: reason" (unreadable images, orphan labels)
    orphan_labels: int = 0
    unreadable_images: int = 0


def scan_yolo(data: Path, task: str, seed: int) -> YoloSplits:
    """Find, parse and check a YOLO dataset; raise DataError naming file:line for bad labels."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if not data.exists():
        raise DataError(f"data path {data} does not exist")
    yaml_file = data if data.is_file() else next((data / n for n in ("data.yaml", "dataset.yaml")
                                                  if (data / n).is_file()), None)
    names: list[str] | None = None
    if yaml_file is not None:
        train_dirs, val_dirs, names = _read_yaml(yaml_file)
        layout = f"{yaml_file.name} (train/val image folders)"
    elif (data / "images" / "train").is_dir():
        val = next((data / "images" / n for n in ("val", "valid", "validation", "test")
                    if (data / "images" / n).is_dir()), None)
        if val is None:
            raise DataError(f"{data / 'images'} has train/ but no val/ (or valid/, validation/, test/) folder")
        train_dirs, val_dirs, layout = [data / "images" / "train"], [val], "images/{train,val} + labels/{train,val}"
    elif (data / "images").is_dir():
        train_dirs, val_dirs, layout = [data / "images"], [], "images/ + labels/ split by seed"
    else:
        raise DataError(f"{data} is not a YOLO dataset: expected {data}/images/ and {data}/labels/ "
                        "(optionally with train/ and val/ below each) or a data.yaml")
    splits = [_scan_images(d) for d in train_dirs], [_scan_images(d) for d in val_dirs]
    num_classes = len(names) if names is not None else None
    parsed: list[list[YoloSample]] = []
    skipped: list[str] = []
    files: list[Path] = []
    orphans = unreadable = 0
    for part in splits:
        samples: list[YoloSample] = []
        for images_dir, images in part:
            labels_dir = label_dir_for(images_dir)
            stems = {p.relative_to(images_dir).with_suffix("") for p in images}
            for label in sorted(labels_dir.rglob("*.txt")) if labels_dir.is_dir() else []:
                if label.relative_to(labels_dir).with_suffix("") not in stems and label.name != "classes.txt":
                    skipped.append(f"{label}: label file without an image")
                    orphans += 1
            for image in tqdm(images, desc=f"Checking {images_dir.name}", unit="img", leave=False, disable=None):
                label = labels_dir / image.relative_to(images_dir).with_suffix(".txt")
                objects = parse_label_file(label, task, num_classes) if label.is_file() else ()
                files += [image] + ([label] if label.is_file() else [])
                problem = _unreadable(image)
                if problem:
                    skipped.append(f"{image}: {problem}")
                    unreadable += 1
                    continue
                samples.append(YoloSample(image, objects))
        parsed.append(samples)
    train, val = parsed
    if not val_dirs:
        train, val = split_by_seed(train, seed)
    if names is None:
        top = max((o.cls for s in train + val for o in s.objects), default=-1)
        names = [f"class_{i}" for i in range(top + 1)]
    for split, samples in (("training", train), ("validation", val)):
        if not samples:
            raise DataError(f"{data}: the {split} split has no readable image")
    if not any(s.objects for s in train):
        raise DataError(f"{data}: no labelled object in the training split (labels in {label_dir_for(train_dirs[0])}?)")
    return YoloSplits(names, train, val, layout, files, skipped, orphans, unreadable)


def label_dir_for(images_dir: Path) -> Path:
    """YOLOv5's rule: the last `images` component of the path becomes `labels`."""
    parts = list(images_dir.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    return images_dir.parent / "labels" / images_dir.name


def parse_label_file(path: Path, task: str, num_classes: int | None) -> tuple[YoloObject, ...]:
    """Parse one label file; any bad line raises DataError('file:line: what, which field')."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read label file ({exc})") from None
    objects = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            objects.append(parse_label_line(line, task, num_classes, f"{path}:{number}"))
    return tuple(objects)


def parse_label_line(line: str, task: str, num_classes: int | None, where: str) -> YoloObject:
    parts = line.split()
    n = len(parts)
    if task == "detection" and n != 5 and (n < 7 or n % 2 == 0):
        raise DataError(f"{where}: {n} fields; a detection label is 'class x_center y_center width height' "
                        "(5 fields) or a polygon 'class x1 y1 x2 y2 x3 y3 ...'")
    if task == "segmentation":
        if n % 2 == 0 or n < 3:
            raise DataError(f"{where}: {n} fields; a segmentation label is 'class x1 y1 x2 y2 x3 y3 ...' "
                            "(class + an even number of coordinates)")
        if n < 7:
            raise DataError(f"{where}: polygon with {(n - 1) // 2} point(s); a polygon needs at least 3")
    values = []
    for i, text in enumerate(parts):
        try:
            values.append(float(text))
        except ValueError:
            raise DataError(f"{where}: field {i + 1} ({_field_name(i, n)}) {text!r} is not a number") from None
    cls = values[0]
    if not cls.is_integer() or cls < 0:
        raise DataError(f"{where}: field 1 (class) {parts[0]!r} is not a non-negative integer class id")
    if num_classes is not None and cls >= num_classes:
        raise DataError(f"{where}: class id {int(cls)} is beyond the {num_classes} class names "
                        f"(valid ids 0..{num_classes - 1})")
    for i, value in enumerate(values[1:], start=1):
        if not 0.0 <= value <= 1.0:
            raise DataError(f"{where}: field {i + 1} ({_field_name(i, n)}) = {parts[i]} is outside [0, 1] "
                            "(coordinates are normalised by the image width/height)")
    if n == 5:
        x, y, w, h = values[1:]
        if w <= 0 or h <= 0:
            raise DataError(f"{where}: box width and height must be positive, got {parts[3]} x {parts[4]}")
        box = (max(0.0, x - w / 2), max(0.0, y - h / 2), min(1.0, x + w / 2), min(1.0, y + h / 2))
        return YoloObject(int(cls), box)
    points = tuple(zip(values[1::2], values[2::2]))
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if max(xs) - min(xs) <= 0 or max(ys) - min(ys) <= 0:
        raise DataError(f"{where}: polygon has no area (all points on one line)")
    return YoloObject(int(cls), (min(xs), min(ys), max(xs), max(ys)), points)


def _field_name(index: int, n: int) -> str:
    if n == 5:
        return BOX_FIELDS[index]
    if index == 0:
        return "class"
    return f"{'x' if index % 2 else 'y'}{(index + 1) // 2}"


def _read_yaml(path: Path) -> tuple[list[Path], list[Path], list[str] | None]:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: not readable YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict) or "train" not in doc or "val" not in doc:
        raise DataError(f"{path}: needs 'train' and 'val' keys naming image folders (and 'names')")
    base = Path(doc["path"]) if doc.get("path") else path.parent
    base = base if base.is_absolute() else path.parent / base

    def folders(key: str) -> list[Path]:
        value = doc[key]
        entries = value if isinstance(value, list) else [value]
        out = [base / str(e) for e in entries]
        for folder in out:
            if not folder.is_dir():
                raise DataError(f"{path}: {key} folder {folder} does not exist (YOLO .txt lists are not supported)")
        return out

    names = doc.get("names")
    if isinstance(names, dict):
        ids = sorted(int(k) for k in names)
        if ids != list(range(len(ids))):
            raise DataError(f"{path}: names ids must be 0..N-1, got {ids}")
        names = [str(names[k]) for k in sorted(names, key=int)]
    elif names is not None and not isinstance(names, list):
        raise DataError(f"{path}: names must be a list or an {{id: name}} mapping")
    if names is not None and doc.get("nc") is not None and int(doc["nc"]) != len(names):
        raise DataError(f"{path}: nc is {doc['nc']} but {len(names)} names are given")
    return folders("train"), folders("val"), [str(n) for n in names] if names is not None else None


def _scan_images(folder: Path) -> tuple[Path, list[Path]]:
    images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise DataError(f"image folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)})")
    return folder, images


def load_rgb(path: Path) -> Image.Image:
    """Pillow first, then OpenCV if installed (formats only it decodes); RGB either way."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as pillow_error:
        try:
            import cv2
        except ImportError:
            raise pillow_error from None
        array = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if array is None:
            raise OSError(f"neither Pillow nor OpenCV can decode {path}") from None
        return Image.fromarray(array[:, :, ::-1])


def _unreadable(path: Path) -> str | None:
    """Why an image cannot be decoded (fully: truncated files fail only on decode), or None."""
    try:
        load_rgb(path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"unreadable image ({exc})"
    return None
