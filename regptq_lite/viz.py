"""Figures, in one consistent style."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

from .scenes import CLASSES, Scene

CLASS_COLOURS = ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00")


def draw_boxes(
    ax: plt.Axes, boxes, labels, scores=None, colour: str | None = None, dashed: bool = False, captions: bool = True
) -> None:
    """Boxes (x0, y0, x1, y1) with 0-based labels on ``ax``; class (and score) captions if ``captions``."""
    for i, (box, label) in enumerate(zip(boxes, labels)):
        x0, y0, x1, y1 = (float(v) for v in box)
        c = colour or CLASS_COLOURS[int(label) % len(CLASS_COLOURS)]
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=c, lw=1.4, ls="--" if dashed else "-"))
        if not captions:
            continue
        text = CLASSES[int(label)] + ("" if scores is None else f" {float(scores[i]):.2f}")
        ax.text(x0, y0 - 1, text, color="white", fontsize=6, va="bottom", bbox={"fc": c, "ec": "none", "pad": 0.8})


def plot_detections(scenes: list[Scene], outputs: list[dict], score_thresh: float = 0.5, cols: int = 4) -> plt.Figure:
    """Ground truth (white, dashed) and detections above ``score_thresh`` (coloured by class)."""
    rows = -(-len(scenes) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, scene, out in zip(axes.flat, scenes, outputs):
        ax.imshow(scene.image, extent=(0, scene.image.shape[1], scene.image.shape[0], 0))
        draw_boxes(ax, scene.boxes, scene.labels, colour="white", dashed=True, captions=False)
        keep = out["scores"] >= score_thresh
        draw_boxes(ax, out["boxes"][keep], out["labels"][keep] - 1, out["scores"][keep])
    fig.suptitle(f"white dashed: ground truth; coloured: detections with score >= {score_thresh}", fontsize=9)
    fig.tight_layout()
    return fig
