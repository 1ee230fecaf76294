"""Three tables of this suite's own, beyond the paper (docs/benchmarks.md "Beyond the paper"):

- beyond: per dataset and modern backbone (DINOv2 ViT-S/14, ViT-B/14, DINOv3 ViT-S/16, ViT-B/16), the raw-feature
  baseline, PCA and random projection of those features to the code dimension, and STEGO from the
  `<dataset>_<backbone>` preset; the published numbers of later methods on these backbones as cited anchors.
- dimsweep: the raw, PCA and random-projection baselines over code dimensions 16 … 512 (and the raw features'
  own dimension) on the paper's backbones, STEGO at its code dimension beside them (reports draw the curve).
- koenig: the comparison of Koenig et al. (CVPRW 2023) for the three datasets: raw DINO, PCA and random
  projection to STEGO's code dimension, and STEGO, with their raw-DINO re-run as the cited anchor.
No published number exists for STEGO on DINOv2 or DINOv3: those rows carry none and check only the pipeline.
Rows of different tables with the same config share one training (benchmarks/runner.py).
"""
from .rows import RERUN_SOURCE, BenchmarkRow, baseline, paper

DATASETS = {"cocostuff27": "CocoStuff-27", "cityscapes27": "Cityscapes-27", "potsdam3": "Potsdam-3"}
MODERN = {"dinov2_vits14": "DINOv2 ViT-S/14", "dinov2_vitb14": "DINOv2 ViT-B/14", "dinov3_vits16": "DINOv3 ViT-S/16",
          "dinov3_vitb16": "DINOv3 ViT-B/16"}
REDUCED = {"pca": "PCA", "random": "RP"}
SWEEP_DIMS = (16, 32, 64, 128, 256, 512)
"""Code dimensions of the sweep (each preset's own code dimension is added)."""
PAPER_BACKBONE = {"cocostuff27": ("cocostuff27_release", "dino_vitb8", 768, "DINO ViT-B/8"),
                  "cityscapes27": ("cityscapes27_release", "dino_vitb8", 768, "DINO ViT-B/8"),
                  "potsdam3": ("potsdam3_release", "dino_vits8", 384, "DINO ViT-S/8")}
"""Per dataset: the release preset, its backbone, that backbone's channels, a label."""
CODE_DIM = {"cocostuff27": 90, "cityscapes27": 100, "potsdam3": 70}
"""The release presets' code dimensions (model.dim), the dimension the reductions are compared at."""

NONE = paper()
OURS = "this suite (no published number)"
ANCHOR_NOTE = "README table of the cited method's release; its evaluation protocol is not verified here"
REDUCE_NOTE = ("raw features standardised with training statistics, then reduced by a fixed map (stego.projection); "
               "probes and evaluation as STEGO's")


def ours_stego(table: str, name: str, preset: str, note: str = "") -> BenchmarkRow:
    """A STEGO row without a published number: the pipeline and the record only."""
    return BenchmarkRow(table, name, "stego", NONE, preset, source=OURS, note=note)


def ours_baseline(table: str, name: str, preset: str, backbone: str, reduce: str = "none", dim: int | None = None,
                  note: str = "") -> BenchmarkRow:
    return baseline(table, name, preset, backbone, NONE, source=OURS, reduce=reduce, dim=dim, note=note)


def anchor(table: str, name: str, acc: float, miou: float, source: str) -> BenchmarkRow:
    """A cited cluster-probe number (accuracy, mIoU) of a later method on a modern backbone."""
    return BenchmarkRow(table, name, "cited", paper(acc, miou), source=source, note=ANCHOR_NOTE)


CAUSE = "CAUSE (Kim et al., Pattern Recognition 2024), CAUSE-TR"
PRIMAPS = "PriMaPs (Hahn et al., CVPR 2024)"
ANCHORS = {
    ("cocostuff27", "dinov2_vitb14"): [("CAUSE-TR", 78.0, 45.3, CAUSE), ("PriMaPs k-means", 35.0, 17.9, PRIMAPS),
                                       ("PriMaPs-EM", 52.8, 23.6, PRIMAPS)],
    ("cityscapes27", "dinov2_vitb14"): [("CAUSE-TR", 89.8, 29.9, CAUSE), ("PriMaPs k-means", 36.1, 14.9, PRIMAPS),
                                        ("PriMaPs-EM", 82.9, 21.3, PRIMAPS)],
    ("potsdam3", "dinov2_vitb14"): [("PriMaPs k-means", 82.4, 69.9, PRIMAPS), ("PriMaPs-EM", 83.2, 71.1, PRIMAPS)],
    ("cocostuff27", "dinov2_vits14"): [("PriMaPs k-means", 44.5, 22.9, PRIMAPS), ("PriMaPs-EM", 46.5, 23.8, PRIMAPS)],
    ("cityscapes27", "dinov2_vits14"): [("PriMaPs k-means", 49.5, 15.3, PRIMAPS), ("PriMaPs-EM", 71.5, 19.0, PRIMAPS)],
    ("potsdam3", "dinov2_vits14"): [("PriMaPs k-means", 75.9, 61.0, PRIMAPS), ("PriMaPs-EM", 78.5, 64.3, PRIMAPS)],
}
"""Published cluster-probe (accuracy, mIoU) numbers on DINOv2 (docs/protocol.md §10); none exist for DINOv3."""


def _beyond() -> list[BenchmarkRow]:
    out = []
    for dataset, dname in DATASETS.items():
        for backbone, bname in MODERN.items():
            preset, label = f"{dataset}_{backbone}", f"{dname} {bname}"
            out.append(ours_baseline("beyond", f"{label} raw", preset, backbone))
            for reduce, rname in REDUCED.items():
                out.append(ours_baseline("beyond", f"{label} {rname}-{CODE_DIM[dataset]}", preset, backbone, reduce,
                                         note=REDUCE_NOTE))
            out.append(ours_stego("beyond", f"{label} STEGO", preset,
                                  note="the release's loss weights and shifts, not yet calibrated for this backbone "
                                       "(stego tune-shifts)"))
            out += [anchor("beyond", f"{label} {method}", acc, miou, source)
                    for method, acc, miou, source in ANCHORS.get((dataset, backbone), [])]
    return out


def _dimsweep() -> list[BenchmarkRow]:
    out = []
    for dataset, dname in DATASETS.items():
        preset, backbone, channels, bname = PAPER_BACKBONE[dataset]
        label = f"{dname} {bname}"
        out.append(ours_baseline("dimsweep", f"{label} raw-{channels}", preset, backbone))
        dims = sorted({*SWEEP_DIMS, CODE_DIM[dataset]} - {d for d in SWEEP_DIMS if d >= channels})
        for reduce, rname in REDUCED.items():
            out += [ours_baseline("dimsweep", f"{label} {rname}-{dim}", preset, backbone, reduce, dim, REDUCE_NOTE)
                    for dim in dims]
        out.append(ours_stego("dimsweep", f"{label} STEGO-{CODE_DIM[dataset]}", preset,
                              note="the release preset's training (the same run as the paper tables' STEGO row)"))
    return out


KOENIG_RAW = {"cocostuff27": paper(42.4, 13.0, 75.8, 44.4), "cityscapes27": paper(52.6, 15.2, 91.3, 34.9),
              "potsdam3": paper(71.3, 54.3, 84.5, 72.8)}
"""Koenig et al.'s raw-DINO re-run with the release's code (the 'rerun' table's numbers)."""


def _koenig() -> list[BenchmarkRow]:
    out = []
    for dataset, dname in DATASETS.items():
        preset, backbone, _, bname = PAPER_BACKBONE[dataset]
        dim, label = CODE_DIM[dataset], f"{dname} {bname}"
        out.append(BenchmarkRow("koenig", f"{label} raw (Koenig et al. re-run)", "cited", KOENIG_RAW[dataset],
                                source=RERUN_SOURCE))
        out.append(ours_baseline("koenig", f"{label} raw", preset, backbone))
        out += [ours_baseline("koenig", f"{label} {rname}-{dim}", preset, backbone, reduce, note=REDUCE_NOTE)
                for reduce, rname in REDUCED.items()]
        out.append(ours_stego("koenig", f"{label} STEGO", preset, note="the release preset's training"))
    return out


BEYOND, DIMSWEEP, KOENIG = _beyond(), _dimsweep(), _koenig()

TOY_DATASET = "cocostuff27"
TOY_SWEEP_DIMS = (16, CODE_DIM[TOY_DATASET], 512)


def on_cpu(row: BenchmarkRow) -> bool:
    """Whether the toy (CPU) run of these tables includes `row`: CocoStuff's rows, and of its dimension sweep the
    dimensions 16, 90 (the code's) and 512. At toy scale every dataset is the same synthetic world and every
    DINO-family backbone the filter bank, so the other rows would repeat the cost of a training, not add coverage;
    --run-gpu runs them all. Cited rows cost nothing and are all kept."""
    if row.cited:
        return True
    return row.preset.startswith(TOY_DATASET) and (row.table != "dimsweep" or row.dim is None
                                                   or row.dim in TOY_SWEEP_DIMS)
