"""How sure is each segmentation number: per-image counts, bootstrap intervals over images, paired differences
between two rows, Student t intervals over seeds, and named matching protocols.

Evaluation sums one confusion matrix (rows prediction, columns truth, ignore pixels dropped) over the validation
set. Keeping each image's share (`stego.counts.ImageCounts`) lets the images be resampled afterwards without the
model.

Bootstrap resample r (r = 0, 1, ... in order) draws `rng.integers(0, n_images, size=n_images)` from
`np.random.default_rng(seed)`: the draws depend on (seed, n_images) only, so paired rows share them and the memory
chunking never changes them.
"""
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from scipy import stats as scipy_stats

from .counts import ImageCounts
from .errors import StegoError
from .metrics import hungarian_match

PROTOCOLS = ("hungarian", "identity", "majority", "overclustering", "heldout_hungarian")
PROBE_PROTOCOL = {"cluster": "hungarian", "linear": "identity"}
"""How each probe is scored: the cluster probe after Hungarian matching, the linear probe by identity."""
_METHOD = {"hungarian": "percentile bootstrap over images, Hungarian matching refitted per resample",
           "identity": "percentile bootstrap over images, identity matching"}
_CHUNK_FLOATS = 2**22
"""Resampled confusions held at once, in floats (32 MB): bounds the bootstrap's memory, not its result."""


# --- matching protocols -------------------------------------------------------------------------------------------

@dataclass
class ProtocolScores:
    """mIoU and pixel accuracy under one named matching protocol, with the matching that produced them."""
    protocol: str
    miou: float
    accuracy: float
    iou: list
    """Per-class IoU; NaN where undefined (class absent and never predicted)."""
    mapping: list
    """The class each prediction row is scored as; -1: unmatched, its pixels count as errors."""
    fit_images: list | None = None
    """heldout_hungarian only: the images the matching was fitted on (it is scored on all the others)."""


def _hungarian_mapping(confusion: np.ndarray) -> np.ndarray:
    """Row -> class from one global one-to-one assignment maximising matched pixels (stego.metrics')."""
    match = hungarian_match(confusion)
    mapping = np.full(confusion.shape[0], -1, dtype=np.int64)
    matched = match >= 0
    mapping[match[matched]] = np.flatnonzero(matched)
    return mapping


def _fit_mappings(confusions: np.ndarray, protocol: str) -> np.ndarray:
    """Row -> class mappings [R, n_pred] for a batch of confusions [R, n_pred, n_classes]."""
    size, n_pred, n_classes = confusions.shape
    if protocol == "hungarian":
        return np.stack([_hungarian_mapping(c) for c in confusions])
    if protocol == "identity":
        if n_pred != n_classes:
            raise StegoError(f"identity matching needs as many predictions as classes ({n_pred} vs {n_classes}): "
                             "score clusters with 'hungarian' or 'majority'")
        return np.broadcast_to(np.arange(n_classes), (size, n_classes))
    # majority (many-to-one): the class each row overlaps most, lowest index on ties; rows without pixels unmatched
    return np.where(confusions.sum(2) > 0, confusions.argmax(2), -1)


def _score_batch(confusions: np.ndarray, mappings: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mIoU [R], accuracy [R], IoU [R, n_classes]) of confusions [R, n_pred, n_classes] whose rows are merged by
    class under mappings [R, n_pred]; unmatched rows stay in the truth totals, so their pixels are errors."""
    n_classes = confusions.shape[2]
    onehot = mappings[:, :, None] == np.arange(n_classes)
    tp = (confusions * onehot).sum(1)
    predicted = (confusions.sum(2)[:, :, None] * onehot).sum(1)
    union = predicted + confusions.sum(1) - tp
    defined = union > 0
    iou = np.where(defined, tp / np.where(defined, union, 1), np.nan)
    n_defined = defined.sum(1)
    miou = np.where(n_defined > 0, np.where(defined, iou, 0).sum(1) / np.maximum(n_defined, 1), np.nan)
    total = confusions.sum((1, 2))
    accuracy = np.where(total > 0, tp.sum(1) / np.maximum(total, 1), np.nan)
    return miou, accuracy, iou


def _as_confusion(counts_or_confusion) -> np.ndarray:
    if isinstance(counts_or_confusion, ImageCounts):
        return counts_or_confusion.total()
    confusion = np.asarray(counts_or_confusion)
    if confusion.ndim != 2 or not np.issubdtype(confusion.dtype, np.number) or (confusion.size and confusion.min() < 0):
        raise StegoError(f"a confusion must be a 2-D array [n_pred, n_classes] of pixel counts >= 0, got shape "
                         f"{confusion.shape}, dtype {confusion.dtype}")
    return confusion


def score_protocol(counts_or_confusion, protocol: str = "hungarian", seed: int = 0) -> ProtocolScores:
    """Scores of an ImageCounts or a summed confusion [n_pred, n_classes] under a named protocol.

    hungarian: one-to-one global matching maximising matched pixels (the paper's). identity: prediction k is class k
    (the linear probe). majority: many-to-one, each cluster scored as the class it overlaps most, IoU over the merged
    prediction. overclustering: majority for K >= n_classes clusters (see overclustering_curve). heldout_hungarian
    (ImageCounts only): Hungarian fitted on the images `default_rng(seed).permutation(n)[:n // 2]`, scored on the rest,
    so the matching never sees the pixels it scores.
    """
    if protocol not in PROTOCOLS:
        raise StegoError(f"unknown matching protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    fit = None
    if protocol == "heldout_hungarian":
        if not isinstance(counts_or_confusion, ImageCounts) or counts_or_confusion.n_images < 2:
            raise StegoError("heldout_hungarian needs per-image counts (ImageCounts) of at least 2 images, not a "
                             "summed confusion")
        n = counts_or_confusion.n_images
        fit = np.sort(np.random.default_rng(seed).permutation(n)[: n // 2])
        mapping = _hungarian_mapping(counts_or_confusion.total(fit))
        confusion = counts_or_confusion.total(np.setdiff1d(np.arange(n), fit))
    else:
        confusion = _as_confusion(counts_or_confusion)
        if protocol == "overclustering" and confusion.shape[0] < confusion.shape[1]:
            raise StegoError(f"overclustering scores K >= n_classes clusters, got K = {confusion.shape[0]} < "
                             f"{confusion.shape[1]}: use 'hungarian' for fewer clusters")
        mapping = _fit_mappings(confusion[None], "majority" if protocol == "overclustering" else protocol)[0]
    miou, accuracy, iou = _score_batch(confusion[None].astype(np.float64), mapping[None])
    return ProtocolScores(protocol, float(miou[0]), float(accuracy[0]), iou[0].tolist(), mapping.tolist(),
                          None if fit is None else fit.tolist())


@dataclass
class OverclusteringCurve:
    """mIoU and accuracy under majority mapping against the number of clusters K, in increasing K."""
    ks: list
    miou: list
    accuracy: list


def overclustering_curve(pairs: Iterable) -> OverclusteringCurve:
    """The curve of (K, confusion with K rows) pairs, each clustering refitted elsewhere with K clusters."""
    points = sorted(((int(k), _as_confusion(c)) for k, c in pairs), key=lambda point: point[0])
    if not points:
        raise StegoError("overclustering_curve needs at least one (K, confusion) pair")
    n_classes = points[0][1].shape[1]
    for i, (k, confusion) in enumerate(points):
        if confusion.shape != (k, n_classes) or (i and k == points[i - 1][0]):
            raise StegoError(f"the confusion for K = {k} has shape {confusion.shape}: give each K once, with K rows "
                             f"and the same {n_classes} classes")
    scored = [score_protocol(c, "overclustering") for _, c in points]
    return OverclusteringCurve([k for k, _ in points], [s.miou for s in scored], [s.accuracy for s in scored])


# --- bootstrap over images ----------------------------------------------------------------------------------------

@dataclass
class BootstrapCI:
    """A percentile bootstrap interval: the point estimate on all images, its bounds and the resamples' std."""
    metric: str
    point: float
    lower: float
    upper: float
    se: float
    """Standard deviation (n - 1) of the resampled values: the bootstrap standard error."""
    n_resamples: int
    seed: int
    level: float
    method: str

    @property
    def excludes_zero(self) -> bool:
        return bool(self.lower > 0 or self.upper < 0)


def _metric(confusions: np.ndarray, protocol: str, metric: str) -> np.ndarray:
    """'miou', 'accuracy' or 'iou:K' (class K's IoU) of each confusion in a batch, each matched on itself."""
    miou, accuracy, iou = _score_batch(confusions, _fit_mappings(confusions, protocol))
    if metric in ("miou", "accuracy"):
        return miou if metric == "miou" else accuracy
    name, _, k = metric.partition(":")
    if name == "iou" and k.isdigit() and int(k) < iou.shape[1]:
        return iou[:, int(k)]
    raise StegoError(f"unknown metric {metric!r}: use 'miou', 'accuracy' or 'iou:K' with K in 0..{iou.shape[1] - 1}")


def _check_bootstrap(rows: list, probe_kind: str, n_resamples: int, level: float) -> str:
    """Validate the arguments; return the protocol of the probe kind."""
    if probe_kind not in PROBE_PROTOCOL:
        raise StegoError(f"unknown probe kind {probe_kind!r}: use 'cluster' (Hungarian) or 'linear' (identity)")
    if not 0 < level < 1:
        raise StegoError(f"level must be in (0, 1), e.g. 0.95; got {level}")
    if n_resamples < 2:
        raise StegoError(f"n_resamples must be >= 2, got {n_resamples}")
    for row in rows:
        if not isinstance(row, ImageCounts) or row.n_images < 1:
            raise StegoError(f"the bootstrap needs per-image counts (ImageCounts) of at least one image, got "
                             f"{type(row).__name__}")
    return PROBE_PROTOCOL[probe_kind]


def _resampled(rows: list, protocol: str, metric: str, n_resamples: int, seed: int) -> list:
    """The metric of each row on each resample [n_resamples]; all rows share the same resampled images.

    A resample's confusion is (image multiplicities) @ (per-image confusions): one matmul per chunk of resamples.
    """
    n = rows[0].n_images
    dense = [row.dense().astype(np.float64) for row in rows]
    chunk = max(1, min(n_resamples, _CHUNK_FLOATS // max(n, *(d.shape[1] for d in dense))))
    rng = np.random.default_rng(seed)
    out = [np.empty(n_resamples) for _ in rows]
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        weights = np.stack([np.bincount(rng.integers(0, n, size=n), minlength=n) for _ in range(size)]).astype(float)
        for row, matrix, values in zip(rows, dense, out):
            confusions = (weights @ matrix).reshape(size, row.n_pred, row.n_classes)
            values[start:start + size] = _metric(confusions, protocol, metric)
    return out


def _point(row: ImageCounts, protocol: str, metric: str) -> float:
    return float(_metric(row.total()[None].astype(np.float64), protocol, metric)[0])


def _interval(values: np.ndarray, level: float) -> tuple[float, float, float]:
    """(lower, upper, se) of resampled values; resamples where the metric is undefined (NaN) are left out."""
    values = values[~np.isnan(values)]
    if values.size < 2:
        return float("nan"), float("nan"), float("nan")
    lower, upper = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lower), float(upper), float(values.std(ddof=1))


def bootstrap_ci(counts: ImageCounts, metric: str, probe_kind: str, n_resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> BootstrapCI:
    """Percentile bootstrap interval of 'miou', 'accuracy' or 'iou:K', resampling images with replacement.

    The cluster probe ('cluster') refits its Hungarian matching on every resample: the matching is part of the
    estimator (fitted on the very pixels it scores), so holding it fixed would understate the spread; where the
    matching is unstable, its optimism on the smaller effective resamples shifts the interval up. The linear probe
    ('linear') is scored by identity.
    """
    protocol = _check_bootstrap([counts], probe_kind, n_resamples, level)
    point = _point(counts, protocol, metric)
    lower, upper, se = _interval(_resampled([counts], protocol, metric, n_resamples, seed)[0], level)
    return BootstrapCI(metric, point, lower, upper, se, n_resamples, seed, level, _METHOD[protocol])


def paired_bootstrap(a: ImageCounts, b: ImageCounts, metric: str, probe_kind: str, n_resamples: int = 1000,
                     seed: int = 0, level: float = 0.95) -> BootstrapCI:
    """Percentile interval of metric(b) - metric(a) (positive: b is better), both rows scored on the SAME resampled
    images, so the spread shared by the images cancels; matching as bootstrap_ci, refitted per row and resample."""
    protocol = _check_bootstrap([a, b], probe_kind, n_resamples, level)
    if a.n_images != b.n_images or a.n_classes != b.n_classes:
        raise StegoError(f"paired rows must be evaluated on the same images and classes: a has {a.n_images} images "
                         f"x {a.n_classes} classes, b has {b.n_images} x {b.n_classes}")
    # the same images have the same labelled pixels per class
    truth_a, truth_b = (r.dense().reshape(r.n_images, r.n_pred, r.n_classes).sum(1) for r in (a, b))
    differs = np.flatnonzero(np.any(truth_a != truth_b, axis=1))
    if differs.size:
        raise StegoError(f"a and b disagree on the labelled pixels of image {differs[0]}: pair rows evaluated on the "
                         "same images in the same order")
    values_a, values_b = _resampled([a, b], protocol, metric, n_resamples, seed)
    point = _point(b, protocol, metric) - _point(a, protocol, metric)
    lower, upper, se = _interval(values_b - values_a, level)
    return BootstrapCI(f"{metric} (b - a)", point, lower, upper, se, n_resamples, seed, level,
                       "paired " + _METHOD[protocol])


def agreement(ci: BootstrapCI, expected: float) -> str:
    """'agrees' when the interval excludes 0 on the side of `expected` (e.g. the paper's b - a), 'opposite' when it
    excludes 0 on the other side, 'inconclusive' when it contains 0."""
    if not expected or np.isnan(expected):
        raise StegoError(f"the expected difference must be non-zero, got {expected}: for 'no difference' read "
                         "ci.excludes_zero")
    if not ci.excludes_zero:
        return "inconclusive"
    return "agrees" if (ci.lower > 0) == (expected > 0) else "opposite"


# --- over seeds ---------------------------------------------------------------------------------------------------

@dataclass
class SeedInterval:
    """Mean over seeds with a Student t interval; std, half_width, lower and upper are NaN with under two values
    (one run says nothing about the spread) and the mean is NaN with none."""
    mean: float
    std: float
    half_width: float
    lower: float
    upper: float
    n: int
    n_missing: int
    """Values given as None or NaN (failed seeds), skipped."""
    level: float
    method: str = "student t over seeds"


def t_interval(values: Iterable, level: float = 0.95) -> SeedInterval:
    """mean +- t_{n-1}((1 + level) / 2) * s / sqrt(n), s the sample standard deviation (n - 1)."""
    if not 0 < level < 1:
        raise StegoError(f"level must be in (0, 1), e.g. 0.95; got {level}")
    values = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    kept = values[~np.isnan(values)]
    n, missing, nan = int(kept.size), int(values.size - kept.size), float("nan")
    if n < 2:
        return SeedInterval(float(kept.mean()) if n else nan, nan, nan, nan, nan, n, missing, level)
    mean, std = float(kept.mean()), float(kept.std(ddof=1))
    half = float(scipy_stats.t.ppf((1 + level) / 2, n - 1) * std / np.sqrt(n))
    return SeedInterval(mean, std, half, mean - half, mean + half, n, missing, level)
