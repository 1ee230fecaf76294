"""Evaluation as docs/protocol.md §7: flip TTA at feature resolution, bilinear upsampling, both probes, optional CRF.

Writes one JSON run record (config, metrics with and without CRF, per-class IoU, confusion matrices, timings,
versions, git commit) atomically.
"""
import logging
import shlex
import time

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import build, records
from .analysis import analyze_run
from .checkpoint import load_for_eval
from .config import Config
from .errors import StegoError
from .inference import crf_pool, crf_refine, predict_log_probs
from .io import writable_file
from .metrics import ConfusionMatrix, cluster_scores, linear_scores
from .runtime import pick_device, set_tf32, worker_count

log = logging.getLogger(__name__)


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
            cluster_lp, linear_lp = predict_log_probs(model, backbone, images, labels.shape[-2:],
                                                      cfg.train.precision)
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
             crf: bool | None = None, overrides=()) -> records.EvalRecord:
    """Evaluate a checkpoint on the config's validation split and write the run record to `out_path`, then the
    correspondence diagnostics beside it (stego.analysis; the record's "analysis" section names their files)."""
    started = time.perf_counter()
    out_path = writable_file(out_path, "--record")
    cfg, model, backbone = load_for_eval(checkpoint, cfg, trusted, overrides)
    dataset = build.val_dataset(cfg, split, model.n_classes)
    check_scorable(dataset, model.n_classes, cfg, split, checkpoint)
    device = pick_device(cfg.train.device)
    set_tf32(device, cfg.train.precision)
    model, backbone = model.to(device), backbone.to(device)
    metrics = evaluate(model, backbone, dataset, cfg, device, crf=crf)
    record = records.EvalRecord(name=cfg.name, config=cfg.to_dict(), checkpoint=str(checkpoint), split=split,
                                metrics=metrics, seconds=time.perf_counter() - started, seed=cfg.train.seed,
                                **records.provenance())
    records.write(record, out_path)
    record.analysis = analyze_run(model, backbone, dataset, cfg, metrics, out_path, checkpoint,
                                  crf="cluster_crf" in metrics)
    records.write(record, out_path)
    log.info("%s: cluster mIoU %.1f acc %.1f | linear mIoU %.1f acc %.1f%s", cfg.name,
             100 * metrics["cluster"]["miou"], 100 * metrics["cluster"]["accuracy"],
             100 * metrics["linear"]["miou"], 100 * metrics["linear"]["accuracy"],
             f" | with CRF: cluster mIoU {100 * metrics['cluster_crf']['miou']:.1f}" if "cluster_crf" in metrics else "")
    return record
