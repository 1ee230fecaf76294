"""KNN mining (`stego.data.knn.topk_cosine`) at COCO five-crop scale on the CPU: time and peak memory against N.

    python -m benchmarks.perf.knn_scale [--n 10000,20000,40000] [--full 248145] [--dims 768,384] [--blocks 4]

Each (N, D) runs in a fresh process on random features (k = 30, the default tiles): whole runs at the listed N,
and at `--full` (COCO's 49,629 images × 5 crops) the full set-up (normalised copy, N×k outputs) with only the first
`--blocks` query blocks computed, then projected to all ⌈N / chunk⌉ blocks: every block does the same work (chunk
queries against all N keys), so the projection is exact up to timing noise. Peak memory is the process's VmHWM
(reset after the random features exist) minus its resident set then: what mining adds to holding the features,
with glibc told to return large blocks at once (MALLOC_MMAP_THRESHOLD_, as in test_perf_knn.py) so the peak is
the live working set, not freed memory the allocator kept.
The GPU projection divides the 2·N²·D matmul FLOPs by the matmul rate (benchmarks/perf/hardware.py) of a device
given in TFLOP/s (--gpu-tflops; an H100's dense fp32 without TF32 is about 50); the top-k merges are left out.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from stego.data import knn

from .hardware import matmul_rate

REPO = Path(__file__).resolve().parents[2]
K, CHUNK = 30, 1024


def proc_status(field: str) -> int:
    """Bytes of a /proc/self/status field (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} missing from /proc/self/status")


def child(n: int, dim: int, blocks: int | None) -> dict:
    """Mine n random dim-d features (all query blocks, or the first `blocks` of them); seconds and peak bytes."""
    feats = torch.randn(n, dim, generator=torch.Generator().manual_seed(0))
    base = proc_status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    start = time.perf_counter()
    if blocks is None:
        knn.topk_cosine(feats, K, chunk=CHUNK)
        done = math.ceil(n / CHUNK)
    else:  # topk_cosine's own steps, stopped after `blocks` query blocks
        normed = torch.nn.functional.normalize(feats, dim=1)
        indices, sims = torch.empty(n, K, dtype=torch.int64), torch.empty(n, K, dtype=torch.float32)
        for q0 in range(0, blocks * CHUNK, CHUNK):
            top_v, top_i = knn._query_block_topk(normed, q0, q0 + CHUNK, K, 16384)
            indices[q0:q0 + CHUNK], sims[q0:q0 + CHUNK] = top_i, top_v
        done = blocks
    seconds = time.perf_counter() - start
    return {"n": n, "dim": dim, "blocks": done, "of_blocks": math.ceil(n / CHUNK), "seconds": seconds,
            "projected_s": seconds * math.ceil(n / CHUNK) / done,
            "extra_mb": (proc_status("VmHWM") - base) / 2**20, "rss_mb": proc_status("VmHWM") / 2**20,
            "threads": torch.get_num_threads()}


def measure(n: int, dim: int, blocks: int | None) -> dict:
    """`child` in a fresh process (its peak memory is its own), with the load average around it."""
    load = os.getloadavg()[0]
    argv = [sys.executable, "-m", "benchmarks.perf.knn_scale", "--child", f"{n},{dim},{blocks or 0}"]
    env = dict(os.environ, PYTHONPATH=str(REPO), MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]), load=(load, os.getloadavg()[0]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", default="10000,20000,40000", help="sizes mined whole")
    p.add_argument("--full", type=int, default=248_145, help="size mined in part and projected (0: none)")
    p.add_argument("--dims", default="768,384")
    p.add_argument("--blocks", type=int, default=4, help="query blocks of 1024 computed at --full")
    p.add_argument("--gpu-tflops", type=float, default=50.0, help="the GPU's matmul rate for the projection")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        n, dim, blocks = (int(v) for v in args.child.split(","))
        print(json.dumps(child(n, dim, blocks or None)))
        return 0
    cpu_rate = matmul_rate("cpu")
    print(f"CPU fp32 matmul rate {cpu_rate / 1e9:.0f} GFLOP/s ({torch.get_num_threads()} threads), "
          f"load {os.getloadavg()[0]:.1f}")
    print("| D | N | blocks run | seconds | projected whole s | peak extra MB | peak RSS MB | 2·N²·D GFLOP/s "
          "| ÷ matmul rate | load |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for dim in (int(d) for d in args.dims.split(",")):
        rows = [measure(int(n), dim, None) for n in args.n.split(",")]
        if args.full:
            rows.append(measure(args.full, dim, args.blocks))
        for r in rows:
            gflops = 2 * r["n"] * r["n"] * dim / r["projected_s"] / 1e9
            print(f"| {dim} | {r['n']:,} | {r['blocks']}/{r['of_blocks']} | {r['seconds']:.1f} "
                  f"| {r['projected_s']:.1f} | {r['extra_mb']:.0f} | {r['rss_mb']:.0f} | {gflops:.0f} "
                  f"| {gflops * 1e9 / cpu_rate:.0%} "
                  f"| {r['load'][0]:.1f}–{r['load'][1]:.1f} |")
        whole = [r for r in rows if r["blocks"] == r["of_blocks"]]
        if len(whole) > 1:
            slope = np.polyfit(np.log([r["n"] for r in whole]), np.log([r["seconds"] for r in whole]), 1)[0]
            print(f"D={dim}: time ∝ N^{slope:.2f} over the whole runs")
        if args.full:
            gpu_s = 2 * args.full ** 2 * dim / (args.gpu_tflops * 1e12)
            print(f"D={dim}: GPU projection at N={args.full:,}: {gpu_s:.1f} s of matmul at {args.gpu_tflops:g} TFLOP/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
