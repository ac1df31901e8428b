"""Validation images with boxes / masks drawn: ground truth, dense baseline, sparse model side by side."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sparsify_mlflow.usecases.vision_dense.common import IMAGENET_MEAN, IMAGENET_STD

SHOW_SCORE = 0.3


def _rgb(image: np.ndarray) -> np.ndarray:
    """Undo the normalisation: [3, H, W] -> [H, W, 3] in [0, 1]."""
    x = image.transpose(1, 2, 0) * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)
    return np.clip(x, 0, 1)


def _grid(rows: int, columns: list[str]):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, len(columns), figsize=(2.6 * len(columns), 2.6 * rows), squeeze=False)
    for j, title in enumerate(columns):
        axes[0][j].set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


def detection_figure(images: np.ndarray, columns: dict[str, list[dict[str, torch.Tensor]]], names: list[str]) -> Any:
    """One row per image; per column its boxes (predictions with score >= SHOW_SCORE), labelled."""
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    colours = plt.get_cmap("tab10")
    fig, axes = _grid(len(images), list(columns))
    for i, image in enumerate(images):
        for j, per_image in enumerate(columns.values()):
            ax = axes[i][j]
            ax.imshow(_rgb(image))
            found = per_image[i]
            scores = found.get("scores")
            for k, (box, label) in enumerate(zip(found["boxes"].tolist(), found["labels"].tolist())):
                if scores is not None and float(scores[k]) < SHOW_SCORE:
                    continue
                x1, y1, x2, y2 = box
                ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.5,
                                               edgecolor=colours(label % 10)))
                text = names[label] + (f" {float(scores[k]):.2f}" if scores is not None else "")
                ax.text(x1, y1, text, fontsize=6, color="white", va="bottom",
                        bbox={"facecolor": colours(label % 10), "pad": 0.5, "lw": 0})
    fig.tight_layout()
    return fig


def segmentation_figure(images: np.ndarray, columns: dict[str, torch.Tensor], names: list[str]) -> Any:
    """First column the image, then one mask per column (ground truth, dense, sparse) over it."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    colours = ListedColormap([(0, 0, 0, 0)] + [plt.get_cmap("tab10")(k % 10) for k in range(len(names) - 1)])
    fig, axes = _grid(len(images), ["image", *columns])
    for i, image in enumerate(images):
        axes[i][0].imshow(_rgb(image))
        for j, masks in enumerate(columns.values(), start=1):
            axes[i][j].imshow(_rgb(image))
            axes[i][j].imshow(masks[i].numpy(), cmap=colours, vmin=0, vmax=len(names) - 1, alpha=0.6,
                              interpolation="nearest")
    fig.legend(handles=[Patch(color=colours(k), label=n) for k, n in enumerate(names) if k],
               loc="lower center", ncol=min(len(names), 6), fontsize=7)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig
