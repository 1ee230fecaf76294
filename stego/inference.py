"""From images to predictions, as evaluation scores them (docs/protocol.md §7): the code averaged over the image
and its horizontal flip, bilinear upsampling, both probes' log-probabilities, and DenseCRF refinement through a
worker pool that cannot hang (stego.crf). Evaluation, analysis, predict, the demo and the k-means baseline all
predict through here; `sample_features` draws the feature (or code) vectors that k-means and the probe refits fit."""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from .config import Config
from .runtime import autocast, worker_count


@torch.no_grad()
def flip_features(backbone, images: torch.Tensor, precision: str) -> torch.Tensor:
    """Backbone features of the images and of their horizontal flips, [2B, C, h, w] in one forward (backbone in
    `precision`, train.precision): what the TTA code averages, and what a flip feature store keeps per image."""
    with autocast(images.device, precision):
        return backbone(torch.cat([images, images.flip(dims=[3])])).float()


@torch.no_grad()
def views_code(model, views: torch.Tensor) -> torch.Tensor:
    """The code averaged over an image and its flip (the release's TTA), at feature resolution, from their
    features [2B, C, h, w] (flip_features' order)."""
    code = model.head(views.float())[1]
    b = views.shape[0] // 2
    return (code[:b] + code[b:].flip(dims=[3])) / 2


@torch.no_grad()
def tta_code(model, backbone, images: torch.Tensor, precision: str) -> torch.Tensor:
    """Code averaged over the image and its horizontal flip, at feature resolution; the backbone runs in
    `precision` (train.precision)."""
    return views_code(model, flip_features(backbone, images, precision))


@torch.no_grad()
def upsampled_code(model, backbone, images: torch.Tensor, size, precision: str) -> torch.Tensor:
    """The TTA code (backbone in `precision`) bilinearly upsampled to `size`: what every probe, refitted ones too,
    is scored on."""
    return _upsample(tta_code(model, backbone, images, precision), size)


@torch.no_grad()
def batch_code(model, backbone, batch: dict, size, precision: str, device) -> torch.Tensor:
    """`upsampled_code` of a loader batch: from its images (`img`) through the backbone, or, with backbone None,
    from the views a flip feature store kept (`feats` [B, 2, C, h, w], stego.data.features.CachedViews)."""
    if backbone is None:
        stored = batch["feats"].to(device, non_blocking=True)
        return _upsample(views_code(model, torch.cat([stored[:, 0], stored[:, 1]])), size)
    return upsampled_code(model, backbone, batch["img"].to(device, non_blocking=True), size, precision)


def _upsample(code: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(code, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def probe_log_probs(model, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cluster log-probs, linear log-probs) of an upsampled code."""
    return model.cluster_probe.log_probs(code), torch.log_softmax(model.linear_probe(code), dim=1)


def predict_log_probs(model, backbone, images: torch.Tensor, size, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(cluster log-probs, linear log-probs) at `size`, from the bilinearly upsampled TTA code (backbone in
    `precision`)."""
    return probe_log_probs(model, upsampled_code(model, backbone, images, size, precision))


def crf_refine(images: torch.Tensor, log_probs: torch.Tensor, pool=None) -> torch.Tensor:
    """DenseCRF marginals for a batch of normalised images and log-probs, through a CrfPool (None: serially)."""
    return crf_submit(images, [log_probs], pool)()[0]


def crf_submit(images: torch.Tensor, maps: list, pool=None, labels: bool = False):
    """Hand DenseCRF every map of `maps` (log-probs [B,K,H,W] of the same images) at once, to a CrfPool or (None)
    serially; returns collect() → the marginals, one tensor per map, or with `labels` their argmax (int64
    [B,H,W], computed in the workers). The pool works while the caller goes on."""
    from .crf import crf_batch, image_to_bgr_uint8

    bgr = [image_to_bgr_uint8(img.numpy()) for img in images.cpu()] * len(maps)
    probs = [p.numpy() for log_probs in maps for p in log_probs.float().softmax(dim=1).cpu()]
    batch = pool.submit(bgr, probs, labels) if pool is not None else None

    def collect() -> list:
        refined = np.stack(pool.result(batch) if pool is not None else crf_batch(bgr, probs, labels=labels))
        return [torch.from_numpy(part.astype(np.int64) if labels else part) for part in np.split(refined, len(maps))]

    return collect


def crf_pool(cfg: Config):
    """A CRF worker pool for the config: eval.crf_workers processes (-1: one per available CPU), or None, meaning
    serial, for 0."""
    from .crf import CrfPool

    n = worker_count(cfg.eval.crf_workers, "crf")
    return CrfPool(n, timeout=cfg.eval.crf_timeout) if n > 0 else None


@torch.no_grad()
def sample_features(backbone, dataset, max_rows: int = 200_000, batch_size: int = 32, workers: int = 0,
                    seed: int = 0, device=None, *, precision: str) -> torch.Tensor:
    """Backbone feature vectors [≤ max_rows, C] of `dataset`'s images (backbone in `precision`), an equal seeded
    share of each image's grid."""
    device = device or torch.device("cpu")
    per_image = max(1, math.ceil(max_rows / len(dataset)))
    generator = torch.Generator().manual_seed(seed)
    rows = []
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    for batch in tqdm(loader, desc="sampling features", leave=False):
        with autocast(device, precision):
            feats = backbone(batch["img"].to(device)).float().cpu()
        b, c, h, w = feats.shape
        flat = feats.permute(0, 2, 3, 1).reshape(b, h * w, c)
        for f in flat:
            pick = torch.randperm(h * w, generator=generator)[:per_image] if per_image < h * w else slice(None)
            rows.append(f[pick])
    return torch.cat(rows)[:max_rows]
