"""Evaluation as docs/protocol.md §7: flip TTA at feature resolution, bilinear upsampling, both probes, optional CRF.

Writes one JSON run record (config, metrics with and without CRF, per-class IoU, confusion matrices, timings,
versions, git commit; bootstrap intervals, the cluster numbers under other matching protocols, the spread of the
refitted cluster probe) atomically, and the per-image counts it was computed from in a sidecar (RunDir-style
name: stego.runs.counts_file), so any metric can be recomputed and resampled without the model.
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
from .inference import batch_code, crf_pool, crf_submit, probe_log_probs
from .io import writable_file
from .metrics import ConfusionMatrix, cluster_scores, linear_scores
from .refits import Refits, refit_probes
from .runs import counts_file
from .runtime import pick_device, set_tf32, set_threads, worker_count
from .counts import ImageCountsBuilder
from .uncertainty import cluster_spread, counts_json, intervals, protocol_of, protocols

log = logging.getLogger(__name__)


def score_split(model, backbone, dataset, cfg: Config, device=None, crf: bool | None = None,
                max_images: int | None = None, desc: str = "eval", should_stop=None, refits: Refits | None = None):
    """(metrics section, per-image counts by probe, summed confusions of the refits) over `dataset`, or None when
    `should_stop()` (asked before each batch) turns true first: a stop signal must not wait for a long pass.
    backbone None: `dataset` holds stored views (stego.data.features.CachedViews, with images when `crf`).

    Every probe (and after DenseCRF when `crf`) is counted per image (stego.counts.ImageCounts); the refitted
    cluster probes (stego.refits, without CRF) only in sum: {"restarts": [confusion], "overclustering": {K: ...}}.
    Both CRF maps of a batch go to the pool at once and are collected, as labels computed in the workers, after
    the next batch's network pass, so the pool works while the network runs; timings' "crf" is the time spent
    handing maps over and waiting for them.
    """
    device = device or next(model.parameters()).device
    crf = cfg.eval.crf if crf is None else crf
    limit = cfg.eval.max_images if max_images is None else max_images
    if limit:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    refits = refits or Refits()
    n_classes = model.n_classes
    n_clusters = model.cluster_probe.clusters.shape[0]
    probes = ["cluster", "linear"] + (["cluster_crf", "linear_crf"] if crf else [])
    builders = {p: ImageCountsBuilder(n_clusters if p.startswith("cluster") else n_classes, n_classes) for p in probes}
    restarts = [ConfusionMatrix(n_classes, n_classes) for _ in refits.restarts]
    over = {k: ConfusionMatrix(k, n_classes) for k in refits.overclustering}
    loader = DataLoader(dataset, batch_size=cfg.eval.batch_size, num_workers=worker_count(cfg.data.workers),
                        pin_memory=torch.device(device).type == "cuda")
    model.eval()
    timings = {"network": 0.0, "crf": 0.0}
    pool = crf_pool(cfg) if crf else None

    def count(labels, predictions, collect):
        """Add a batch's per-image counts, after waiting for its CRF maps (collect: None without CRF)."""
        if collect is not None:
            start = time.perf_counter()
            predictions["cluster_crf"], predictions["linear_crf"] = collect()
            timings["crf"] += time.perf_counter() - start
        truth = labels.numpy()
        for probe, pred in predictions.items():
            for p, t in zip(pred.cpu().numpy(), truth):
                builders[probe].add(p, t)

    in_flight = None  # the batch whose CRF maps the pool works on while the network runs the next
    try:
        for done, batch in enumerate(tqdm(loader, desc=desc, dynamic_ncols=True)):
            if should_stop is not None and should_stop():
                log.warning("%s interrupted on request after %d of %d batches", desc, done, len(loader))
                return None
            labels = batch["label"]
            start = time.perf_counter()
            code = batch_code(model, backbone, batch, labels.shape[-2:], cfg.train.precision, device)
            cluster_lp, linear_lp = probe_log_probs(model, code)
            predictions = {"cluster": cluster_lp.argmax(1), "linear": linear_lp.argmax(1)}
            refitted = [*zip(restarts, refits.restarts), *zip(over.values(), refits.overclustering.values())]
            with torch.no_grad():
                for matrix, probe in refitted:
                    matrix.update(probe.cosine(code).argmax(1), labels)
            timings["network"] += time.perf_counter() - start
            start = time.perf_counter()
            collect = crf_submit(batch["img"], [cluster_lp, linear_lp], pool, labels=True) if crf else None
            timings["crf"] += time.perf_counter() - start
            if in_flight is not None:
                count(*in_flight)
            in_flight = (labels, predictions, collect)
        if in_flight is not None:
            count(*in_flight)
    finally:
        if pool is not None:
            pool.close()
    counts = {probe: builder.build() for probe, builder in builders.items()}
    metrics = {}
    for probe, c in counts.items():
        scored = cluster_scores(c.total()) if probe.startswith("cluster") else linear_scores(c.total())
        metrics[probe] = {**scored.as_dict(), "protocol": protocol_of(probe)}
    metrics["images"] = len(dataset)
    metrics["seconds"] = timings
    refit_confusions = {"restarts": [m.counts.numpy() for m in restarts],
                        "overclustering": {k: m.counts.numpy() for k, m in over.items()}}
    return metrics, counts, refit_confusions


def evaluate(model, backbone, dataset, cfg: Config, device=None, crf: bool | None = None, max_images: int | None = None,
             desc: str = "eval", should_stop=None) -> dict | None:
    """The metrics section of `score_split` (scores of both probes, and after DenseCRF when `crf`), or None when
    stopped first."""
    scored = score_split(model, backbone, dataset, cfg, device, crf, max_images, desc, should_stop)
    return None if scored is None else scored[0]


def validator(cfg: Config):
    """validate(model, backbone, should_stop=None) -> validation cluster mIoU without CRF (None if stopped first),
    when the config validates during training."""
    if not cfg.train.val_every:
        return None
    val = build.val_dataset(cfg)
    views = []  # data.features=cached: the split's stored views, built on the first validation

    def validate(model, backbone, should_stop=None):
        if cfg.data.features == "cached" and not views:
            views.append(build.cached_views(cfg, backbone, val, next(model.parameters()).device))
        items, net = (views[0], None) if views else (val, backbone)
        metrics = evaluate(model, net, items, cfg, crf=False, desc="val", should_stop=should_stop)
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
    correspondence diagnostics beside it (stego.analysis; the record's "analysis" section names their files).
    With data.features=cached every pass reads stored features (built on first use), never the backbone."""
    started = time.perf_counter()
    out_path = writable_file(out_path, "--record")
    cfg, model, backbone = load_for_eval(checkpoint, cfg, trusted, overrides)
    dataset = build.val_dataset(cfg, split, model.n_classes)
    check_scorable(dataset, model.n_classes, cfg, split, checkpoint)
    device = pick_device(cfg.train.device)
    set_threads(cfg.train.threads)
    set_tf32(device, cfg.train.precision)
    model, backbone = model.to(device), backbone.to(device)
    refits = refit_probes(model, backbone, cfg, device)
    crf = cfg.eval.crf if crf is None else crf
    views = build.cached_views(cfg, backbone, dataset, device, split) if cfg.data.features == "cached" else None
    scored = dataset if views is None else (views.with_images() if crf else views)
    metrics, counts, refit_confusions = score_split(model, backbone if views is None else None, scored, cfg, device,
                                                    crf=crf, refits=refits)
    counts_path = counts_file(out_path)
    records.write(records.ImageCountsRecord(split=split, images=metrics["images"], probes=counts_json(counts)),
                  counts_path)
    record = records.EvalRecord(
        name=cfg.name, config=cfg.to_dict(), checkpoint=str(checkpoint), split=split, metrics=metrics,
        seconds=time.perf_counter() - started, seed=cfg.train.seed, image_counts=counts_path.name,
        intervals=intervals(counts, cfg.eval),
        protocols=protocols(counts, refit_confusions["overclustering"], cfg.eval.bootstrap_seed),
        cluster_spread=cluster_spread(refit_confusions["restarts"], refits.seeds, refits.skipped),
        **records.provenance())
    records.write(record, out_path)
    record.analysis = analyze_run(model, backbone if views is None else None,
                                  dataset if views is None else views.with_images(), cfg, metrics, out_path,
                                  checkpoint, crf="cluster_crf" in metrics)
    records.write(record, out_path)
    crf_part = metrics.get("cluster_crf")
    with_crf = f" | with CRF: cluster mIoU {100 * crf_part['miou']:.1f}" if crf_part else ""
    log.info("%s: cluster mIoU %.1f acc %.1f | linear mIoU %.1f acc %.1f%s", cfg.name,
             100 * metrics["cluster"]["miou"], 100 * metrics["cluster"]["accuracy"],
             100 * metrics["linear"]["miou"], 100 * metrics["linear"]["accuracy"], with_crf)
    return record
