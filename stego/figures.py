"""Pictures people would rather look at: label colours, overlays, qualitative grids and training balance curves (the
demo's, predict's and the reports'), as PNGs whose bytes depend on the data only."""
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import atomic_write  # noqa: E402


def palette(n: int) -> np.ndarray:
    """n distinct RGB colours (uint8 [n, 3]) from matplotlib's qualitative maps; ignore is drawn black."""
    colours = np.concatenate([plt.get_cmap(name).colors for name in ("tab20", "tab20b", "tab20c")])
    reps = int(np.ceil(n / len(colours)))
    return (np.tile(colours, (reps, 1))[:n, :3] * 255).astype(np.uint8)


def colourize(label: np.ndarray, n: int) -> np.ndarray:
    """An integer label map [H, W] (negative = ignore) as an RGB image."""
    out = np.zeros((*label.shape, 3), dtype=np.uint8)
    valid = label >= 0
    out[valid] = palette(n)[label[valid]]
    return out


def overlay(image: np.ndarray, label: np.ndarray, n: int, alpha: float = 0.5) -> np.ndarray:
    """Label colours blended over an RGB uint8 image."""
    return (image * (1 - alpha) + colourize(label, n) * alpha).astype(np.uint8)


def save_figure(fig, path) -> None:
    """Save a matplotlib figure as PNG (fixed dpi, no software stamp: the same figure gives the same bytes),
    atomically, and close it."""
    with atomic_write(path, "wb", durable=False) as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def qualitative_grid(rows: list[dict], n_classes: int, path, columns=("image", "truth", "cluster", "cluster_crf",
                                                                       "linear")) -> None:
    """One row per image; columns are RGB images or label maps (keys of each row dict), missing ones skipped."""
    columns = [c for c in columns if any(c in r for r in rows)]
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(1.8 * len(columns), 1.8 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        for j, col in enumerate(columns):
            ax = axes[i, j]
            value = row.get(col)
            if value is not None:
                ax.imshow(value if value.ndim == 3 else colourize(value, n_classes), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(col.replace("_", " + ").replace("crf", "CRF"), fontsize=9)
    save_figure(fig, path)


def training_curves(log_csv, path) -> None:
    """Loss terms and mean code correlations (self / KNN / random) over iterations: the balance read-out.

    Runs with nothing to distil (raw-feature baselines) log only the probe losses; their panels say so.
    """
    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    panels = ((ax1, "loss terms", ("loss", "loss_self", "loss_knn", "loss_rand", "linear_loss", "cluster_loss")),
              (ax2, "mean code correlation", ("corr_self", "corr_knn", "corr_rand")))
    for ax, title, keys in panels:
        for key in keys:
            points = [(int(r["iteration"]), float(r[key])) for r in rows if r.get(key)]
            if points:
                ax.plot(*zip(*points), label=key.replace("corr_", ""))
        if ax.get_lines():
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no correspondence loss in this run", ha="center", va="center", fontsize=8)
        ax.set_xlabel("iteration")
        ax.set_title(title)
    ax2.axhline(0, color="grey", lw=0.5)
    save_figure(fig, Path(path))
