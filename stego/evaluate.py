"""Evaluation as PROTOCOL §7: flip TTA at feature resolution, bilinear upsampling, both probes, optional CRF.

Writes one JSON run record (config, metrics with and without CRF, per-class IoU, confusion matrices, timings,
versions, git commit) atomically.
"""
import logging
import shlex
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import build
from .analysis import analyze_run
from .config import Config, from_dict, with_overrides
from .errors import StegoError
from .io import atomic_save_json, writable_file
from .metrics import ConfusionMatrix, cluster_scores, linear_scores
from .runtime import autocast, git_commit, pick_device, versions, worker_count

log = logging.getLogger(__name__)


@torch.no_grad()
def tta_code(model, backbone, images: torch.Tensor) -> torch.Tensor:
    """Code averaged over the image and its horizontal flip, at feature resolution (the release's TTA)."""
    device = images.device
    with autocast(device):
        feats = backbone(torch.cat([images, images.flip(dims=[3])])).float()
    code = model.head(feats)[1]
    b = images.shape[0]
    return (code[:b] + code[b:].flip(dims=[3])) / 2


@torch.no_grad()
def predict_log_probs(model, backbone, images: torch.Tensor, size) -> tuple[torch.Tensor, torch.Tensor]:
    """(cluster log-probs, linear log-probs) at `size`, from the bilinearly upsampled TTA code."""
    code = F.interpolate(tta_code(model, backbone, images), size=size, mode="bilinear", align_corners=False)
    return model.cluster_probe.log_probs(code), torch.log_softmax(model.linear_probe(code), dim=1)


def crf_refine(images: torch.Tensor, log_probs: torch.Tensor, pool=None) -> torch.Tensor:
    """DenseCRF marginals for a batch of normalised images and log-probs, through a CrfPool (None: serially)."""
    from .crf import crf_batch, image_to_bgr_uint8

    bgr = [image_to_bgr_uint8(img.numpy()) for img in images.cpu()]
    probs = [p.numpy() for p in log_probs.float().softmax(dim=1).cpu()]
    return torch.from_numpy(np.stack(pool.map(bgr, probs) if pool is not None else crf_batch(bgr, probs)))


def crf_pool(cfg: Config):
    """A CRF worker pool for the config: eval.crf_workers processes (-1: one per available CPU), or None, meaning
    serial, for 0."""
    from .crf import CrfPool

    n = worker_count(cfg.eval.crf_workers, "crf")
    return CrfPool(n, timeout=cfg.eval.crf_timeout) if n > 0 else None


def evaluate(model, backbone, dataset, cfg: Config, device=None, crf: bool | None = None, max_images: int | None = None,
             desc: str = "eval", should_stop=None) -> dict | None:
    """Scores of both probes over `dataset` (and after DenseCRF when `crf`); returns the metrics section, or None
    when `should_stop()` (asked before each batch) turns true first: a stop signal must not wait for a long pass."""
    device = device or next(model.parameters()).device
    crf = cfg.eval.crf if crf is None else crf
    limit = cfg.eval.max_images if max_images is None else max_images
    if limit:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    n_classes = model.n_classes
    n_clusters = model.cluster_probe.clusters.shape[0]
    confusions = {"cluster": ConfusionMatrix(n_clusters, n_classes), "linear": ConfusionMatrix(n_classes, n_classes)}
    if crf:
        confusions.update({"cluster_crf": ConfusionMatrix(n_clusters, n_classes),
                           "linear_crf": ConfusionMatrix(n_classes, n_classes)})
    loader = DataLoader(dataset, batch_size=cfg.eval.batch_size, num_workers=worker_count(cfg.data.workers),
                        pin_memory=torch.device(device).type == "cuda")
    model.eval()
    timings = {"network": 0.0, "crf": 0.0}
    pool = crf_pool(cfg) if crf else None
    try:
        for done, batch in enumerate(tqdm(loader, desc=desc, dynamic_ncols=True)):
            if should_stop is not None and should_stop():
                log.warning("%s interrupted on request after %d of %d batches", desc, done, len(loader))
                return None
            images = batch["img"].to(device, non_blocking=True)
            labels = batch["label"]
            start = time.perf_counter()
            cluster_lp, linear_lp = predict_log_probs(model, backbone, images, labels.shape[-2:])
            timings["network"] += time.perf_counter() - start
            confusions["cluster"].update(cluster_lp.argmax(1), labels)
            confusions["linear"].update(linear_lp.argmax(1), labels)
            if crf:
                start = time.perf_counter()
                confusions["cluster_crf"].update(crf_refine(images, cluster_lp, pool).argmax(1), labels)
                confusions["linear_crf"].update(crf_refine(images, linear_lp, pool).argmax(1), labels)
                timings["crf"] += time.perf_counter() - start
    finally:
        if pool is not None:
            pool.close()
    metrics = {}
    for name, confusion in confusions.items():
        scores = cluster_scores(confusion) if name.startswith("cluster") else linear_scores(confusion)
        metrics[name] = scores.as_dict()
    metrics["images"] = len(dataset)
    metrics["seconds"] = timings
    return metrics


def validator(cfg: Config):
    """validate(model, backbone, should_stop=None) -> validation cluster mIoU without CRF (None if stopped first),
    when the config validates during training."""
    if not cfg.train.val_every:
        return None
    val = build.val_dataset(cfg)

    def validate(model, backbone, should_stop=None):
        metrics = evaluate(model, backbone, val, cfg, crf=False, desc="val", should_stop=should_stop)
        return None if metrics is None else metrics["cluster"]["miou"]

    return validate


MODEL_SHAPE = ("backbone", "dim", "projection", "extra_clusters")
"""Model settings a checkpoint's weights are shaped by: evaluating it under other values cannot work."""


def load_for_eval(checkpoint, cfg: Config | None = None, trusted: bool = False, overrides=()):
    """(config, model, backbone) from this suite's checkpoint or an authors' released .ckpt.

    Without `cfg` the checkpoint's own config is used; `overrides` (section.key=value) then apply to it.
    """
    from .train import load_checkpoint

    path = Path(checkpoint)
    if path.suffix == ".ckpt":
        return released_for_eval(path, cfg, trusted, overrides)
    state = load_checkpoint(path)
    stored = from_dict(state["config"], source=str(path))
    cfg = cfg or with_overrides(stored, list(overrides))
    shaping = [f"model.{k}={getattr(cfg.model, k)!r} (trained with {getattr(stored.model, k)!r})"
               for k in MODEL_SHAPE if getattr(cfg.model, k) != getattr(stored.model, k)]
    if shaping:
        raise StegoError(f"{path} does not fit the given config: {'; '.join(shaping)}; evaluate it without a preset "
                         f"(its own config is used) or with the model settings it was trained with")
    torch.manual_seed(cfg.train.seed)  # the same random-init backbone as in training (tests, toy runs)
    backbone = build.backbone_for(cfg)
    model = build.model_for(cfg, state["in_dim"], state["n_classes"])
    model.load_state_dict(state["model"])
    return cfg, model, backbone


def released_for_eval(path: Path, cfg: Config | None, trusted: bool, overrides=()):
    """(config, model, backbone) from an authors' released Lightning checkpoint; its stored config decides the
    model, a given config (preset) only supplies data location and evaluation settings."""
    from .checkpoint import load_released_checkpoint
    from .model import Stego

    released = load_released_checkpoint(path, trusted=trusted)
    sections = {section: dict(values) for section, values in released.config_overrides.items()}
    model_keys = {k: v for k, v in sections.pop("model").items() if k not in ("n_classes", "n_clusters")}
    stored = from_dict({**sections, "model": model_keys, "name": path.stem, "follows": "release"}, source=str(path))
    if cfg is not None:
        cfg.model, cfg.loss = stored.model, stored.loss
        cfg.name = cfg.name if cfg.name != "custom" else path.stem
    else:
        cfg = with_overrides(stored, list(overrides))
    head, cluster_probe, linear_probe = released.build_modules()
    model = Stego(released.in_dim, cfg.model.dim, released.n_classes, cfg.model.projection)
    model.head, model.cluster_probe, model.linear_probe = head, cluster_probe, linear_probe
    backbone = build.backbone_for(cfg, state_dict=released.backbone_state)
    return cfg, model, backbone


def check_scorable(dataset, n_classes: int, cfg: Config, split: str, checkpoint) -> None:
    """Refuse, before any pass, a split without labels or with another number of classes than the probes."""
    if not any(dataset.label_path(i) is not None for i in range(len(dataset))):
        raise StegoError(f"split {split!r} of {cfg.data.dataset} under {cfg.data.root} has no labels: evaluation "
                         f"scores predictions against labels; segment unlabelled images with `stego predict "
                         f"--checkpoint {shlex.quote(str(checkpoint))} --images DIR --out OUT`")
    if dataset.n_classes and dataset.n_classes != n_classes:
        raise StegoError(f"the checkpoint's probes predict {n_classes} classes but {cfg.data.dataset} under "
                         f"{cfg.data.root} has {dataset.n_classes}; evaluate it on the data it was trained for")


def run_eval(cfg: Config | None, checkpoint, out_path, trusted: bool = False, split: str = "val",
             crf: bool | None = None, overrides=()) -> dict:
    """Evaluate a checkpoint on the config's validation split and write the run record to `out_path`, then the
    correspondence diagnostics beside it (stego.analysis; the record's "analysis" section names their files)."""
    started = time.perf_counter()
    out_path = writable_file(out_path, "--record")
    cfg, model, backbone = load_for_eval(checkpoint, cfg, trusted, overrides)
    dataset = build.val_dataset(cfg, split)
    check_scorable(dataset, model.n_classes, cfg, split, checkpoint)
    device = pick_device(cfg.train.device)
    model, backbone = model.to(device), backbone.to(device)
    metrics = evaluate(model, backbone, dataset, cfg, device, crf=crf)
    record = {"kind": "eval", "name": cfg.name, "config": cfg.to_dict(), "checkpoint": str(checkpoint),
              "split": split, "metrics": metrics, "seconds": time.perf_counter() - started,
              "versions": versions(), "git_commit": git_commit(), "seed": cfg.train.seed}
    atomic_save_json(record, out_path)
    record["analysis"] = analyze_run(model, backbone, dataset, cfg, metrics, out_path, checkpoint,
                                     crf="cluster_crf" in metrics)
    atomic_save_json(record, out_path)
    log.info("%s: cluster mIoU %.1f acc %.1f | linear mIoU %.1f acc %.1f%s", cfg.name,
             100 * metrics["cluster"]["miou"], 100 * metrics["cluster"]["accuracy"],
             100 * metrics["linear"]["miou"], 100 * metrics["linear"]["accuracy"],
             f" | with CRF: cluster mIoU {100 * metrics['cluster_crf']['miou']:.1f}" if "cluster_crf" in metrics else "")
    return record
