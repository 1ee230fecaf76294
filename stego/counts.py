"""Each validation image's share of a probe's confusion matrix, so that metrics can be recomputed and the images
resampled without the model (stego.stats): CSR-style lists of touched cells per image, built during evaluation and
kept in a JSON sidecar beside the eval record (stego.runs.counts_file).

Size, measured in tests/test_stats.py: 2,175 images x 27 classes, 10-40 touched cells per image, 320x320 labelled
pixels each, takes 579 kB as `json.dumps(counts.to_json())` (266 bytes per image; 469 kB with separators=(",", ":")).
"""
from dataclasses import dataclass

import numpy as np

from .constants import IGNORE
from .errors import StegoError


def image_confusions(pred, target, n_pred: int, n_classes: int, ignore: int = IGNORE) -> tuple[np.ndarray, np.ndarray]:
    """One image's confusion entries: sorted flat cells (pred * n_classes + truth) and their pixel counts (> 0).

    Pixels labelled `ignore` are dropped, and their predictions are not looked at.
    """
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise StegoError(f"prediction shape {pred.shape} != label shape {target.shape}: pass one image's "
                         "predictions and its labels")
    for name, values in (("predictions", pred), ("labels", target)):
        if not np.issubdtype(values.dtype, np.integer):
            raise StegoError(f"{name} must be integer class indices, got dtype {values.dtype}: take the argmax first")
    kept = target != ignore
    pred, target = pred[kept].astype(np.int64), target[kept].astype(np.int64)
    if target.size and (target.min() < 0 or target.max() >= n_classes):
        raise StegoError(f"labels must be in 0..{n_classes - 1} or {ignore} (ignore), found "
                         f"{target.min()}..{target.max()}: check the dataset's class mapping")
    if pred.size and (pred.min() < 0 or pred.max() >= n_pred):
        raise StegoError(f"predictions must be in 0..{n_pred - 1}, found {pred.min()}..{pred.max()}: "
                         "check n_pred against the probe's number of clusters")
    hist = np.bincount(pred * n_classes + target, minlength=n_pred * n_classes)
    cells = np.flatnonzero(hist)
    return cells, hist[cells]


@dataclass
class ImageCounts:
    """Per-image confusions of one probe, CSR-like: image i's entries are cells/counts[offsets[i]:offsets[i + 1]],
    a cell being pred * n_classes + truth."""
    n_pred: int
    n_classes: int
    offsets: np.ndarray
    cells: np.ndarray
    counts: np.ndarray

    def __post_init__(self):
        self.n_pred, self.n_classes = n_pred, n_classes = int(self.n_pred), int(self.n_classes)
        self.offsets, self.cells, self.counts = offsets, cells, counts = tuple(
            np.asarray(a, dtype=np.int64) for a in (self.offsets, self.cells, self.counts))
        if n_pred < 1 or n_classes < 1:
            raise StegoError(f"n_pred and n_classes must be >= 1, got {n_pred} and {n_classes}")
        if offsets.ndim != 1 or offsets.size == 0 or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
            raise StegoError("offsets must be a non-decreasing 1-D list starting at 0 (one more than the images)")
        if cells.shape != counts.shape or cells.ndim != 1 or offsets[-1] != cells.size:
            raise StegoError(f"cells {cells.shape} and counts {counts.shape} must be 1-D lists of offsets[-1] = "
                             f"{offsets[-1]} entries")
        if cells.size and (cells.min() < 0 or cells.max() >= n_pred * n_classes):
            raise StegoError(f"cells must be in 0..{n_pred * n_classes - 1} (pred * n_classes + truth), found "
                             f"{cells.min()}..{cells.max()}: check n_pred and n_classes")
        if counts.size and counts.min() < 0:
            raise StegoError("counts must be >= 0: they are pixel counts")

    @property
    def n_images(self) -> int:
        return self.offsets.size - 1

    @classmethod
    def from_dense(cls, confusions) -> "ImageCounts":
        """From per-image confusions [n_images, n_pred, n_classes] (e.g. a batched bincount on the GPU)."""
        confusions = np.asarray(confusions)
        if confusions.ndim != 3:
            raise StegoError(f"per-image confusions must be [n_images, n_pred, n_classes], got {confusions.shape}")
        n, n_pred, n_classes = confusions.shape
        flat = confusions.reshape(n, -1)
        images, cells = np.nonzero(flat)
        offsets = np.concatenate([[0], np.cumsum(np.bincount(images, minlength=n))])
        return cls(n_pred, n_classes, offsets, cells, flat[images, cells])

    def to_json(self) -> dict:
        """A JSON-ready dict of plain ints and lists of ints."""
        return {"n_pred": self.n_pred, "n_classes": self.n_classes, "offsets": self.offsets.tolist(),
                "cells": self.cells.tolist(), "counts": self.counts.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> "ImageCounts":
        """The inverse of to_json()."""
        try:
            return cls(data["n_pred"], data["n_classes"], data["offsets"], data["cells"], data["counts"])
        except (KeyError, TypeError) as e:
            raise StegoError(f"not an ImageCounts JSON object ({type(e).__name__}: {e}): write it with "
                             "ImageCounts.to_json()") from None

    def dense(self) -> np.ndarray:
        """Per-image confusions as one matrix [n_images, n_pred * n_classes], built on demand."""
        out = np.zeros((self.n_images, self.n_pred * self.n_classes), dtype=np.int64)
        np.add.at(out, (np.repeat(np.arange(self.n_images), np.diff(self.offsets)), self.cells), self.counts)
        return out

    def total(self, images=None) -> np.ndarray:
        """The summed confusion [n_pred, n_classes] of all images, or of the image indices `images` (a repeated
        index counts repeatedly); over all images it equals the global ConfusionMatrix."""
        if images is None:
            weights = np.ones(self.n_images, dtype=np.int64)
        else:
            images = np.asarray(images, dtype=np.int64)
            if images.size and (images.min() < 0 or images.max() >= self.n_images):
                raise StegoError(f"image indices must be in 0..{self.n_images - 1}, got {images.min()}..{images.max()}")
            weights = np.bincount(images, minlength=self.n_images)
        out = np.zeros(self.n_pred * self.n_classes, dtype=np.int64)
        np.add.at(out, self.cells, np.repeat(weights, np.diff(self.offsets)) * self.counts)
        return out.reshape(self.n_pred, self.n_classes)


class ImageCountsBuilder:
    """Streams images into an ImageCounts: add() one image's predictions and labels at a time, then build()."""

    def __init__(self, n_pred: int, n_classes: int, ignore: int = IGNORE):
        self.n_pred, self.n_classes, self.ignore = n_pred, n_classes, ignore
        self._cells, self._counts = [], []

    def add(self, pred, target) -> None:
        cells, counts = image_confusions(pred, target, self.n_pred, self.n_classes, self.ignore)
        self._cells.append(cells)
        self._counts.append(counts)

    def build(self) -> ImageCounts:
        offsets = np.concatenate([[0], np.cumsum([c.size for c in self._cells], dtype=np.int64)])
        empty = [np.zeros(0, dtype=np.int64)]
        return ImageCounts(self.n_pred, self.n_classes, offsets, np.concatenate(empty + self._cells),
                           np.concatenate(empty + self._counts))
