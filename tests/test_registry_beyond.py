"""The suite's own tables (benchmarks/beyond.py) and the modern-backbone presets, against docs/protocol.md §10
transcribed here as text: every cited anchor carries the published numbers, every measured row resolves to the
backbone, reduction and dimension its name says, and the presets keep the release's values apart from backbone and
sizes."""
import re

import pytest

from baselines.raw_features import is_raw
from benchmarks.registry import rows
from stego.backbones import spec_of
from stego.config import load_config

# docs/protocol.md §10, copied as text (acc / mIoU; PriMaPs order: Cityscapes, CocoStuff-27, Potsdam-3).
PROTOCOL_ANCHORS = """CAUSE-TR DINOv2 ViT-B/14 CocoStuff-27 mIoU 45.3 / acc 78.0, Cityscapes 29.9 / 89.8; PriMaPs'
k-means baseline (acc / mIoU) DINOv2 ViT-S/14 Cityscapes 49.5/15.3, CocoStuff-27 44.5/22.9, Potsdam-3 75.9/61.0;
ViT-B/14 36.1/14.9, 35.0/17.9, 82.4/69.9; PriMaPs-EM ViT-S/14 71.5/19.0, 46.5/23.8, 78.5/64.3; ViT-B/14
82.9/21.3, 52.8/23.6, 83.2/71.1"""
KOENIG_RAW = ("CocoStuff ViT-B/8 42.4/13.0, 75.8/44.4; Cityscapes 52.6/15.2, 91.3/34.9; "
              "Potsdam ViT-S/8 71.3/54.3, 84.5/72.8")
DATASET_LABELS = {"cocostuff27": "CocoStuff-27", "cityscapes27": "Cityscapes-27", "potsdam3": "Potsdam-3"}
RELEASE = {"cocostuff27": "cocostuff27_release", "cityscapes27": "cityscapes27_release", "potsdam3": "potsdam3_release"}
MODERN = {"dinov2_vits14": "DINOv2 ViT-S/14", "dinov2_vitb14": "DINOv2 ViT-B/14", "dinov3_vits16": "DINOv3 ViT-S/16",
          "dinov3_vitb16": "DINOv3 ViT-B/16"}


def anchors() -> dict:
    """{row name: (acc, miou)} parsed from the transcription."""
    pairs = [tuple(map(float, p)) for p in re.findall(r"(\d+\.\d)/(\d+\.\d)", PROTOCOL_ANCHORS)]
    cause = re.findall(r"(\d+\.\d) / acc (\d+\.\d)|(\d+\.\d) / (\d+\.\d)", PROTOCOL_ANCHORS.split(";")[0])
    (coco_miou, coco_acc, _, _), (_, _, city_miou, city_acc) = cause
    out = {"CocoStuff-27 DINOv2 ViT-B/14 CAUSE-TR": (float(coco_acc), float(coco_miou)),
           "Cityscapes-27 DINOv2 ViT-B/14 CAUSE-TR": (float(city_acc), float(city_miou))}
    order = ("Cityscapes-27", "CocoStuff-27", "Potsdam-3")
    for block, (method, size) in enumerate([("PriMaPs k-means", "S"), ("PriMaPs k-means", "B"),
                                            ("PriMaPs-EM", "S"), ("PriMaPs-EM", "B")]):
        for dataset, values in zip(order, pairs[3 * block:3 * block + 3]):
            out[f"{dataset} DINOv2 ViT-{size}/14 {method}"] = values
    return out


def test_every_published_anchor_is_cited_with_its_numbers():
    expected = anchors()
    assert len(expected) == 14
    cited = {r.name: (r.paper["cluster_acc"], r.paper["cluster_miou"]) for r in rows("beyond") if r.cited}
    assert cited == expected
    assert all(r.paper["linear_acc"] is None for r in rows("beyond") if r.cited)


def test_koenig_cites_the_raw_dino_rerun():
    cited = [r for r in rows("koenig") if r.cited]
    values = [[float(v) for v in re.findall(r"\d+\.\d", part)] for part in KOENIG_RAW.split(";")]
    assert [list(r.paper.values()) for r in cited] == values


@pytest.mark.parametrize("table", ["beyond", "dimsweep", "koenig"])
def test_measured_rows_resolve_to_what_their_names_say(table):
    for row in (r for r in rows(table) if not r.cited):
        cfg = row.config()
        dataset = next(d for d, label in DATASET_LABELS.items() if row.name.startswith(label))
        assert cfg.data.dataset == dataset and not any(row.paper.values())
        kind = row.name.rsplit(" ", 1)[-1]
        if row.kind == "stego":
            assert kind.startswith("STEGO") and cfg.model.projection == "nonlinear"
            continue
        assert is_raw(cfg) and cfg.model.backbone == row.backbone
        if kind.startswith("raw"):
            assert cfg.model.projection == "none"
        else:
            method, dim = kind.split("-")
            assert cfg.model.projection == {"PCA": "pca", "RP": "random"}[method] and cfg.model.dim == int(dim)
            assert cfg.model.dim < spec_of(cfg.model.backbone).dim


def test_beyond_covers_every_dataset_and_backbone_with_four_kinds():
    measured = [r for r in rows("beyond") if not r.cited]
    assert len(measured) == 3 * 4 * 4
    for dataset, label in DATASET_LABELS.items():
        for backbone, name in MODERN.items():
            mine = [r for r in measured if r.name.startswith(f"{label} {name} ")]
            assert [r.name.rsplit(" ", 1)[-1].split("-")[0] for r in mine] == ["raw", "PCA", "RP", "STEGO"]
            assert {r.preset for r in mine} == {f"{dataset}_{backbone}"}


def test_the_sweep_spans_dimensions_below_the_backbone_and_shares_the_stego_training():
    sweep = [r for r in rows("dimsweep") if r.name.startswith("Potsdam-3")]
    dims = sorted(r.config().model.dim for r in sweep if r.reduce == "pca")
    assert dims == [16, 32, 64, 70, 128, 256]  # ViT-S/8 has 384 channels: 512 left out, the code dim 70 added
    stego = next(r for r in rows("dimsweep") if r.kind == "stego" and r.name.startswith("CocoStuff-27"))
    table1 = next(r for r in rows("table1") if r.name == "STEGO")
    assert stego.config().identity() | {"name": None} == table1.config().identity() | {"name": None}


@pytest.mark.parametrize("dataset", list(DATASET_LABELS))
@pytest.mark.parametrize("backbone", list(MODERN))
def test_modern_presets_are_the_release_apart_from_backbone_and_sizes(dataset, backbone):
    cfg, release = load_config(f"{dataset}_{backbone}"), load_config(RELEASE[dataset])
    patch = spec_of(backbone).patch
    assert cfg.follows == "ours" and cfg.model.backbone == backbone
    assert cfg.data.res == 224 and cfg.eval.res == {14: 322, 16: 320}[patch]
    assert cfg.data.res % patch == 0 and cfg.eval.res % patch == 0
    same = ("loss", "train")
    for section in same:
        ours, theirs = getattr(cfg, section).__dict__, getattr(release, section).__dict__
        for key, value in ours.items():
            assert value == theirs[key], f"{section}.{key}"  # the released values to their last digit
    assert (cfg.model.dim, cfg.data.crop) == (release.model.dim, release.data.crop)
