"""Every DINOv2 and DINOv3 backbone runs the whole toy pipeline with random weights, offline: KNN mining, a short
STEGO training, and an evaluation whose record holds both probes' scores.

Parity with the authors' code is tests/test_backbones_dinov2.py's and _dinov3.py's; this checks the wiring around a
backbone (channel count into the head, patch size into the feature grid, ConvNeXt's stride 32). ViT-L and ViT-g
(300M–1.1B parameters, a minute of random init each on 2 cores) are built on the meta device only, there.
"""
import json

import pytest
import torch

from stego.backbones import BACKBONES, build_backbone
from stego.config import from_dict
from stego.data.synthetic import SceneSpec, make_scenes
from stego.evaluate import run_eval
from stego.train import train

MAX_PARAMS = 100e6


def _params(name: str) -> float:
    with torch.device("meta"):
        return sum(p.numel() for p in build_backbone(name, "random").parameters())


MODERN = [name for name in sorted(BACKBONES) if name.startswith(("dinov2_", "dinov3_")) and _params(name) <= MAX_PARAMS]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_scenes(tmp_path_factory.mktemp("scenes"), SceneSpec(n_train=6, n_val=2, size=64), seed=3)


def test_the_list_holds_both_families_and_convnext():
    assert {"dinov2_vits14", "dinov2_vitb14_reg", "dinov3_vits16", "dinov3_vitb16", "dinov3_convnext_tiny"} <= set(
        MODERN)


@pytest.mark.parametrize("name", MODERN)
def test_backbone_trains_and_evaluates_with_random_weights(name, scenes, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = 2 * BACKBONES[name].patch  # a 2×2 feature grid: 28 px at patch 14, 32 at 16, 64 for ConvNeXt (stride 32)
    cfg = from_dict({
        "name": f"pipeline-{name}",
        "data": {"dataset": "synthetic", "root": str(scenes), "crop": "none", "res": res, "workers": 0, "knn_k": 3,
                 "num_neighbors": 2},
        "model": {"backbone": name, "weights": "random", "dim": 8},
        "loss": {"feature_samples": 2, "neg_samples": 1},
        "train": {"batch_size": 2, "iterations": 2, "checkpoint_every": 1000, "log_every": 1, "hist_every": 1000,
                  "val_every": 0, "threads": 1},
        "eval": {"res": res, "crf": False, "batch_size": 2, "bootstrap_resamples": 0, "cluster_restarts": 0,
                 "overclustering": False},
    })
    checkpoint = train(cfg, tmp_path / "run")
    run_eval(None, checkpoint, tmp_path / "eval.json")
    record = json.loads((tmp_path / "eval.json").read_text())
    assert record["config"]["model"]["backbone"] == name and record["metrics"]["images"] == 2
    for probe in ("cluster", "linear"):  # every labelled pixel of both images scored, once
        assert all(0.0 <= record["metrics"][probe][m] <= 1.0 for m in ("miou", "accuracy"))
        assert sum(map(sum, record["metrics"][probe]["confusion"])) == 2 * res * res, probe
