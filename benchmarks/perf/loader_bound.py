"""The data pipeline's bound: images per second that one DataLoader worker turns out, for training and evaluation.

    python -m benchmarks.perf.loader_bound --coco-root DATA [--cityscapes-root DATA] [--items 64]

A worker runs the dataset's `__getitem__` on one thread, so its rate is the items per CPU-second of that call in a
process with torch on one thread (CPU time, not wall: on a shared machine the waits are other jobs'). Measured on
data roots in the real layout (real data, or the rehearsal's synthetic files: benchmarks/perf/rehearsal.py):

- training: a KNN pair of five-crops (JPEG + PNG label → 224 tensors, twice), as `stego.data.pairs.KnnPairs`
  reads it; the partner is a random other crop (which one does not change the cost);
- evaluation: a validation image at eval.res 320 (COCO val JPEGs; Cityscapes 2048×1024 PNG frames).

Printed: ms per image, images/s per worker, and the workers that feed the issue's 1,280 training images/s (20
iterations/s × batch 32 × 2).
"""
import argparse
import os
import time

import numpy as np
import torch

from stego import build
from stego.config import load_config

TRAIN_RATE = 20 * 32 * 2
"""Images/s training must be fed at the issue's target: 20 iterations/s of 32 anchors and their 32 partners."""
PRESETS = {"cocostuff27": "cocostuff27_release", "cityscapes27": "cityscapes27_release"}


def cpu_per_call(fn, items) -> float:
    """CPU seconds per call of fn(item) over `items` (after one warm-up call), this process only."""
    fn(items[0])
    start = time.process_time()
    for item in items:
        fn(item)
    return (time.process_time() - start) / len(items)


def rows_for(dataset: str, root, items: int, seed: int = 0) -> list[dict]:
    """The training-pair and evaluation rows of one dataset's data root."""
    cfg = load_config(PRESETS[dataset], [f"data.root={root}", "model.backbone=filterbank", "model.weights=random"])
    rng = np.random.default_rng(seed)
    rows = []
    train = build.train_dataset(cfg)
    picks = [(int(i), int(j)) for i, j in rng.integers(0, len(train), (min(items, len(train)), 2))]
    pair = cpu_per_call(lambda ij: (train[ij[0]], train[ij[1]]), picks)
    rows.append({"dataset": dataset, "input": f"training pair, five-crop → {cfg.data.res}", "images_per_call": 2,
                 "seconds": pair, "n": len(picks)})
    val = build.val_dataset(cfg)
    picks = [int(i) for i in rng.permutation(len(val))[:items]]
    one = cpu_per_call(lambda i: val[i], picks)
    shape = tuple(val[picks[0]]["img"].shape[1:])
    rows.append({"dataset": dataset, "input": f"evaluation image → {shape[0]}×{shape[1]}", "images_per_call": 1,
                 "seconds": one, "n": len(picks)})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--coco-root", help="a cocostuff27 data root with train five-crops (stego data fivecrop)")
    p.add_argument("--cityscapes-root", help="a cityscapes27 data root with train five-crops")
    p.add_argument("--items", type=int, default=64, help="calls timed per row")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    rows = []
    for dataset, root in (("cocostuff27", args.coco_root), ("cityscapes27", args.cityscapes_root)):
        if root:
            rows += rows_for(dataset, root, args.items)
    print(f"one thread, CPU time per call; load {load:.1f}–{os.getloadavg()[0]:.1f}")
    print(f"| dataset | input | calls | ms / image | images/s per worker | training workers for {TRAIN_RATE:,} "
          "images/s |\n"
          "|---|---|---:|---:|---:|---:|")
    for r in rows:
        per_image = r["seconds"] / r["images_per_call"]
        workers = f"{TRAIN_RATE * per_image:.1f}" if r["images_per_call"] == 2 else "—"
        print(f"| {r['dataset']} | {r['input']} | {r['n']} | {1e3 * per_image:.2f} | {1 / per_image:.0f} | {workers} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
