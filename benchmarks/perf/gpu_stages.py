"""The stages the GPU check measures (benchmarks/perf/gpu_check.py), each on synthetic inputs through the product's
own code: a training step (`stego.train.train_step`), evaluation's prediction (`stego.inference.predict_log_probs`),
KNN features and top-k (`stego.data.knn`), DenseCRF in a warm pool (`stego.crf.CrfPool`), each beside its bound.
Training, evaluation and KNN features run in a given precision through the product's own setting (train.precision:
`TrainConfig(precision=...)`, its TF32 policy set by `stego.runtime.set_tf32`)."""
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from stego.config import PRECISIONS, LossConfig, TrainConfig
from stego.crf import CrfPool, dense_crf
from stego.data.knn import embed_dataset, topk_cosine
from stego.inference import predict_log_probs
from stego.loss import CorrespondenceLoss
from stego.model import Stego
from stego.runtime import set_tf32
from stego.train import train_step

from .hardware import backbone_flops, rate, synchronize, timed


@dataclass(frozen=True)
class Sizes:
    """What one check measures: the paper's sizes by default, `TINY` for a CPU smoke run."""

    batch: int = 32
    train_res: int = 224
    eval_res: int = 320
    eval_batch: int = 8
    embed_batch: int = 64
    embed_batches: int = 10
    knn_n: int = 250_000
    knn_dim: int = 768
    knn_k: int = 30
    crf_res: int = 320
    crf_per_worker: int = 2
    n_classes: int = 27
    min_seconds: float = 3.0
    """Each rate is timed over at least this long (and at least `min_iters` calls) after `warmup` calls."""
    warmup: int = 3
    min_iters: int = 5
    matmul_seconds: float = 1.0
    max_crf_workers: int | None = None


DEFAULT_PRECISION = TrainConfig().precision
"""What stego runs in unless told otherwise (train.precision's default); the projections use its rates."""


def measured_precisions(device) -> tuple:
    """Every precision on CUDA; on a CPU the default only (bf16 autocast there is a smoke run, not a speed)."""
    return PRECISIONS if device.type == "cuda" else (DEFAULT_PRECISION,)


def arch_name(arch: str) -> str:
    return {"vit_s8": "ViT-S/8", "vit_b8": "ViT-B/8", "r50": "ResNet-50"}[arch]


def count_syncs(fn, device) -> dict | None:
    """Host–device synchronisations made by one call of `fn` on CUDA (torch's sync debug mode), with where."""
    if device.type != "cuda":
        return None
    synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    found = [w for w in caught if "synchroniz" in str(w.message)]
    return {"count": len(found), "where": sorted({f"{Path(w.filename).name}:{w.lineno}" for w in found})}


def synthetic_batch(sizes: Sizes, device, generator) -> dict:
    """A training batch as the loader gives it: anchors, KNN partners, labels with some ignore pixels."""
    shape = (sizes.batch, 3, sizes.train_res, sizes.train_res)
    return {"img": torch.randn(shape, generator=generator).to(device),
            "img_pos": torch.randn(shape, generator=generator).to(device),
            "label": torch.randint(-1, sizes.n_classes, (sizes.batch, sizes.train_res, sizes.train_res),
                                   generator=generator).to(device)}


def bench_train(backbone, arch: str, mode: str, kind: str, sizes: Sizes, device, rates: dict) -> dict:
    """Iterations/s of `train_step` for one architecture, precision and kind, against its matmul bound."""
    torch.manual_seed(0)
    raw = kind == "raw"
    t = TrainConfig(precision=mode)
    set_tf32(device, t.precision)
    model = Stego(backbone.dim, 90, sizes.n_classes, "none" if raw else "nonlinear").to(device).train()
    optimizers = [torch.optim.Adam(model.linear_probe.parameters(), lr=t.probe_lr),
                  torch.optim.Adam(model.cluster_probe.parameters(), lr=t.probe_lr)]
    if not raw:
        optimizers.append(torch.optim.Adam(model.head.parameters(), lr=t.lr))
    loss_fn = CorrespondenceLoss(LossConfig())
    batch = synthetic_batch(sizes, device, torch.Generator().manual_seed(0))
    generator = torch.Generator(device=device).manual_seed(0)

    def step():
        train_step(batch, backbone, model, loss_fn, optimizers, device, generator, not raw, t.precision)

    per_s, calls = rate(step, device, sizes.warmup, sizes.min_iters, min_seconds=sizes.min_seconds)
    syncs = count_syncs(step, device)
    images = sizes.batch * (1 if raw else 2)
    flops = images * backbone_flops(backbone, sizes.train_res, sizes.train_res)
    bound = rates[mode] / flops
    return {"stage": "train", "arch": arch, "precision": mode, "kind": kind, "batch": sizes.batch,
            "res": sizes.train_res, "rate": per_s, "unit": "it/s", "bound": bound, "iterations": calls,
            "backbone_flops_per_iteration": flops, "anchor_images_per_s": per_s * sizes.batch,
            "syncs_per_step": syncs,
            "config": f"{arch_name(arch)} {mode} {kind} batch {sizes.batch} {sizes.train_res}²"}


def argmax_agreement(model, backbone, images, size, mode: str) -> float:
    """Share of pixels whose cluster and linear predictions in `mode` equal the fp32 ones (1.0 for fp32)."""
    set_tf32(images.device, "fp32")
    reference = predict_log_probs(model, backbone, images, size, "fp32")
    set_tf32(images.device, mode)
    got = predict_log_probs(model, backbone, images, size, mode)
    same = [(a.argmax(1) == b.argmax(1)).float().mean().item() for a, b in zip(reference, got)]
    return sum(same) / len(same)


def bench_eval(backbone, arch: str, mode: str, sizes: Sizes, device, rates: dict) -> dict:
    """Images/s of `predict_log_probs` (flip TTA, upsampling, both probes) at the evaluation size in `mode`, and
    how many of its pixel predictions agree with fp32's."""
    set_tf32(device, mode)
    torch.manual_seed(0)
    model = Stego(backbone.dim, 90, sizes.n_classes).to(device).eval()
    shape = (sizes.eval_batch, 3, sizes.eval_res, sizes.eval_res)
    images = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)
    size = (sizes.eval_res, sizes.eval_res)
    per_s, calls = rate(lambda: predict_log_probs(model, backbone, images, size, mode), device,
                        sizes.warmup, sizes.min_iters, min_seconds=sizes.min_seconds)
    flops = 2 * backbone_flops(backbone, sizes.eval_res, sizes.eval_res)
    agreement = argmax_agreement(model, backbone, images, size, mode)
    return {"stage": "eval", "arch": arch, "precision": mode, "res": sizes.eval_res, "batch": sizes.eval_batch,
            "rate": per_s * sizes.eval_batch, "unit": "img/s", "bound": rates[mode] / flops, "batches": calls,
            "backbone_flops_per_image": flops, "agreement_with_fp32": agreement,
            "config": f"{arch_name(arch)} {mode} {sizes.eval_res}² flip TTA, {100 * agreement:.2f}% of pixels as "
                      f"fp32"}


class _InMemory(Dataset):
    """Synthetic normalised images held in memory: embedding speed without file decoding."""

    def __init__(self, n: int, res: int):
        self.images = torch.randn(n, 3, res, res, generator=torch.Generator().manual_seed(2))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"img": self.images[i]}


def bench_embed(backbone, arch: str, mode: str, sizes: Sizes, device, rates: dict) -> dict:
    """Images/s of `embed_dataset` (KNN features: backbone in `mode`, pooled, normalised) from memory."""
    set_tf32(device, mode)
    data = _InMemory(sizes.embed_batch * sizes.embed_batches, sizes.train_res)
    embed_dataset(backbone, torch.utils.data.Subset(data, range(sizes.embed_batch)), sizes.embed_batch, device,
                  precision=mode)
    seconds = timed(lambda: embed_dataset(backbone, data, sizes.embed_batch, device, precision=mode), device)
    flops = backbone_flops(backbone, sizes.train_res, sizes.train_res)
    return {"stage": "embed", "arch": arch, "precision": mode, "res": sizes.train_res, "rate": len(data) / seconds,
            "unit": "img/s", "bound": rates[mode] / flops, "images": len(data),
            "config": f"{arch_name(arch)} {mode} {sizes.train_res}² KNN features, from memory"}


def bench_knn(sizes: Sizes, device, rates: dict) -> dict:
    """Seconds of `topk_cosine` over knn_n random features on the device (the release's COCO five-crop scale), in
    true fp32 as mining runs it."""
    set_tf32(device, "fp32")
    feats = torch.randn(sizes.knn_n, sizes.knn_dim, generator=torch.Generator().manual_seed(3)).to(device)
    topk_cosine(feats[: min(4096, sizes.knn_n)], sizes.knn_k, device=device)
    seconds = timed(lambda: topk_cosine(feats, sizes.knn_k, device=device), device)
    flops = 2 * sizes.knn_n**2 * sizes.knn_dim
    return {"stage": "knn", "n": sizes.knn_n, "dim": sizes.knn_dim, "k": sizes.knn_k, "precision": "fp32",
            "seconds": seconds, "rate": sizes.knn_n / seconds, "unit": "queries/s",
            "bound": rates["fp32"] / flops * sizes.knn_n, "flops": flops,
            "config": f"top-{sizes.knn_k} of {sizes.knn_n:,} × {sizes.knn_dim}, fp32"}


def synthetic_crf_inputs(n: int, size: int, labels: int, seed: int = 0) -> list:
    """n (BGR uint8 image, softmax probs [labels, size, size]) pairs: piecewise-smooth images (as photos are, so
    the bilateral lattice is not filled with noise) and smooth random probabilities."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    cells = np.minimum(np.arange(size) * 4 // size, 3)
    out = []
    for _ in range(n):
        blocks = rng.integers(0, 256, (4, 4, 3))[cells[:, None], cells[None, :]]
        shade = (40 * np.sin(6 * x + rng.uniform(0, 6)) * np.cos(4 * y))[..., None]
        image = np.clip(blocks + shade + rng.normal(0, 4, blocks.shape), 0, 255).astype(np.uint8)
        grid = np.minimum(np.arange(size) * 8 // size, 7)
        logits = rng.normal(0, 2, (labels, 8, 8))[:, grid[:, None], grid[None, :]]
        probs = np.exp(logits - logits.max(0))
        out.append((np.ascontiguousarray(image), (probs / probs.sum(0)).astype(np.float32)))
    return out


def bench_crf(sizes: Sizes) -> dict:
    """Images/s of DenseCRF with one worker per core (a warm `CrfPool`, as an evaluation keeps it), against
    the bound of every core refining at the serial rate."""
    workers = os.cpu_count() or 1
    if sizes.max_crf_workers:
        workers = min(workers, sizes.max_crf_workers)
    pairs = synthetic_crf_inputs(workers * sizes.crf_per_worker, sizes.crf_res, sizes.n_classes)
    images, probs = [p[0] for p in pairs], [p[1] for p in pairs]
    serial = 1 / timed(lambda: dense_crf(images[0], probs[0]))
    with CrfPool(workers) as pool:
        started = time.perf_counter()
        pool.map(images[:workers], probs[:workers])
        warm_up = time.perf_counter() - started
        seconds = timed(lambda: pool.map(images, probs))
    return {"stage": "crf", "workers": workers, "res": sizes.crf_res, "labels": sizes.n_classes,
            "rate": len(images) / seconds, "unit": "img/s", "bound": workers * serial, "serial_rate": serial,
            "pool_start_and_first_map_s": warm_up,
            "config": f"{sizes.crf_res}², {sizes.n_classes} labels, {workers} workers"}
