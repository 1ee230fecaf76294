"""Evaluation with DenseCRF: the overlapped loop of stego.evaluate.score_split against the sequential one it replaced.

    python -m benchmarks.perf.crf_overlap [--images 16] [--batch 8] [--size 320] [--workers 2] [--rounds 1]

The sequential loop (`sequential_score`, the former score_split written out here as the reference) ran the network
on a batch, then refined its cluster map and its linear map one after the other, each waiting for the pool; the
overlapped one hands both maps to the pool at once and collects them after the next batch's network pass. Both run
on synthetic 320² scenes of 27 classes with a random-init model on the filterbank backbone (cheap on the CPU, so
the main process takes about what a GPU node's would), and give the same counts bit for bit. Printed per loop:
images/s, the CRF pool's occupancy (the share of worker time that had an item: CrfPool.busy_s ÷ workers × wall;
on cores of its own that is their utilisation, and it does not depend on other jobs taking the cores) and the whole
machine's busy share (/proc/stat, other jobs included), the load average; then the utilisation projected for a
16-core node from the serial CPU time of a map and the main process's CPU time per batch (model in `project`).
"""
import argparse
import os
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch.utils.data import DataLoader

from stego import build
from stego.config import Config, from_dict
from stego.crf import dense_crf, image_to_bgr_uint8
from stego.data.synthetic import SceneSpec, make_scenes
from stego.counts import ImageCountsBuilder
from stego.evaluate import score_split
from stego.inference import crf_pool, crf_refine, probe_log_probs, upsampled_code
from stego.metrics import ConfusionMatrix
from stego.refits import Refits

from .measure import busy_fraction, cpu_times


def sequential_score(model, backbone, dataset, cfg: Config, refits: Refits | None = None, make_pool=crf_pool):
    """(per-image counts by probe, refit confusions) of the sequential loop: each batch's network pass, then its
    cluster and linear CRF maps one after the other (the evaluation loop before the overlap)."""
    refits = refits or Refits()
    n_classes, n_clusters = model.n_classes, model.cluster_probe.clusters.shape[0]
    probes = ["cluster", "linear"] + (["cluster_crf", "linear_crf"] if cfg.eval.crf else [])
    builders = {p: ImageCountsBuilder(n_clusters if p.startswith("cluster") else n_classes, n_classes) for p in probes}
    restarts = [ConfusionMatrix(n_classes, n_classes) for _ in refits.restarts]
    over = {k: ConfusionMatrix(k, n_classes) for k in refits.overclustering}
    loader = DataLoader(dataset, batch_size=cfg.eval.batch_size, num_workers=0)
    model.eval()
    pool = make_pool(cfg) if cfg.eval.crf else None
    try:
        for batch in loader:
            images, labels = batch["img"], batch["label"]
            code = upsampled_code(model, backbone, images, labels.shape[-2:], cfg.train.precision)
            cluster_lp, linear_lp = probe_log_probs(model, code)
            predictions = {"cluster": cluster_lp.argmax(1), "linear": linear_lp.argmax(1)}
            refitted = [*zip(restarts, refits.restarts), *zip(over.values(), refits.overclustering.values())]
            with torch.no_grad():
                for matrix, probe in refitted:
                    matrix.update(probe.cosine(code).argmax(1), labels)
            if cfg.eval.crf:
                predictions["cluster_crf"] = crf_refine(images, cluster_lp, pool).argmax(1)
                predictions["linear_crf"] = crf_refine(images, linear_lp, pool).argmax(1)
            for probe, pred in predictions.items():
                for p, t in zip(pred.numpy(), labels.numpy()):
                    builders[probe].add(p, t)
    finally:
        if pool is not None:
            pool.close()
    confusions = {"restarts": [m.counts.numpy() for m in restarts],
                  "overclustering": {k: m.counts.numpy() for k, m in over.items()}}
    return {p: b.build() for p, b in builders.items()}, confusions


def scene_setup(root, images: int, size: int, batch: int, workers: int, seed: int = 0):
    """(model, backbone, val dataset, config): synthetic scenes of `size`² with 27 classes (COCO-Stuff-27's CRF
    labels), a random-init head and probes on the filterbank backbone, evaluated at `size` with DenseCRF in
    `workers` processes (0: serially)."""
    scenes = make_scenes(Path(root) / "scenes", SceneSpec(n_classes=27, n_train=2, n_val=images, size=size),
                         seed=seed)
    cfg = from_dict({
        "name": "crf-overlap",
        "data": {"dataset": "synthetic", "root": str(scenes), "crop": "none", "res": size, "workers": 0},
        "model": {"backbone": "filterbank", "weights": "random", "dim": 16},
        "train": {"seed": seed},
        "eval": {"res": size, "crf": True, "crf_workers": workers, "batch_size": batch, "cluster_restarts": 0},
    })
    backbone = build.backbone_for(cfg)
    dataset = build.val_dataset(cfg)
    torch.manual_seed(seed)
    model = build.model_for(cfg, backbone.dim, dataset.n_classes).eval()
    return model, backbone, dataset, cfg


def timed(loop, cfg: Config) -> dict:
    """Run loop(make_pool) once: its wall time without the pool's start (workers are started and warmed before the
    loop gets the pool, as in a long evaluation), this process's CPU time, the pool's occupancy (CrfPool.busy_s ÷
    workers × wall), the machine's busy share (/proc/stat, other jobs included) and the load average."""
    pools, starting = [], []

    def make_pool(c):
        begin = time.perf_counter()
        pools.append(crf_pool(c))
        image, probs = np.zeros((8, 8, 3), np.uint8), np.full((2, 8, 8), 0.5, np.float32)
        pools[-1].map([image] * c.eval.crf_workers, [probs] * c.eval.crf_workers)
        pools[-1].busy_s = 0.0
        starting.append(time.perf_counter() - begin)
        return pools[-1]

    load, cores, cpu0, start = os.getloadavg()[0], cpu_times(), time.process_time(), time.perf_counter()
    loop(make_pool)
    wall = time.perf_counter() - start - sum(starting)
    return {"wall_s": wall, "main_cpu_s": time.process_time() - cpu0, "load": (load, os.getloadavg()[0]),
            "machine_busy": busy_fraction(cores, cpu_times()),
            "occupancy": sum(p.busy_s for p in pools) / (cfg.eval.crf_workers * wall)}


def crf_item_cpu(dataset, n_classes: int, items: int = 3) -> float:
    """CPU seconds of one `dense_crf` map of the dataset's images (random 27-label probabilities), in this process."""
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(items):
        img = dataset[i]["img"]
        logits = rng.normal(0, 2, (n_classes, *img.shape[1:]))
        e = np.exp(logits - logits.max(axis=0))
        pairs.append((image_to_bgr_uint8(img), (e / e.sum(axis=0)).astype(np.float32)))
    start = time.process_time()
    for image, probs in pairs:
        dense_crf(image, probs)
    return (time.process_time() - start) / items


def project(t_item: float, t_main: float, batch: int, workers: int) -> dict:
    """Share of `workers` cores the CRF pool keeps busy, per batch of `batch` images (two maps each):
    sequential: t_main, then each map in ceil(batch / workers) rounds of t_item; overlapped: the longer of the
    pool's work spread over the workers and the main process's t_main (network, hand-over, counting)."""
    work = 2 * batch * t_item
    sequential = t_main + 2 * -(-batch // workers) * t_item
    overlapped = max(work / workers, t_main)
    return {"sequential": work / (workers * sequential), "overlapped": work / (workers * overlapped)}


def _network_only(model, backbone, dataset, cfg) -> float:
    """CPU seconds of the network passes alone over `dataset` (to leave them out of the main process's share)."""
    loader = DataLoader(dataset, batch_size=cfg.eval.batch_size, num_workers=0)
    batches = list(loader)
    start = time.process_time()
    for batch in batches:
        probe_log_probs(model, upsampled_code(model, backbone, batch["img"], batch["label"].shape[-2:], "fp32"))
    return time.process_time() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--rounds", type=int, default=1, help="alternating runs of each loop")
    p.add_argument("--node-cores", type=int, default=16)
    p.add_argument("--gpu-network-s", type=float, default=0.12,
                   help="network pass per batch on the node's GPU (default: ViT-B/8 at 320 with TTA, batch 8, fp32)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model, backbone, dataset, cfg = scene_setup(tmp, args.images, args.size, args.batch, args.workers)

        def overlapped(make_pool):
            with mock.patch("stego.evaluate.crf_pool", make_pool):
                score_split(model, backbone, dataset, cfg)

        loops = {"sequential": lambda make_pool: sequential_score(model, backbone, dataset, cfg, make_pool=make_pool),
                 "overlapped": overlapped}
        runs = {name: [] for name in loops}
        for _ in range(args.rounds):
            for name, loop in loops.items():
                runs[name].append(timed(loop, cfg))
        network_cpu = _network_only(model, backbone, dataset, cfg)
        t_item = crf_item_cpu(dataset, model.n_classes)
    print(f"{args.images} images {args.size}², 27 labels, batch {args.batch}, {args.workers} CRF workers, "
          f"{os.cpu_count()} cores; torch 1 thread in the main process")
    print("| loop | images/s | CRF pool occupancy | machine busy | load 1 min |\n|---|---:|---:|---:|---|")
    for name, rs in runs.items():
        for r in rs:
            print(f"| {name} | {args.images / r['wall_s']:.3f} | {r['occupancy']:.0%} | {r['machine_busy']:.0%} "
                  f"| {r['load'][0]:.1f}–{r['load'][1]:.1f} |")
    best = min(runs["overlapped"], key=lambda r: r["wall_s"])
    batches = -(-args.images // args.batch)
    main_s = (best["main_cpu_s"] - network_cpu) / batches
    t_main = main_s + args.gpu_network_s
    print(f"\nper CRF map {t_item:.2f} s CPU (serial, this process); main process per batch besides the network "
          f"{main_s:.2f} s CPU (loading, hand-over, counting), + {args.gpu_network_s} s of GPU network on the node")
    for w in (args.workers, args.node_cores):
        proj = project(t_item, t_main, args.batch, w)
        print(f"projected CRF-pool utilisation, {w} workers, batch {args.batch}: sequential {proj['sequential']:.0%}, "
              f"overlapped {proj['overlapped']:.0%}")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
