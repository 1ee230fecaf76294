"""Cosine (spherical) k-means, and the raw-feature clustering baseline that STEGO must beat.

`spherical_kmeans` clusters unit-normalised rows by cosine: k-means++ seeding, Lloyd iterations (assign each
row to its most similar centroid, set each centroid to the normalised sum of its rows), the best of several
seeded restarts. `raw_feature_kmeans` fits it on a config's training-image backbone features and scores it on
the validation split through the same evaluation path as STEGO (flip TTA, bilinear upsampling, nearest
centroid by cosine, optional CRF, Hungarian matching): the head is replaced by the identity.
"""
import dataclasses
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import StegoError
from .inference import sample_features
from .runtime import pick_device, set_tf32, worker_count

log = logging.getLogger(__name__)


@dataclass
class KMeansResult:
    centroids: Tensor
    """[k, D], unit rows."""
    labels: Tensor
    """[N] index of each row's centroid."""
    objective: float
    """Sum over rows of the cosine to their centroid (higher is better)."""
    history: list
    """Objective after each iteration of the winning restart (non-decreasing)."""


def assign(x: Tensor, centroids: Tensor, chunk: int = 65536) -> tuple[Tensor, Tensor]:
    """(index of the most cosine-similar centroid, that cosine) for every row of x [N, D]."""
    x = F.normalize(x.float(), dim=1)
    c = F.normalize(centroids.float(), dim=1)
    best, idx = [], []
    for start in range(0, x.shape[0], chunk):
        sims = x[start:start + chunk] @ c.T
        v, i = sims.max(dim=1)
        best.append(v)
        idx.append(i)
    return torch.cat(idx), torch.cat(best)


def kmeans_plusplus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeds [k, D] from unit rows x: each next seed drawn with probability ∝ 1 − (best cosine so far).

    For unit vectors 1 − cos is half the squared Euclidean distance, so this is the usual D² weighting.
    """
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    seeds = [x[first]]
    gap = (1 - x @ x[first]).clamp(min=0)
    for _ in range(1, k):
        total = float(gap.sum())
        if total <= 0:  # every row coincides with a seed: any row will do
            pick = int(torch.randint(n, (1,), generator=generator))
        else:
            pick = int(torch.multinomial(gap / total, 1, generator=generator))
        seeds.append(x[pick])
        gap = torch.minimum(gap, (1 - x @ x[pick]).clamp(min=0))
    return torch.stack(seeds)


def _lloyd(x: Tensor, centroids: Tensor, iterations: int, tol: float) -> tuple[Tensor, Tensor, list]:
    history = []
    labels, sims = assign(x, centroids)
    k = centroids.shape[0]
    for _ in range(iterations):
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)
        new = F.normalize(sums, dim=1)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):  # reseed empty clusters at the rows worst served so far
            worst = sims.argsort()[: len(empty)]
            new[empty] = x[worst]
        cancelled = (counts > 0) & (sums.norm(dim=1) == 0)  # rows summing to zero: keep the old direction
        new[cancelled] = centroids[cancelled]
        labels, sims = assign(x, new)
        objective = float(sims.double().sum())
        history.append(objective)
        centroids = new
        if len(history) > 1 and history[-1] - history[-2] <= tol * max(1.0, abs(history[-2])) and not len(empty):
            break
    return centroids, labels, history


def spherical_kmeans(x: Tensor, k: int, restarts: int = 5, iterations: int = 100, seed: int = 0,
                     tol: float = 1e-7) -> KMeansResult:
    """Cosine k-means of the rows of x [N, D] (normalised here): the best of `restarts` k-means++ runs.

    Deterministic for a given seed. Zero rows are an error (they have no direction).
    """
    if x.ndim != 2 or x.shape[0] == 0:
        raise StegoError(f"k-means needs a non-empty [N, D] matrix, got shape {tuple(x.shape)}")
    if not 1 <= k <= x.shape[0]:
        raise StegoError(f"k-means: k={k} must be between 1 and the number of rows ({x.shape[0]})")
    if restarts < 1:
        raise StegoError(f"k-means: restarts must be at least 1, got {restarts}")
    x = x.float()
    norms = x.norm(dim=1)
    if not torch.isfinite(norms).all() or (norms == 0).any():
        raise StegoError("k-means: the rows contain NaN/inf or all-zero vectors; cosine k-means needs directions")
    x = x / norms[:, None]
    generator = torch.Generator().manual_seed(seed)
    best = None
    for _ in range(restarts):
        centroids, labels, history = _lloyd(x, kmeans_plusplus(x, k, generator), iterations, tol)
        if best is None or history[-1] > best.objective:
            best = KMeansResult(centroids, labels, history[-1], history)
    return best


def raw_feature_kmeans(cfg, device=None, crf: bool | None = None, max_rows: int = 200_000, restarts: int = 5,
                       seed: int = 0, max_images: int | None = None) -> dict:
    """Baseline (b): cosine k-means on the raw backbone features of `cfg`, scored like STEGO on the val split.

    Fits K = classes (+ model.extra_clusters) centroids on the training split's features (at data.res, five-crops
    when data.crop is 'five'), then evaluates a head-less model (projection 'none': code = features) whose
    cluster probe holds those centroids, with `stego.evaluate.evaluate`. Returns its metrics without the
    linear-probe entries (there is no trained linear probe here), plus the k-means objective.
    """
    from . import build
    from .evaluate import evaluate

    device = device or pick_device(cfg.train.device)
    set_tf32(device, cfg.train.precision)
    backbone = build.backbone_for(cfg).to(device)
    train_set = build.train_dataset(cfg)
    n_classes = train_set.n_classes
    if not n_classes:
        raise StegoError(f"{cfg.data.root}: the number of classes is unknown; write classes.txt or set data.n_classes")
    k = n_classes + cfg.model.extra_clusters
    feats = sample_features(backbone, train_set, max_rows, cfg.eval.batch_size, worker_count(cfg.data.workers), seed,
                            device, precision=cfg.train.precision)
    fit = spherical_kmeans(feats, k, restarts=restarts, seed=seed)
    log.info("raw-feature k-means: %d rows of dim %d, k=%d, objective %.4f per row", feats.shape[0],
             feats.shape[1], k, fit.objective / feats.shape[0])
    raw_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, projection="none"))
    model = build.model_for(raw_cfg, backbone.dim, n_classes).to(device)
    with torch.no_grad():
        model.cluster_probe.clusters.copy_(fit.centroids)
    metrics = evaluate(model, backbone, build.val_dataset(cfg), cfg, device, crf=crf, max_images=max_images,
                       desc="k-means eval")
    metrics = {name: value for name, value in metrics.items() if not name.startswith("linear")}
    metrics["kmeans_objective"] = fit.objective / feats.shape[0]
    return metrics
