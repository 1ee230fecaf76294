"""Raw-feature baselines: a tiny one trains only the probes and evaluates through `stego.evaluate`.

The cluster-probe accuracy of the record is recomputed independently: raw features with flip TTA, bilinear
upsampling, argmax cosine to the trained centroids, a numpy confusion matrix and scipy's Hungarian matching.
"""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from scipy.optimize import linear_sum_assignment

from baselines.raw_features import RAW_SWITCHES, baseline_config, is_raw, main, run_baseline, run_kmeans
from stego import build
from stego.config import load_config
from stego.data.synthetic import SceneSpec, make_scenes
from stego.errors import StegoError
from stego.checkpoint import load_checkpoint

N_CLASSES = 4


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    """A YAML preset for tiny synthetic runs on the (weightless, deterministic) filterbank backbone."""
    tmp = tmp_path_factory.mktemp("baseline")
    root = make_scenes(tmp / "scenes", SceneSpec(n_classes=N_CLASSES, n_train=12, n_val=3, size=48), seed=5)
    values = {
        "name": "tiny",
        "data": {"dataset": "synthetic", "root": str(root), "crop": "none", "res": 32, "workers": 0, "knn_k": 8},
        "model": {"backbone": "dino_vits16", "weights": "random", "dim": 6},
        "loss": {"feature_samples": 4, "neg_samples": 2},
        "train": {"batch_size": 4, "iterations": 6, "log_every": 1, "hist_every": 0, "device": "cpu"},
        "eval": {"res": 32, "crf": False, "batch_size": 2},
    }
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_baseline_config_is_raw_whatever_the_overrides(preset):
    cfg = baseline_config(str(preset), "filterbank", ["model.projection=nonlinear", "loss.lambda_knn=0.5"])
    assert cfg.model.projection == "none" and cfg.model.backbone == "filterbank" and is_raw(cfg)
    assert (cfg.loss.lambda_self, cfg.loss.lambda_knn, cfg.loss.lambda_rand) == (0.0, 0.0, 0.0)
    assert cfg.name == "tiny-raw-filterbank"
    assert "model.projection=none" in RAW_SWITCHES


def test_a_trained_head_is_refused(preset, tmp_path):
    cfg = load_config(str(preset), ["model.projection=linear", "model.backbone=filterbank"])
    with pytest.raises(StegoError, match="not a raw-feature baseline"):
        run_baseline(cfg, tmp_path)


def reference_cluster_accuracy(cfg, centroids: torch.Tensor) -> float:
    """Hungarian-matched pixel accuracy of argmax-cosine clusters on flip-averaged, upsampled raw features."""
    backbone = build.backbone_for(cfg)
    dataset = build.val_dataset(cfg)
    k = centroids.shape[0]
    confusion = np.zeros((k, N_CLASSES), dtype=np.int64)
    mu = centroids.double() / centroids.double().norm(dim=1, keepdim=True)
    for i in range(len(dataset)):
        item = dataset[i]
        img, label = item["img"][None], item["label"].numpy()
        with torch.no_grad():
            feats = (backbone(img) + backbone(img.flip(3)).flip(3)) / 2
        feats = F.interpolate(feats, size=label.shape, mode="bilinear", align_corners=False)[0].double()
        cos = torch.einsum("chw,kc->khw", feats / feats.norm(dim=0, keepdim=True), mu)
        pred = cos.argmax(0).numpy()
        valid = label >= 0
        np.add.at(confusion, (pred[valid], label[valid]), 1)
    rows, cols = linear_sum_assignment(confusion, maximize=True)
    return confusion[rows, cols].sum() / confusion.sum()


def test_a_raw_feature_baseline_trains_only_the_probes_and_evaluates(preset, tmp_path):
    cfg = baseline_config(str(preset), "filterbank")
    record = run_baseline(cfg, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "train" / "checkpoint.pt")
    assert state["config"]["model"]["projection"] == "none"
    assert not [k for k in state["model"] if k.startswith("head.")], "the head of a raw baseline has no parameters"
    dim = state["in_dim"]
    assert state["model"]["cluster_probe.clusters"].shape == (N_CLASSES, dim)
    assert state["model"]["linear_probe.conv.weight"].shape == (N_CLASSES, dim, 1, 1)
    fresh = build.model_for(cfg, dim, N_CLASSES)
    assert not list(fresh.head.parameters())
    assert not torch.equal(fresh.cluster_probe.clusters, state["model"]["cluster_probe.clusters"]), "probe trained"
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert saved["config"]["model"]["projection"] == "none" and saved["metrics"]["images"] == 3
    expected = reference_cluster_accuracy(cfg, state["model"]["cluster_probe.clusters"])
    assert record.metrics["cluster"]["accuracy"] == pytest.approx(expected, abs=1e-9)


def test_lloyd_kmeans_alternative_scores_through_the_same_evaluation(preset, tmp_path):
    cfg = baseline_config(str(preset), "filterbank")
    record = run_kmeans(cfg, tmp_path)
    saved = json.loads((tmp_path / "kmeans.json").read_text())
    assert saved["kind"] == "eval" and saved["name"].endswith("-kmeans") and saved["metrics"]["images"] == 3
    assert 0 < record.metrics["cluster"]["accuracy"] <= 1 and "linear" not in record.metrics


def test_command_line_runs_a_baseline(preset, tmp_path, capsys):
    assert main([str(preset), "filterbank", "train.iterations=2", "--out", str(tmp_path / "cli"), "--kmeans"]) == 0
    out = capsys.readouterr().out
    assert "cluster acc" in out and "Lloyd k-means" in out
    assert (tmp_path / "cli" / "eval.json").is_file() and (tmp_path / "cli" / "kmeans.json").is_file()
    assert main([str(preset), "no_such_backbone", "--out", str(tmp_path / "bad")]) == 2
