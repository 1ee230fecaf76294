"""Raw-feature baselines: cosine k-means (K = classes, Hungarian-matched) and a linear probe on frozen features,
optionally reduced to a code dimension by PCA or a random projection first (Koenig et al.; stego.projection).

A baseline is a STEGO config with `model.projection` none (or a fixed 'pca' / 'random' reduction to model.dim)
and every loss weight at 0. The head then has no trainable parameters: training fits only the two probes on the
detached raw (or reduced) backbone features — the cluster probe, a
cosine k-means with K = number of classes trained by Adam on −max cos (how the release produced its raw-DINO
numbers), and the linear probe — and evaluation is `stego.evaluate` unchanged: flip TTA, bilinear upsampling,
optional CRF, one global Hungarian matching. These give paper Table 1's ResNet50 / MoCoV2 / DINO rows and the
independent re-run's raw-DINO rows. `run_kmeans` offers the alternative clustering: Lloyd-style spherical
k-means (`stego.kmeans`) on the same raw features, scored by the same evaluation code.

    python -m baselines.raw_features cocostuff27_release dino_vitb8 --out runs/raw-dino
    python -m baselines.raw_features cocostuff27_release dino_vitb8 --reduce pca --dim 90 --out runs/pca90-dino
"""
import argparse
import logging
import sys
import time
from pathlib import Path

from stego.config import Config, load_config
from stego.errors import StegoError
from stego.evaluate import run_eval
from stego import records
from stego.projection import FIXED
from stego.runs import RunDir
from stego.train import train

log = logging.getLogger(__name__)

BACKBONES = ("dino_vits8", "dino_vitb8", "mocov2_r50", "r50_supervised")
"""The backbones of the paper's baselines; any registered backbone name works."""

RAW_SWITCHES = ("model.projection=none", "loss.lambda_self=0.0", "loss.lambda_knn=0.0", "loss.lambda_rand=0.0")
"""What turns a STEGO config into a raw-feature baseline: no projection, no correspondence loss."""
REDUCTIONS = ("none", *FIXED)
"""How a baseline treats the raw features: as they are, or reduced to model.dim by a fixed map."""


def baseline_config(preset: str, backbone: str, overrides=(), reduce: str = "none", dim: int | None = None) -> Config:
    """The preset's data, training and evaluation settings on raw `backbone` features, reduced to `dim` (default:
    the preset's code dimension) by `reduce` ('pca' or 'random') unless 'none'.

    `overrides` (section.key=value) apply before the backbone and the raw switches, so they cannot turn the
    baseline back into a trained head.
    """
    if reduce not in REDUCTIONS:
        raise StegoError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
    switches = [*RAW_SWITCHES]
    if reduce != "none":
        switches[0] = f"model.projection={reduce}"
        switches += [f"model.dim={dim}"] if dim is not None else []
    cfg = load_config(preset, [*overrides, f"model.backbone={backbone}", *switches])
    cfg.name = f"{cfg.name}-raw-{backbone}" if reduce == "none" else f"{cfg.name}-{reduce}{cfg.model.dim}-{backbone}"
    return cfg


def is_raw(cfg: Config) -> bool:
    """True for a raw-feature baseline config: raw or fixed-reduced features, no correspondence-loss weight."""
    loss = cfg.loss
    return cfg.model.projection in REDUCTIONS and loss.lambda_self == loss.lambda_knn == loss.lambda_rand == 0


def run_baseline(cfg: Config, out_dir, crf: bool | None = None) -> records.EvalRecord:
    """Fit the probes on raw features (out_dir/train/, resumed if interrupted) and write out_dir/eval.json.

    Returns the evaluation record (`stego.evaluate.run_eval`); crf None follows cfg.eval.crf.
    """
    if not is_raw(cfg):
        raise StegoError(f"{cfg.name}: not a raw-feature baseline (projection {cfg.model.projection!r}, loss weights "
                         f"{cfg.loss.lambda_self}, {cfg.loss.lambda_knn}, {cfg.loss.lambda_rand}); "
                         f"build it with baseline_config")
    out = Path(out_dir)
    train_dir = out / "train"
    checkpoint = train(cfg, train_dir, resume=RunDir(train_dir).checkpoint.exists())
    return run_eval(cfg, checkpoint, out / "eval.json", crf=crf)


def run_kmeans(cfg: Config, out_dir, crf: bool | None = None, seed: int = 0) -> records.EvalRecord:
    """Lloyd spherical k-means (K = classes) on the raw training features instead of the Adam-trained probe;
    scored on the validation split by `stego.evaluate` and written to out_dir/kmeans.json (cluster metrics only)."""
    from stego.kmeans import raw_feature_kmeans

    started = time.perf_counter()
    metrics = raw_feature_kmeans(cfg, crf=crf, seed=seed)
    what = f"none: spherical k-means of raw {cfg.model.backbone} features (seed {seed})"
    record = records.EvalRecord(name=f"{cfg.name}-kmeans", config=cfg.to_dict(), checkpoint=what,
                                split="val", metrics=metrics, seconds=time.perf_counter() - started, seed=seed,
                                **records.provenance())
    records.write(record, Path(out_dir) / "kmeans.json")
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m baselines.raw_features", description=__doc__.split("\n")[0])
    parser.add_argument("preset", help="preset giving dataset, training and evaluation settings")
    parser.add_argument("backbone", help=f"backbone whose raw features are probed ({', '.join(BACKBONES)}, ...)")
    parser.add_argument("overrides", nargs="*", default=[], help="section.key=value overrides, e.g. data.root=/data")
    parser.add_argument("--reduce", choices=REDUCTIONS, default="none",
                        help="reduce the raw features to --dim first: PCA or a random projection (default none)")
    parser.add_argument("--dim", type=int, default=None, help="dimension of --reduce (default: the preset's model.dim)")
    parser.add_argument("--out", type=Path, required=True, help="run folder (train/ and eval.json go there)")
    parser.add_argument("--no-crf", action="store_true", help="skip DenseCRF at evaluation")
    parser.add_argument("--kmeans", action="store_true",
                        help="also cluster with Lloyd spherical k-means (stego.kmeans) into OUT/kmeans.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = baseline_config(args.preset, args.backbone, args.overrides, args.reduce, args.dim)
        crf = False if args.no_crf else None
        record = run_baseline(cfg, args.out, crf=crf)
        kmeans = run_kmeans(cfg, args.out, crf=crf) if args.kmeans else None
    except StegoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    m = record.metrics
    print(f"{cfg.name}: cluster acc {100 * m['cluster']['accuracy']:.1f} mIoU {100 * m['cluster']['miou']:.1f} | "
          f"linear acc {100 * m['linear']['accuracy']:.1f} mIoU {100 * m['linear']['miou']:.1f}")
    if kmeans:
        k = kmeans.metrics["cluster"]
        print(f"{cfg.name} (Lloyd k-means): cluster acc {100 * k['accuracy']:.1f} mIoU {100 * k['miou']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
