"""One-command speed check of the whole pipeline on a GPU, on synthetic inputs and random-init weights:

    python -m benchmarks.perf.gpu_check [--device cuda] [--out .benchmarks/gpu_check.json] [--tiny] [--threads N]

Measures training iterations/s (`stego.train.train_step` with a real head, loss and probes; ViT-S/8, ViT-B/8 and
ResNet-50 at batch 32 and 224, STEGO and raw-feature rows), evaluation images/s at 320 with flip TTA
(`stego.inference.predict_log_probs`, with the share of pixels whose bf16 prediction equals the fp32 one) and KNN
features at 224 (`embed_dataset`), each in both precisions of train.precision on CUDA (fp32 with TF32 off, and bf16
autocast); top-k mining of 250,000 crops (`topk_cosine` on the device), and DenseCRF images/s with one worker per
core. Each rate is printed next to its hardware bound where one exists (matmul FLOPs ÷ the device's measured matmul
rate, in the stage's precision), then the projected wall time of each paper table's full run in the default
precision, fp32 (the registry's rows × iterations ÷ it/s, plus KNN mining and evaluation). Everything goes to a
JSON file, written atomically.
Estimated at 2–3 minutes on one H100 (not yet run on one; the budget is 8 minutes). `--tiny` shrinks every size
so the same code runs in well under a minute on a CPU (`test_gpu_check.py` runs it, so it cannot rot).
"""
import argparse
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from benchmarks import runner
from benchmarks.registry import PAPER_TABLES, REGISTRY
from stego.backbones import build_backbone
from stego.io import atomic_save_json
from stego.records import versions
from stego.runtime import set_tf32

from .gpu_stages import (DEFAULT_PRECISION, Sizes, arch_name, bench_crf, bench_embed, bench_eval, bench_knn,
                         bench_train, measured_precisions)
from .hardware import device_name, load_average, matmul_rate

log = logging.getLogger(__name__)


FULL = Sizes()
TINY = Sizes(batch=2, train_res=32, eval_res=32, eval_batch=2, embed_batch=2, embed_batches=2, knn_n=2_000,
             crf_res=48, crf_per_worker=1, min_seconds=0.0, warmup=1, min_iters=2, matmul_seconds=0.2,
             max_crf_workers=2)

BACKBONES = {"vit_s8": "dino_vits8", "vit_b8": "dino_vitb8", "r50": "r50_supervised"}
"""Measured architectures and the random-init backbone that stands for each."""
ARCH = {"dino_vits8": "vit_s8", "dino_vitb8": "vit_b8", "mocov2_r50": "r50", "r50_supervised": "r50"}
"""Which measured architecture a registry row's backbone runs at (MoCo v2 is a ResNet-50)."""
TRAIN_KINDS = ("stego", "raw")
"""'stego' trains head and probes on anchor + partner, 'raw' only the probes on the anchor's raw features (the
baselines)."""


TRAIN_ITEMS = {"cocostuff27": 49_629, "cityscapes27": 2_975, "potsdam3": 4_545}
"""Training images per dataset (×5 with five-crop): COCO-Stuff's curated list (docs/protocol.md §6), Cityscapes train,
Potsdam labelled_train (IIC's split: 24 labelled tiles × 225, less 855 for test)."""
VAL_ITEMS = {"cocostuff27": 2_175, "cityscapes27": 500, "potsdam3": 855}
"""Evaluation images per dataset (docs/protocol.md §6; Potsdam labelled_test)."""

TARGETS = [{"stage": "train", "arch": "vit_b8", "precision": "bf16", "kind": "stego", "min_rate": 20.0,
            "unit": "it/s", "card": "H100"}]
"""Rates the performance issue asks for, checked only on the card they were set for."""
TARGET_KEYS = ("stage", "arch", "precision", "kind")


def train_runs(device) -> list:
    """(architecture, precision, kind) of every training measurement: each architecture and kind in each measured
    precision, plus on a CPU one bf16 run that keeps the autocast path of this check exercised."""
    runs = [(arch, mode, kind) for arch in BACKBONES for mode in measured_precisions(device) for kind in TRAIN_KINDS]
    return runs if device.type == "cuda" else runs + [("vit_s8", "bf16", "stego")]


def _measured(results, stage, **match) -> dict:
    """The successful measurement of `stage` with the given fields; KeyError when there is none."""
    for r in results:
        if r["stage"] == stage and "error" not in r and all(r.get(k) == v for k, v in match.items()):
            return r
    raise KeyError(f"no {stage} measurement for {match}")


def _rate_of(results, stage, arch, **match):
    return _measured(results, stage, arch=arch, **match)["rate"]


def project(results: list, sizes: Sizes, mode: str = DEFAULT_PRECISION) -> list:
    """Projected wall time of each paper table's full run (one seed; Tables 1–5 and the re-run) from the measured rates.

    Per table: every distinct training (rows that differ only in evaluation share one, as the runner does) runs
    its preset's iterations at the measured it/s of its architecture in `mode` (default: train.precision's),
    scaled linearly from the measured batch to the preset's; each distinct KNN table (backbone, dataset, crops)
    is embedded at the measured rate and mined at the measured top-k time scaled ∝ N²; each distinct evaluation
    runs the validation images at the measured eval rate plus, with CRF, two refinements per image (cluster and
    linear) at the CRF rate.
    Not included: five-crop preparation, file decoding, validation during training, the analysis files.
    """
    knn = _measured(results, "knn")
    crf_rate = _measured(results, "crf")["rate"]
    out = []
    for table in PAPER_TABLES:
        trainings, minings, evals = {}, {}, {}
        for row in REGISTRY[table]:
            if row.cited:
                continue
            cfg = row.config()
            arch, dataset = ARCH[cfg.model.backbone], cfg.data.dataset
            if row.kind == "release":
                key = f"release-{row.checkpoint}"
            else:
                key = runner.train_dir_for(Path("."), cfg).name
                kind = "raw" if row.kind == "baseline" else "stego"
                per_iteration = 1 / _rate_of(results, "train", arch, precision=mode, kind=kind)
                trainings[key] = cfg.train.iterations * per_iteration * cfg.train.batch_size / sizes.batch
                if kind == "stego":
                    n = TRAIN_ITEMS[dataset] * (5 if cfg.data.crop == "five" else 1)
                    minings[(cfg.model.backbone, dataset, cfg.data.crop)] = (
                        n / _rate_of(results, "embed", arch, precision=mode) + knn["seconds"] * (n / knn["n"]) ** 2)
            crf = evals.get(key, (0, 0, False))[2] or cfg.eval.crf
            evals[key] = (VAL_ITEMS[dataset], VAL_ITEMS[dataset] / _rate_of(results, "eval", arch, precision=mode),
                          crf)
        out.append({"table": table, "trainings": len(trainings), "knn_tables": len(minings),
                    "evaluations": len(evals), "with_crf": sum(crf for _, _, crf in evals.values()),
                    "train_s": sum(trainings.values()), "knn_s": sum(minings.values()),
                    "eval_s": sum(seconds for _, seconds, _ in evals.values()),
                    "crf_s": sum(2 * images / crf_rate for images, _, crf in evals.values() if crf)})
        out[-1]["total_s"] = out[-1]["train_s"] + out[-1]["knn_s"] + out[-1]["eval_s"] + out[-1]["crf_s"]
    return out


def check_targets(results: list, device) -> list:
    """Each target with the measured rate and 'pass', 'fail', or 'not checked' when the card is another."""
    card = device_name(device)
    out = []
    for target in TARGETS:
        got = next((r.get("rate") for r in results if all(r.get(k) == target[k] for k in TARGET_KEYS)), None)
        status = ("not checked (not an " + target["card"] + ")" if target["card"] not in card
                  else "pass" if got is not None and got >= target["min_rate"] else "fail")
        out.append(dict(target, measured=got, status=status))
    return out


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _target_for(row: dict, targets: list):
    return next((t for t in targets if all(t[k] == row.get(k) for k in TARGET_KEYS)), None)


def rate_table(results: list, targets: list) -> str:
    """The measured rates as a Markdown table: achieved, hardware bound, their ratio, and any target."""
    lines = ["| stage | configuration | achieved | bound | achieved / bound | target |",
             "|---|---|---:|---:|---:|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['stage']} | {r['config']} | failed: {r['error']} | | | |")
            continue
        bound, target = r.get("bound"), _target_for(r, targets)
        bound_text = f"{_fmt(bound)} {r['unit']}" if bound else "–"
        share = f"{100 * r['rate'] / bound:.0f}%" if bound else "–"
        wanted = (f"≥ {target['min_rate']:g} {target['unit']} on {target['card']}: {target['status']}"
                  if target else "")
        lines.append(f"| {r['stage']} | {r['config']} | {_fmt(r['rate'])} {r['unit']} | {bound_text} | {share} | "
                     f"{wanted} |")
    return "\n".join(lines) + "\n"


def projection_table(projections: list) -> str:
    """Projected hours of each table's full run (one seed), by part."""
    lines = ["| table | trainings | KNN tables | evaluations (with CRF) | train h | KNN h | eval h | CRF h | "
             "total h |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in projections:
        hours = " | ".join(f"{p[k] / 3600:.2f}" for k in ("train_s", "knn_s", "eval_s", "crf_s", "total_s"))
        lines.append(f"| {p['table']} | {p['trainings']} | {p['knn_tables']} | {p['evaluations']} "
                     f"({p['with_crf']}) | {hours} |")
    return "\n".join(lines) + "\n"


def attempt(results: list, stage: str, config: str, fn, *args) -> None:
    """Append `fn(*args)` to results; a failure (out of memory, a missing kernel) becomes an error row and the
    check goes on, so one bad configuration does not lose the others' numbers."""
    try:
        results.append(fn(*args))
    except Exception as err:  # reported in the table and the JSON; the exit code says the check failed
        log.exception("%s %s failed", stage, config)
        results.append({"stage": stage, "config": config, "error": f"{type(err).__name__}: {err}"[:300]})


def run(device, sizes: Sizes = FULL) -> dict:
    """Measure everything on `device` with `sizes`; returns the JSON-ready result."""
    device = torch.device(device)
    started = time.perf_counter()
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16} if device.type == "cuda" else {"fp32": torch.float32}
    set_tf32(device, "fp32")  # the fp32 bound is true fp32, as fp32 runs compute
    rates = {mode: matmul_rate(device, dtype, min_seconds=sizes.matmul_seconds) for mode, dtype in dtypes.items()}
    rates.setdefault("bf16", rates["fp32"])  # CPU: no bf16 matmul rate is claimed; the bound uses fp32's
    log.info("matmul rates on %s: %s", device_name(device), {k: f"{v / 1e12:.1f} TFLOP/s" for k, v in rates.items()})
    results = []
    for arch, backbone_name in BACKBONES.items():
        torch.manual_seed(0)
        backbone = build_backbone(backbone_name, weights="random").to(device)
        for run_arch, mode, kind in train_runs(device):
            if run_arch == arch:
                attempt(results, "train", f"{arch_name(arch)} {mode} {kind}", bench_train, backbone, arch, mode, kind,
                        sizes, device, rates)
                log.info("%s: %s it/s", results[-1]["config"], results[-1].get("rate", "failed"))
        for mode in measured_precisions(device):
            name = f"{arch_name(arch)} {mode}"
            attempt(results, "eval", name, bench_eval, backbone, arch, mode, sizes, device, rates)
            attempt(results, "embed", name, bench_embed, backbone, arch, mode, sizes, device, rates)
        del backbone
        if device.type == "cuda":
            torch.cuda.empty_cache()
    attempt(results, "knn", f"n={sizes.knn_n}", bench_knn, sizes, device, rates)
    attempt(results, "crf", f"{sizes.crf_res}²", bench_crf, sizes)
    try:
        projections = project(results, sizes)
    except KeyError as err:  # a measurement the projections need failed
        projections = {"error": f"not projected: {err!r}"}
    return {"device": device_name(device), "device_type": device.type, "tiny": sizes != FULL,
            "sizes": asdict(sizes), "matmul_flops_per_s": rates, "results": results,
            "errors": sum("error" in r for r in results), "targets": check_targets(results, device),
            "projections": projections,
            "load_average": load_average(), "versions": versions(), "seconds": time.perf_counter() - started,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def render(report: dict) -> str:
    """The check's printed report: machine, matmul rates, the rate table and the projections."""
    rates = ", ".join(f"{mode} {v / 1e12:.2f} TFLOP/s" for mode, v in report["matmul_flops_per_s"].items())
    head = (f"{report['device']} ({report['versions']['torch']}), matmul {rates}"
            f"{', TINY sizes: rates and projections are not meaningful' if report['tiny'] else ''}")
    projections = report["projections"]
    projected = projections["error"] if isinstance(projections, dict) else projection_table(projections)
    return (f"{head}\n\n{rate_table(report['results'], report['targets'])}\n"
            f"Projected wall time of each table's full run (one seed):\n\n{projected}"
            f"\ntotal {report['seconds']:.0f} s\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.gpu_check",
                                     description="Speed check on synthetic inputs and random-init weights.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device to measure (default: cuda when available)")
    parser.add_argument("--out", type=Path, default=Path(".benchmarks/gpu_check.json"),
                        help="JSON result file (default .benchmarks/gpu_check.json)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a smoke run of the same code (CPU, < 1 min)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's); 1 keeps a smoke run steady on a busy machine")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible; pass --device cpu (with --tiny on a CPU)")
    report = run(args.device, TINY if args.tiny else FULL)
    atomic_save_json(report, args.out)
    print(render(report))
    print(f"written to {args.out}")
    failed = [t for t in report["targets"] if t["status"] == "fail"]
    return 1 if failed or report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
