"""Measure the feature cache on this machine: iteration time from images and from the store, the store's write
time and size, and re-scoring the trained checkpoint (`run_eval` without CRF: refits, scores, intervals, analysis)
from images and from the stores, for the toy world (synthetic_demo: filter bank on five-crops at 48 px) and for a
random-init ViT-S/8 at 224 (where the backbone dominates). Prints a markdown table (docs/performance.md).

    python -m stego.features_bench --out /tmp/feature-bench [--iterations 30] [--vit-iterations 4]
"""
import argparse
import os
import platform
import time
from pathlib import Path

from . import build, records
from .config import load_config, with_overrides
from .data.fivecrop import five_crop
from .data.synthetic import SceneSpec, make_scenes
from .demo import SCENES
from .evaluate import run_eval
from .runs import RunDir
from .runtime import pick_device, set_threads
from .train import train


def _per_iteration(run: Path) -> float:
    """Seconds per training iteration of the run in `run` (its summary's loop time; KNN mining excluded)."""
    summary = records.read(RunDir(run).summary)
    return summary.seconds / summary.iterations


def measure(name: str, cfg, out: Path, iterations: int) -> dict:
    """Build the store (timed), then train `iterations` from images and from the store; one table row."""
    cfg = with_overrides(cfg, [f"train.iterations={iterations}", f"train.checkpoint_every={iterations}",
                               "train.hist_every=0", "train.val_every=0"])
    cached = with_overrides(cfg, ["data.features=cached"])
    set_threads(cfg.train.threads)
    device = pick_device(cfg.train.device)
    dataset = build.train_dataset(cfg)
    began = time.perf_counter()
    store = build.cached_items(cached, build.backbone_for(cfg), dataset, device).store
    write = time.perf_counter() - began
    size = sum(f.stat().st_size for f in store.folder.iterdir())
    train(cfg, out / f"{name}-images")  # mines the KNN table first (outside the timed loop)
    train(cached, out / f"{name}-cached")
    images, from_cache = _per_iteration(out / f"{name}-images"), _per_iteration(out / f"{name}-cached")
    checkpoint, seconds = RunDir(out / f"{name}-images").checkpoint, []
    for i, extra in enumerate(([], ["data.features=cached"], ["data.features=cached"])):  # the first cached one
        began = time.perf_counter()                                                        # builds the val store
        run_eval(None, checkpoint, out / f"{name}-eval{i}.json", overrides=["eval.crf=false", *extra])
        seconds.append(time.perf_counter() - began)
    return dict(name=name, items=len(store), shape=tuple(store.index["shape"]), batch=cfg.train.batch_size,
                images=images, cached=from_cache, write=write, size=size, eval=seconds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="scratch folder (scenes, stores, runs)")
    parser.add_argument("--iterations", type=int, default=30, help="toy-world iterations per run")
    parser.add_argument("--vit-iterations", type=int, default=4, help="ViT-S/8 iterations per run")
    args = parser.parse_args(argv)
    rows = []
    toy = load_config("synthetic_demo", [f"data.root={args.out / 'toy'}"])
    make_scenes(toy.data.root, SCENES, 0)
    five_crop("imagefolder", toy.data.root, "train", toy.data.crop_ratio, workers=1)
    rows.append(measure("toy world (synthetic_demo, filterbank, five-crops at 48)", toy, args.out, args.iterations))
    vit = with_overrides(toy, [f"data.root={args.out / 'vit'}", "data.crop=none", "data.res=224", "data.knn_k=8",
                               "model.backbone=dino_vits8", "train.batch_size=8", "train.threads=0"])
    make_scenes(vit.data.root, SceneSpec(size=96, n_train=32, n_val=4), 0)
    rows.append(measure("random-init ViT-S/8 at 224", vit, args.out, args.vit_iterations))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)\n")
    print("| world | items | features per item | batch | s/iteration, images | s/iteration, cached | ratio "
          "| store write | store size (float16) | re-score, images | re-score, cached (first: builds the val store) "
          "| ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        images_s, first_s, cached_s = r["eval"]
        print(f"| {r['name']} | {r['items']} | {' × '.join(map(str, r['shape']))} | {r['batch']} | {r['images']:.3f} "
              f"| {r['cached']:.3f} | {r['images'] / r['cached']:.1f}× | {r['write']:.1f} s "
              f"| {r['size'] / 2**20:.1f} MiB | {images_s:.1f} s | {cached_s:.1f} s ({first_s:.1f} s) "
              f"| {images_s / cached_s:.1f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
