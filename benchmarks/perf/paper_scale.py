"""Projected wall time of each paper table on one GPU node, from stated assumptions and this machine's CPU numbers.

    python -m benchmarks.perf.paper_scale [--gpu-tflops 50] [--mfu 0.5] [--crf-item-s 2.2] [--cores 16]

No GPU has run this suite yet, so the GPU rates are assumptions: each GPU stage runs at `--mfu` of the bound its
backbone matmuls set at `--gpu-tflops` (the fp32 matmul rate, TF32 off, as train.precision=fp32 runs; an H100 SXM
reaches about 50 TFLOP/s); FLOPs per image are counted from the shapes (benchmarks/perf/hardware.py). DenseCRF runs
on the node's cores, each map taking `--crf-item-s` CPU seconds (measured on this machine at 320²), with the cores
kept busy at `--crf-util` by the overlapped loop (measured, benchmarks/perf/crf_overlap.py) and at what
crf_overlap's model gives the sequential loop of before (batches of 8, two maps one after the other, `--main-s` of
main-process time a batch). The table is gpu_check's projection (`project`: every distinct training, KNN table and
evaluation of the registry's rows, one seed) fed with these rates; with the overlap the network and the CRF of an
evaluation take the longer of the two instead of their sum.
"""
import argparse

from .crf_overlap import project as crf_utilisation
from .gpu_check import project
from .gpu_stages import DEFAULT_PRECISION, Sizes
from .hardware import vit_flops

VITS = {"vit_s8": (384, 12, 1536, 8), "vit_b8": (768, 12, 3072, 8)}
"""(dim, depth, MLP width, patch) of the measured ViT architectures."""
R50_FLOPS_224 = 8.17e9
"""ResNet-50 matmul + convolution FLOPs at 224 (FlopCounterMode, docs/performance.md)."""


def flops(arch: str, res: int) -> float:
    """Backbone FLOPs of one res×res image."""
    if arch == "r50":
        return R50_FLOPS_224 * (res / 224) ** 2
    return vit_flops(*VITS[arch], res, res)["matmul"]


def assumed_results(gpu_flops: float, mfu: float, crf_item_s: float, cores: int, crf_util: float,
                    sizes: Sizes = Sizes(), knn_dim: int = 768) -> list:
    """gpu_check-style measurement rows at the assumed rates (see the module docstring)."""
    rate, mode, rows = mfu * gpu_flops, DEFAULT_PRECISION, []
    for arch in ("vit_s8", "vit_b8", "r50"):
        f224, f320 = flops(arch, sizes.train_res), flops(arch, sizes.eval_res)
        train = {"stage": "train", "arch": arch, "precision": mode}
        rows += [dict(train, kind="stego", rate=rate / (2 * sizes.batch * f224)),  # anchors and their KNN partners
                 dict(train, kind="raw", rate=rate / (sizes.batch * f224)),
                 {"stage": "embed", "arch": arch, "precision": mode, "rate": rate / f224},
                 {"stage": "eval", "arch": arch, "precision": mode, "rate": rate / (2 * f320)}]
    n = sizes.knn_n
    rows.append({"stage": "knn", "n": n, "seconds": 2 * n * n * knn_dim / rate})
    rows.append({"stage": "crf", "rate": cores * crf_util / crf_item_s})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu-tflops", type=float, default=50.0)
    p.add_argument("--mfu", type=float, default=0.5)
    p.add_argument("--crf-item-s", type=float, default=2.2)
    p.add_argument("--cores", type=int, default=16)
    p.add_argument("--crf-util", type=float, default=0.9)
    p.add_argument("--main-s", type=float, default=0.2, help="main-process seconds a batch of 8 (network included)")
    args = p.parse_args(argv)
    sequential_util = crf_utilisation(args.crf_item_s, args.main_s, 8, args.cores)["sequential"]
    rows = assumed_results(args.gpu_tflops * 1e12, args.mfu, args.crf_item_s, args.cores, args.crf_util)
    print(f"assumed: {args.gpu_tflops:g} TFLOP/s fp32 matmul × {args.mfu:g}; CRF {args.crf_item_s:g} s a map on "
          f"{args.cores} cores kept {args.crf_util:.0%} busy (overlapped) or {sequential_util:.0%} (sequential)")
    print("| table | trainings | KNN tables | evaluations (CRF) | train h | KNN h | eval h | CRF h | total h "
          "| total h, sequential CRF loop |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in project(rows, Sizes()):
        overlapped = t["train_s"] + t["knn_s"] + max(t["eval_s"], t["crf_s"])
        sequential = t["train_s"] + t["knn_s"] + t["eval_s"] + t["crf_s"] * args.crf_util / sequential_util
        hours = [t[k] / 3600 for k in ("train_s", "knn_s", "eval_s", "crf_s")] + [overlapped / 3600, sequential / 3600]
        print(f"| {t['table']} | {t['trainings']} | {t['knn_tables']} | {t['evaluations']} ({t['with_crf']}) | "
              + " | ".join(f"{h:.2f}" for h in hours) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
