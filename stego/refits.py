"""Refits of the cluster probe at evaluation, on the trained head's codes of training images: seeded restarts (how
much the cluster number depends on the probe's random init; STEGO issue #39, where a retrain matched the linear
probe and missed the cluster probe by ~15 mIoU) and K > classes clusters (the over-clustering curve).

A refit is the training's own estimator (docs/protocol.md §4): `ClusterProbe`'s randn init, drawn from the refit's
seed, then Adam at train.probe_lr on −mean max cos for train.iterations steps of train.batch_size images' worth of
code vectors each; only the codes differ: the final head's, fixed, instead of the moving codes of training.
"""
import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import Subset
from tqdm import tqdm

from . import build
from .config import Config
from .errors import StegoError
from .inference import sample_features
from .model import ClusterProbe
from .runtime import iteration_seed, worker_count

log = logging.getLogger(__name__)

REFIT_IMAGES = 2000
"""Training images (or crops), a seeded subset, whose codes the refits see: bounds the pass at paper scale."""
REFIT_ROWS = 200_000
"""Code vectors kept of them, an equal seeded share per image."""
OVERCLUSTERING = (1.0, 1.5, 2.0, 2.5, 3.0)
"""Over-clustering curve: K = round(factor × classes) clusters, from the number of classes to three times it."""
_RESTART, _OVERCLUSTER, _SAMPLE = 1, 2, 3
"""Seed streams, so restart r, the K-cluster fit and the code sample never share draws."""


def refit_seed(cfg: Config, stream: int, index: int) -> int:
    """The seed of refit `index` of a stream (restart r, or the fit with K clusters), from the run's seed."""
    return iteration_seed(cfg.train.seed * 4 + stream, index)


def overclustering_ks(n_classes: int) -> list[int]:
    """The K of each over-clustering point, increasing, each once."""
    return sorted({max(1, round(f * n_classes)) for f in OVERCLUSTERING})


@torch.no_grad()
def training_codes(model, backbone, cfg: Config, dataset, device) -> torch.Tensor:
    """Code vectors [≤ REFIT_ROWS, dim] of the trained head on the training images `dataset`, at feature resolution
    as the training probe saw them (no flip TTA, no dropout); backbone None: `dataset`'s items hold their stored
    features (stego.data.features.CachedItems)."""
    generator = torch.Generator().manual_seed(refit_seed(cfg, _SAMPLE, 0))
    picked = torch.randperm(len(dataset), generator=generator)[:REFIT_IMAGES].sort().values.tolist()
    model.eval()

    def encode(images):  # the backbone in train.precision (sample_features' autocast), the head in fp32 as in eval
        feats = (images if backbone is None else backbone(images)).float()
        with torch.autocast(images.device.type, enabled=False):
            return model.head(feats)[1]

    return sample_features(encode, Subset(dataset, picked), REFIT_ROWS, cfg.eval.batch_size,
                           worker_count(cfg.data.workers), refit_seed(cfg, _SAMPLE, 1), device,
                           precision=cfg.train.precision)


def fit_cluster_probes(codes: torch.Tensor, ks: list, seeds: list, steps: int, batch_rows: int, lr: float,
                       progress=None) -> list:
    """Cluster probes (centroids [k, dim] each) fitted on code vectors [N, dim] as training fits one (module doc),
    probe p with ks[p] clusters from seeds[p]: its init and its row draws come from its own generator.

    All are fitted at once: centroids padded to max(ks), the padding masked out of the max; the summed loss gives
    each probe its own gradient and Adam is elementwise, so each equals a fit on its own."""
    device, dim, k_max = codes.device, codes.shape[1], max(ks)
    generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
    centroids = torch.zeros(len(ks), k_max, dim, device=device)
    for p, (k, generator) in enumerate(zip(ks, generators)):
        centroids[p, :k] = torch.randn(k, dim, generator=generator, device=device)
    padding = torch.arange(k_max, device=device)[None, :] >= torch.tensor(ks, device=device)[:, None]  # [P, k_max]
    centroids.requires_grad_(True)
    optimizer = torch.optim.Adam([centroids], lr=lr)
    unit = F.normalize(codes.float(), dim=1)
    with torch.enable_grad():
        for _ in range(steps):
            rows = torch.stack([unit[torch.randint(unit.shape[0], (batch_rows,), generator=g, device=device)]
                                for g in generators])  # [P, rows, dim]
            cos = torch.einsum("prd,pkd->prk", rows, F.normalize(centroids, dim=2))
            best = cos.masked_fill(padding[:, None, :], -torch.inf).max(dim=2).values
            loss = -best.mean(dim=1).sum()  # ClusterProbe.loss of each probe, summed
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if progress is not None:
                progress.update()
    return [centroids[p, :k].detach() for p, k in enumerate(ks)]


def as_probe(centroids: torch.Tensor) -> ClusterProbe:
    """A ClusterProbe holding `centroids`, to predict with."""
    probe = ClusterProbe(centroids.shape[1], centroids.shape[0]).to(centroids.device)
    with torch.no_grad():
        probe.clusters.copy_(centroids)
    return probe.requires_grad_(False)


@dataclass
class Refits:
    """The refitted cluster probes of one evaluation: restart r (K = classes) from seeds[r]; one probe per K."""

    restarts: list = field(default_factory=list)
    seeds: list = field(default_factory=list)
    overclustering: dict = field(default_factory=dict)
    skipped: str | None = None
    """Why none were fitted although asked for (no training images here, e.g. a released checkpoint's val-only data)."""


def refit_probes(model, backbone, cfg: Config, device) -> Refits:
    """The refits eval.cluster_restarts and eval.overclustering ask for (none: no pass over the training images;
    data.features=cached: over their stored features); a training split that cannot be read is recorded as the
    reason they were skipped (the evaluation stands)."""
    n_classes = model.n_classes
    ks = overclustering_ks(n_classes) if cfg.eval.overclustering else []
    restarts = cfg.eval.cluster_restarts
    if not restarts and not ks:
        return Refits()
    try:
        dataset = build.train_dataset(cfg)
    except (StegoError, OSError) as err:
        reason = str(err).splitlines()[0]
        log.warning("cluster-probe refits skipped: %s", reason)
        return Refits(skipped=reason)
    if cfg.data.features == "cached":  # the training store (built now if the run trained from images)
        codes = training_codes(model, None, cfg, build.cached_items(cfg, backbone, dataset, device), device)
    else:
        codes = training_codes(model, backbone, cfg, dataset, device)
    codes = codes.to(device)
    grid = (cfg.data.res // backbone.patch) ** 2
    steps, batch_rows, lr = cfg.train.iterations, cfg.train.batch_size * grid, cfg.train.probe_lr
    log.info("refitting the cluster probe %d + %d times on %d code vectors (%d steps of %d)", restarts, len(ks),
             codes.shape[0], steps, batch_rows)
    seeds = [refit_seed(cfg, _RESTART, r) for r in range(restarts)]
    with tqdm(total=steps, desc="cluster refits", dynamic_ncols=True) as bar:
        fitted = fit_cluster_probes(codes, [n_classes] * restarts + ks,
                                    seeds + [refit_seed(cfg, _OVERCLUSTER, k) for k in ks], steps, batch_rows, lr, bar)
    probes = [as_probe(c) for c in fitted]
    return Refits(probes[:restarts], seeds, dict(zip(ks, probes[restarts:])))
