"""The KNN embedding's main-process memory on the CPU: `stego.data.knn.embed_dataset` against the loop it replaced.

    python -m benchmarks.perf.knn_embed_memory [--batches 300] [--batch 64] [--coco-root ROOT]

The replaced loop kept one small [B, C] tensor per batch in a list and concatenated them at the end; each was
allocated between the batch's large temporaries, which pinned glibc's heap so it could not shrink, and the main
process grew (1.64 GB against 1.01 over 400 COCO five-crop batches on a 2-core AMD EPYC, once 12.9 GB at 248,145
crops). `embed_dataset` writes the rows into one block allocated once. Each loop runs in a fresh process on the
filterbank backbone over random 224² images or a COCO root's five-crops (`--coco-root`, e.g. a rehearsal's), one
DataLoader worker as `stego data knn` on 2 cores, sampling its anonymous resident memory (RssAnon) every 0.5 s; the
table gives the first and the peak sample and the features' size. Not part of the test run.
"""
import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from stego.backbones import build_backbone
from stego.data.datasets import build_dataset
from stego.data.knn import embed_dataset

from .knn_scale import proc_status

REPO = Path(__file__).resolve().parents[2]


class RandomImages(Dataset):
    """n seeded random 224² images, items as build_dataset's (img, index)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return dict(img=torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(i)), index=i)


def replaced_loop(backbone, dataset, batch_size):
    """The loop before the fix, written out as the reference: a list of per-batch rows, concatenated at the end."""
    out = []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size, num_workers=1):
            out.append(F.normalize(backbone(batch["img"]).float().mean((2, 3)), dim=1).cpu())
    return torch.cat(out)


def child(loop: str, batches: int, batch_size: int, root: str | None) -> dict:
    """Run one loop here, sampling RssAnon; its samples' first value, peak and the seconds it took."""
    samples, done = [proc_status("RssAnon") / 2**20], threading.Event()

    def sample():
        while not done.wait(0.5):
            samples.append(proc_status("RssAnon") / 2**20)

    threading.Thread(target=sample, daemon=True).start()
    backbone, n = build_backbone("filterbank", weights="random"), batches * batch_size
    if root:
        crops = build_dataset("cocostuff27", root, "train", 224, crop=True)
        dataset = Subset(crops, range(min(len(crops), n)))
    else:
        dataset = RandomImages(n)
    start = time.perf_counter()
    if loop == "embed_dataset":
        feats = embed_dataset(backbone, dataset, batch_size=batch_size, device="cpu", workers=1, precision="fp32")
    else:
        feats = replaced_loop(backbone, dataset, batch_size)
    done.set()
    return {"loop": loop, "seconds": time.perf_counter() - start, "first_mb": samples[0], "peak_mb": max(samples),
            "features_mb": feats.numel() * 4 / 2**20}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--coco-root", help="a COCO-Stuff data root with five-crops (default: random images)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.batches, args.batch, args.coco_root)))
        return 0
    what = f"five-crops of {args.coco_root}" if args.coco_root else "random 224² images"
    print(f"{args.batches} batches of {args.batch} {what}, filterbank backbone, 1 loader worker\n")
    print("| loop | seconds | RssAnon at start MB | peak RssAnon MB | features MB |\n|---|---:|---:|---:|---:|")
    for loop in ("replaced list + cat", "embed_dataset"):
        argv = [sys.executable, "-m", "benchmarks.perf.knn_embed_memory", "--child", loop.split()[0],
                "--batches", str(args.batches), "--batch", str(args.batch)]
        if args.coco_root:
            argv += ["--coco-root", args.coco_root]
        out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"| {loop} | {r['seconds']:.0f} | {r['first_mb']:.0f} | {r['peak_mb']:.0f} | {r['features_mb']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
