"""A small synthetic YOLO dataset (shapes on varied backgrounds) for the offline examples and tests.

No detection or segmentation dataset ships in a package, and no hub is reachable here, so the
examples draw one: 1-3 shapes (square, disc, triangle: the three classes) per image, in random
colours and sizes, on gradient, noise or stripe backgrounds. Each label line is the shape's
polygon (which detection reads as its bounding box) or, with `boxes=True`, a
`class x_center y_center width height` line.

    python -m sparsify_mlflow.data.synthetic_yolo OUT [--images 200] [--size 96] [--boxes]
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

NAMES = ("square", "disc", "triangle")


def make_yolo_dataset(root: Path, images: int = 40, size: int = 64, seed: int = 0, boxes: bool = False,
                      val_fraction: float = 0.25) -> Path:
    """Write ROOT/images/{train,val}, ROOT/labels/{train,val} and ROOT/data.yaml; return ROOT."""
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(images * val_fraction)))
    for i in range(images):
        split = "val" if i < n_val else "train"
        image, lines = _draw(rng, size, boxes)
        ext = ".jpg" if i % 3 == 0 else ".png"  # two formats, as real datasets mix them
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        image.save(root / "images" / split / f"img_{i:04d}{ext}", quality=95)
        if lines or i % 7:  # a few images without a label file at all: no objects
            (root / "labels" / split / f"img_{i:04d}.txt").write_text("".join(f"{line}\n" for line in lines))
    names = "\n".join(f"  {k}: {name}" for k, name in enumerate(NAMES))
    (root / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\nnc: {len(NAMES)}\nnames:\n{names}\n")
    return root


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.integers(3)
    base = rng.integers(0, 256, size=3)
    if kind == 0:  # gradient
        t = np.linspace(0, 1, size)[None, :, None]
        other = rng.integers(0, 256, size=3)
        img = base * (1 - t) + other * t
        img = np.repeat(img, size, axis=0)
    elif kind == 1:  # noise
        img = base + rng.normal(0, 40, size=(size, size, 3))
    else:  # stripes
        period = rng.integers(4, 12)
        stripes = ((np.arange(size) // period) % 2)[:, None, None]
        img = np.broadcast_to(base + stripes * rng.integers(-80, 80, size=3), (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw(rng: np.random.Generator, size: int, boxes: bool) -> tuple[Image.Image, list[str]]:
    image = Image.fromarray(_background(rng, size))
    draw = ImageDraw.Draw(image)
    lines = []
    for _ in range(int(rng.integers(0, 4)) if rng.random() < 0.9 else 0):
        cls = int(rng.integers(len(NAMES)))
        r = rng.uniform(0.12, 0.25) * size
        cx, cy = rng.uniform(r, size - r, size=2)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        points = _polygon(cls, cx, cy, r, rng)
        draw.polygon(points, fill=colour, outline=(255 - colour[0], 255 - colour[1], 255 - colour[2]))
        norm = [(min(max(x / size, 0.0), 1.0), min(max(y / size, 0.0), 1.0)) for x, y in points]
        if boxes:
            xs, ys = [p[0] for p in norm], [p[1] for p in norm]
            lines.append(f"{cls} {(min(xs) + max(xs)) / 2:.6f} {(min(ys) + max(ys)) / 2:.6f} "
                         f"{max(xs) - min(xs):.6f} {max(ys) - min(ys):.6f}")
        else:
            lines.append(f"{cls} " + " ".join(f"{x:.6f} {y:.6f}" for x, y in norm))
    return image, lines


def _polygon(cls: int, cx: float, cy: float, r: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    if cls == 0:  # axis-aligned square
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if cls == 1:  # disc as a 16-gon
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 16, endpoint=False)]
    turn = rng.uniform(0, 2 * math.pi)
    return [(cx + r * math.cos(turn + a), cy + r * math.sin(turn + a)) for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--boxes", action="store_true", help="box lines instead of polygons (detection only)")
    args = parser.parse_args()
    print(make_yolo_dataset(args.out, args.images, args.size, args.seed, args.boxes))


if __name__ == "__main__":
    main()
