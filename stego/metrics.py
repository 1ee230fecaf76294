"""Segmentation metrics exactly as docs/protocol.md §7: one confusion matrix over the whole set, Hungarian or identity.

Rows are predictions, columns are truth. With more clusters than classes, pixels of unmatched clusters stay in
the denominators (they are errors), unlike the release, which silently dropped them.
"""
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .constants import IGNORE
from .errors import StegoError


class ConfusionMatrix:
    """Streaming counts [n_pred, n_classes] of (prediction, truth) pixel pairs; ignore pixels are dropped."""

    def __init__(self, n_pred: int, n_classes: int):
        self.n_pred = n_pred
        self.n_classes = n_classes
        self.counts = torch.zeros(n_pred, n_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of integer predictions and labels of the same shape."""
        if pred.shape != target.shape:
            raise StegoError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(target.shape)}")
        pred = pred.reshape(-1).to("cpu", torch.int64).numpy()
        target = target.reshape(-1).to("cpu", torch.int64).numpy()
        if not target.size:
            return
        if target.min() < IGNORE or target.max() >= self.n_classes:
            kept = target[target != IGNORE]
            raise StegoError(f"label values must be in 0..{self.n_classes - 1} or {IGNORE} (ignore); "
                             f"found {kept.min()}..{kept.max()}: check the dataset's class mapping")
        if pred.min() < 0 or pred.max() >= self.n_pred:
            raise StegoError(f"predictions must be in 0..{self.n_pred - 1}, found {pred.min()}..{pred.max()}")
        # ignore (-1) lands in column 0, which is dropped: no boolean selection over the pixels
        width = self.n_classes + 1
        counts = np.bincount(pred * width + (target - IGNORE), minlength=self.n_pred * width)
        self.counts += torch.from_numpy(counts.reshape(self.n_pred, width)[:, 1:])


def hungarian_match(counts: np.ndarray) -> np.ndarray:
    """For each class, the prediction index matched to it by one global assignment maximising matched pixels.

    Returns an int array [n_classes]; −1 for classes left unmatched (fewer predictions than classes).
    """
    rows, cols = linear_sum_assignment(np.asarray(counts), maximize=True)
    match = np.full(counts.shape[1], -1, dtype=np.int64)
    match[cols] = rows
    return match


@dataclass
class Scores:
    miou: float
    accuracy: float
    iou: list
    """Per-class IoU; NaN where undefined (class absent and never predicted)."""
    match: list
    """Prediction index scored as each class."""
    counts: list
    """The raw confusion matrix, rows prediction, columns truth."""

    def as_dict(self) -> dict:
        nan_free = [None if np.isnan(v) else v for v in self.iou]
        return {"miou": self.miou, "accuracy": self.accuracy, "iou": nan_free, "match": self.match,
                "confusion": self.counts}


def scores(counts, match: np.ndarray | None = None) -> Scores:
    """mIoU and pixel accuracy of a confusion matrix under a prediction→class matching (identity if None)."""
    counts = np.asarray(counts, dtype=np.float64)
    n_pred, n_classes = counts.shape
    if match is None:
        if n_pred != n_classes:
            raise StegoError(f"identity matching needs as many predictions as classes ({n_pred} vs {n_classes})")
        match = np.arange(n_classes)
    match = np.asarray(match)
    matched = match >= 0
    tp = np.zeros(n_classes)
    pred_total = np.zeros(n_classes)
    tp[matched] = counts[match[matched], np.arange(n_classes)[matched]]
    pred_total[matched] = counts[match[matched]].sum(axis=1)
    fp = pred_total - tp
    fn = counts.sum(axis=0) - tp
    denom = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(denom > 0, tp / denom, np.nan)
    total = counts.sum()
    miou = float(np.nanmean(iou)) if np.any(denom > 0) else float("nan")
    accuracy = float(tp.sum() / total) if total else float("nan")
    return Scores(miou, accuracy, iou.tolist(), match.tolist(), counts.astype(np.int64).tolist())


def _counts(confusion) -> np.ndarray:
    return confusion.counts.numpy() if isinstance(confusion, ConfusionMatrix) else np.asarray(confusion)


def cluster_scores(confusion) -> Scores:
    """Scores of cluster predictions (a ConfusionMatrix or its counts) after one global Hungarian matching."""
    counts = _counts(confusion)
    return scores(counts, hungarian_match(counts))


def linear_scores(confusion) -> Scores:
    """Scores of linear-probe predictions (class index = prediction index)."""
    return scores(_counts(confusion))
