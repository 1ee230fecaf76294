"""Released-checkpoint loading: files written here in the release's Lightning layout (docs/protocol.md §9)."""
import collections
import struct
import zipfile
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from stego.backbones import build_backbone
from stego.released import load_released_checkpoint
from stego.errors import MissingFileError, StegoError

REPO = Path(__file__).resolve().parents[1]

# the release's flat training config as its cocostuff27 run set it; "???" and "${...}" as omegaconf keeps them
COCO_CFG = {
    "output_root": "../", "pytorch_data_dir": "???", "experiment_name": "exp1", "log_dir": "${dataset_name}",
    "num_workers": 24, "max_steps": 7000, "batch_size": 32, "num_neighbors": 7, "dataset_name": "cocostuff27",
    "dir_dataset_name": None, "dir_dataset_n_classes": 5, "has_labels": False, "crop_type": "five",
    "crop_ratio": 0.5, "res": 224, "loader_crop_type": "center", "extra_clusters": 0, "use_true_labels": False,
    "use_recalibrator": False, "model_type": "vit_base", "arch": "dino", "use_fit_model": False,
    "dino_feat_type": "feat", "projection_type": "nonlinear", "dino_patch_size": 8, "granularity": 1,
    "continuous": True, "dim": 90, "dropout": True, "zero_clamp": True, "lr": 0.0005, "pretrained_weights": None,
    "use_salience": False, "stabalize": False, "stop_at_zero": True, "pointwise": True, "feature_samples": 11,
    "neg_samples": 5, "aug_alignment_weight": 0.0, "correspondence_weight": 1.0,
    "neg_inter_weight": 0.1538476246415498, "pos_inter_weight": 1, "pos_intra_weight": 0.1, "neg_inter_shift": 1,
    "pos_inter_shift": 0.2, "pos_intra_shift": 0.12, "rec_weight": 0.0, "repulsion_weight": 0.0, "crf_weight": 0.0,
    "alpha": 0.5, "beta": 0.15, "gamma": 0.05, "w1": 10.0, "w2": 3.0, "shift": 0.0, "crf_samples": 1000,
    "color_space": "rgb", "reset_probe_steps": None, "n_images": 5, "scalar_log_freq": 10, "checkpoint_freq": 50,
    "val_freq": 100, "hist_freq": 100, "lists": [1, 2, {"x": None}], "nested": {"a": {"b": 1.5}},
}
SMALL_CFG = {**COCO_CFG, "model_type": "vit_small", "dataset_name": "potsdam", "dim": 70, "crop_type": None,
             "neg_inter_weight": 0.63, "pos_inter_weight": 0.25, "pos_intra_weight": 0.67, "neg_inter_shift": 0.76,
             "pos_inter_shift": 0.02, "pos_intra_shift": 0.08, "batch_size": 16, "max_steps": 5000}
FEATS = {"vit_small": 384, "vit_base": 768}


class ReleaseLit(nn.Module):
    """The trainable modules of the release's LitUnsupervisedSegmenter, under its attribute names."""

    def __init__(self, c: int, dim: int, n_classes: int, projection, extra_clusters: int = 0):
        super().__init__()
        self.net = nn.Module()
        if projection is not None:
            self.net.cluster1 = nn.Sequential(nn.Conv2d(c, dim, (1, 1)))
        if projection == "nonlinear":
            self.net.cluster2 = nn.Sequential(nn.Conv2d(c, c, (1, 1)), nn.ReLU(), nn.Conv2d(c, dim, (1, 1)))
        self.train_cluster_probe = nn.Module()
        self.train_cluster_probe.clusters = nn.Parameter(torch.randn(n_classes, dim))
        self.cluster_probe = nn.Module()
        self.cluster_probe.clusters = nn.Parameter(torch.randn(n_classes + extra_clusters, dim))
        self.linear_probe = nn.Conv2d(dim, n_classes, (1, 1))
        self.decoder = nn.Conv2d(dim, c, (1, 1))

    def code(self, feats):
        """DinoFeaturizer.forward's code in eval mode (no dropout)."""
        if not hasattr(self.net, "cluster1"):
            return feats
        code = self.net.cluster1(feats)
        if hasattr(self.net, "cluster2"):
            code += self.net.cluster2(feats)
        return code


def fake_backbone(c: int, patch: int) -> dict:
    """DINO key names; block tensors are stubs (their shapes are the backbone loader's business)."""
    state = {
        "cls_token": torch.randn(1, 1, c), "pos_embed": torch.randn(1, (224 // patch) ** 2 + 1, c),
        "patch_embed.proj.weight": torch.randn(c, 3, patch, patch), "patch_embed.proj.bias": torch.randn(c),
        "norm.weight": torch.randn(c), "norm.bias": torch.randn(c),
    }
    for name in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
        for kind in ("weight", "bias"):
            state[f"blocks.0.{name}.{kind}"] = torch.zeros(1)
    return state


def release_dict(cfg: dict, n_classes: int = 3, seed: int = 0, backbone: dict | None = None):
    """(checkpoint dict in the release's Lightning layout, the ReleaseLit whose weights it holds)."""
    torch.manual_seed(seed)
    c = FEATS[cfg["model_type"]]
    dim = cfg["dim"] if cfg["projection_type"] is not None else c
    lit = ReleaseLit(c, dim, n_classes, cfg["projection_type"], cfg.get("extra_clusters", 0))
    backbone = fake_backbone(c, cfg["dino_patch_size"]) if backbone is None else backbone
    state = collections.OrderedDict((f"net.model.{k}", v) for k, v in backbone.items())
    state.update(lit.state_dict())
    adam = {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3)}},
            "param_groups": [{"lr": 5e-4, "betas": (0.9, 0.999), "params": [0]}]}
    ckpt = {
        "epoch": 4, "global_step": 7000, "pytorch-lightning_version": "1.5.10", "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 5}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'test/cluster/mIoU'}": {"best_model_score": torch.tensor(0.28),
                                                                          "dirpath": "../checkpoints"}},
        "optimizer_states": [adam, adam, adam], "lr_schedulers": [], "hparams_name": "kwargs",
        "hyper_parameters": {"n_classes": n_classes, "cfg": cfg},
    }
    return ckpt, lit


def write(tmp_path, ckpt, name="release.ckpt") -> Path:
    path = tmp_path / name
    torch.save(ckpt, path)
    return path


def one_line_error(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def release_cluster_log_probs(code, clusters, alpha=2.0):
    """The release's ClusterLookup(code, alpha, log_probs=True), in float64."""
    inner = torch.einsum("bchw,nc->bnhw", F.normalize(code.double(), dim=1), F.normalize(clusters.double(), dim=1))
    return torch.log_softmax(inner * alpha, dim=1)


def test_mapped_head_and_probes_reproduce_the_release(tmp_path):
    backbone = fake_backbone(384, 8)
    ckpt, lit = release_dict(SMALL_CFG, n_classes=3, backbone=backbone)
    ck = load_released_checkpoint(write(tmp_path, ckpt))
    assert ck.backbone_name == "dino_vits8"
    assert set(ck.backbone_state) == set(backbone)
    assert all(torch.equal(ck.backbone_state[k], v) for k, v in backbone.items())
    head, cluster_probe, linear_probe = ck.build_modules()
    lit.eval()
    feats = torch.randn(2, 384, 5, 6)
    with torch.no_grad():
        code = head(feats)[1]
        want = lit.code(feats)
        torch.testing.assert_close(code, want, rtol=0, atol=1e-5)
        torch.testing.assert_close(linear_probe(code), lit.linear_probe(want), rtol=0, atol=1e-5)
        torch.testing.assert_close(cluster_probe.log_probs(code).double(),
                                   release_cluster_log_probs(want, lit.cluster_probe.clusters), rtol=0, atol=1e-5)
    assert ck.n_classes == 3 and ck.in_dim == 384
    assert ck.hparams["n_classes"] == 3 and ck.hparams["cfg"] == SMALL_CFG


@pytest.mark.parametrize("projection", ["linear", None])
def test_linear_and_no_projection(tmp_path, projection):
    cfg = {**SMALL_CFG, "projection_type": projection, "dim": 384 if projection is None else 70}
    ckpt, lit = release_dict(cfg)
    ck = load_released_checkpoint(write(tmp_path, ckpt))
    assert ck.config_overrides["model"]["projection"] == (projection or "none")
    assert set(ck.head_state) == ({"linear.weight", "linear.bias"} if projection else set())
    head, cluster_probe, linear_probe = ck.build_modules()
    feats = torch.randn(1, 384, 3, 4)
    with torch.no_grad():
        torch.testing.assert_close(head.eval()(feats)[1], lit.eval().code(feats), rtol=0, atol=1e-5)
    assert cluster_probe.clusters.shape == (3, 70 if projection else 384)


def test_config_overrides_of_the_cocostuff_release(tmp_path):
    ckpt, _ = release_dict(COCO_CFG, n_classes=27)
    ck = load_released_checkpoint(write(tmp_path, ckpt))
    assert ck.backbone_name == "dino_vitb8"
    assert ck.config_overrides == {
        "data": {"dataset": "cocostuff27", "crop": "five", "crop_ratio": 0.5, "res": 224, "num_neighbors": 7},
        "model": {"backbone": "dino_vitb8", "dim": 90, "projection": "nonlinear", "dropout": 0.1,
                  "n_classes": 27, "n_clusters": 27},
        "loss": {"lambda_self": 0.1, "lambda_knn": 1.0, "lambda_rand": 0.1538476246415498, "b_self": 0.12,
                 "b_knn": 0.2, "b_rand": 1.0, "pointwise": "release", "zero_clamp": True, "stabilize": False,
                 "feature_samples": 11, "neg_samples": 5},
        "train": {"batch_size": 32, "iterations": 7000, "lr": 0.0005},
    }


def test_config_value_translation(tmp_path):
    cfg = {**SMALL_CFG, "dataset_name": "cityscapes", "pointwise": False, "crop_type": "None", "stabalize": True,
           "dino_patch_size": 16, "correspondence_weight": 2.0, "lr": "5e-4", "extra_clusters": 2}
    ckpt, _ = release_dict(cfg, n_classes=27)
    ck = load_released_checkpoint(write(tmp_path, ckpt))
    over = ck.config_overrides
    assert ck.backbone_name == "dino_vits16"
    assert over["data"]["dataset"] == "cityscapes27" and over["data"]["crop"] == "none"
    assert over["loss"]["pointwise"] == "off" and over["loss"]["stabilize"] is True
    assert (over["loss"]["lambda_self"], over["loss"]["lambda_knn"], over["loss"]["lambda_rand"]) == (1.34, 0.5, 1.26)
    assert over["train"]["lr"] == 0.0005
    assert over["model"]["n_clusters"] == 29 and over["model"]["n_classes"] == 27


@pytest.mark.parametrize("key", ["net.cluster3.0.weight", "net.model.head.weight", "cluster_probe.centers"])
def test_unknown_key_is_an_error(tmp_path, key):
    ckpt, _ = release_dict(SMALL_CFG)
    ckpt["state_dict"][key] = torch.zeros(3)
    path = write(tmp_path, ckpt)
    with pytest.raises(StegoError) as e:
        load_released_checkpoint(path)
    one_line_error(e, str(path), key, "unknown")


def test_mlp_weights_under_a_linear_config_are_unknown_keys(tmp_path):
    ckpt, _ = release_dict(SMALL_CFG)
    ckpt["hyper_parameters"]["cfg"] = {**SMALL_CFG, "projection_type": "linear"}
    with pytest.raises(StegoError) as e:
        load_released_checkpoint(write(tmp_path, ckpt))
    one_line_error(e, "net.cluster2.0.bias", "net.cluster2.2.weight", "'linear'")


@pytest.mark.parametrize("key", ["linear_probe.bias", "net.cluster2.2.weight", "cluster_probe.clusters",
                                 "net.model.norm.weight"])
def test_missing_key_is_an_error(tmp_path, key):
    ckpt, _ = release_dict(SMALL_CFG)
    del ckpt["state_dict"][key]
    path = write(tmp_path, ckpt)
    with pytest.raises(StegoError) as e:
        load_released_checkpoint(path)
    one_line_error(e, str(path), key, "missing")


@pytest.mark.parametrize("change, needle", [
    ({"dim": 90}, "net.cluster1.0.weight (70, 384, 1, 1) != (90, 384, 1, 1)"),
    ({"dino_patch_size": 16}, "net.model.patch_embed.proj.weight (384, 3, 8, 8) != (384, 3, 16, 16)"),
    ({"model_type": "vit_base"}, "net.model.norm.weight (384,) != (768,)"),
    ({"extra_clusters": 1}, "cluster_probe.clusters (3, 70) != (4, 70)"),
])
def test_tensors_that_disagree_with_the_config(tmp_path, change, needle):
    ckpt, _ = release_dict(SMALL_CFG)
    ckpt["hyper_parameters"]["cfg"] = {**SMALL_CFG, **change}
    path = write(tmp_path, ckpt)
    with pytest.raises(StegoError) as e:
        load_released_checkpoint(path)
    one_line_error(e, str(path), needle, "disagree")


def test_n_classes_that_disagrees_with_the_probes(tmp_path):
    ckpt, _ = release_dict(SMALL_CFG, n_classes=3)
    ckpt["hyper_parameters"]["n_classes"] = 27
    with pytest.raises(StegoError) as e:
        load_released_checkpoint(write(tmp_path, ckpt))
    one_line_error(e, "linear_probe.weight (3, 70, 1, 1) != (27, 70, 1, 1)")


@pytest.mark.parametrize("change, needle", [
    ({"model_type": None}, "model_type"),
    ({"model_type": "vit_large"}, "vit_large"),
    ({"arch": "feature-pyramid"}, "feature-pyramid"),
    ({"projection_type": "quadratic"}, "quadratic"),
    ({"dim": "ninety"}, "dim='ninety'"),
    ({"pointwise": "yes"}, "pointwise='yes'"),
])
def test_config_errors(tmp_path, change, needle):
    ckpt, _ = release_dict(SMALL_CFG)
    cfg = {**SMALL_CFG, **change}
    if change.get("model_type", "") is None:
        del cfg["model_type"]
    ckpt["hyper_parameters"]["cfg"] = cfg
    path = write(tmp_path, ckpt)
    with pytest.raises(StegoError) as e:
        load_released_checkpoint(path)
    one_line_error(e, str(path), needle)


def test_damaged_and_missing_files_say_why(tmp_path):
    good = write(tmp_path, release_dict(SMALL_CFG)[0])
    data = good.read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with zipfile.ZipFile(good) as z:  # a byte inside the first tensor's data: the zip is whole, a CRC is not
        info = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    flipped = bytearray(data)
    flipped[info.header_offset + 30 + name_len + extra_len] ^= 0xFF
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(bytes(flipped))
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    html = tmp_path / "page.ckpt"
    html.write_bytes(b"<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    for path, cause in ((truncated, "is truncated"), (damaged, "fails the zip CRC check"), (empty, "is empty"),
                        (garbage, "not a torch checkpoint"), (html, "an HTML page")):
        with pytest.raises(StegoError) as e:
            load_released_checkpoint(path)
        msg = one_line_error(e, str(path), cause, "again")
        assert path is damaged or "damaged" not in msg.replace(str(path), "")
    with pytest.raises(MissingFileError) as e:
        load_released_checkpoint(tmp_path / "cocostuff27_vit_base_5.ckpt")
    one_line_error(e, "cocostuff27_vit_base_5.ckpt", "stego-public/saved_models")
    not_lightning = write(tmp_path, {"model": torch.zeros(2)}, "plain.ckpt")
    with pytest.raises(StegoError) as e:
        load_released_checkpoint(not_lightning)
    one_line_error(e, str(not_lightning), "state_dict")
    no_hparams = release_dict(SMALL_CFG)[0]
    del no_hparams["hyper_parameters"]
    path = write(tmp_path, no_hparams, "no_hparams.ckpt")
    with pytest.raises(StegoError) as e:
        load_released_checkpoint(path)
    one_line_error(e, str(path), "hyper_parameters")


def test_backbone_state_loads_into_our_dino_vit(tmp_path):
    """The stripped `net.model.*` tensors of a full ViT-S/8 (DINO's key names) load strictly into our backbone."""
    torch.manual_seed(0)
    source = timm.create_model("vit_small_patch8_224", pretrained=False, num_classes=0, weight_init="skip")
    with torch.no_grad():
        for param in source.parameters():  # "skip" may leave memory uninitialised (NaN != NaN)
            param.normal_(std=0.02)
    ckpt, _ = release_dict(SMALL_CFG, backbone=source.state_dict())
    ck = load_released_checkpoint(write(tmp_path, ckpt))
    rebuilt = build_backbone(ck.backbone_name, weights=ck.backbone_state).trunk.state_dict()
    assert set(rebuilt) == set(source.state_dict())
    assert all(torch.equal(rebuilt[k], v) for k, v in source.state_dict().items())


def test_a_bare_released_name_is_found_in_the_release_folder(tmp_path, monkeypatch):
    """`stego eval --checkpoint cocostuff27_vit_base_5.ckpt` (as the README writes it) finds the file where
    `stego weights download --release` put it: $STEGO_RELEASE_DIR, else ./saved_models."""
    from stego.released import released_path

    folder = tmp_path / "releases"
    folder.mkdir()
    written = write(folder, release_dict(SMALL_CFG)[0], "cocostuff27_vit_base_5.ckpt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STEGO_RELEASE_DIR", str(folder))
    assert released_path("cocostuff27_vit_base_5.ckpt") == written
    assert load_released_checkpoint("cocostuff27_vit_base_5.ckpt").n_classes == 3
    monkeypatch.delenv("STEGO_RELEASE_DIR")
    with pytest.raises(MissingFileError) as e:
        released_path("cocostuff27_vit_base_5.ckpt")
    one_line_error(e, "stego weights download --release cocostuff27_vit_base_5.ckpt", "saved_models")
