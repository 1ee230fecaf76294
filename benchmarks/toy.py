"""Toy scale: every benchmark row mapped onto a small synthetic world so the whole harness runs on a CPU in CI.

A row's config keeps its switches (loss weights and shifts, 0-clamp, spatial centering, five-crop, projection,
CRF) and loses its size: synthetic scenes at 32 px, a few iterations, a tiny head. Backbones map by family:
DINO ViTs -> `filterbank` (a fixed colour/texture featurizer in which the synthetic classes are findable, the
stand-in for a good self-supervised backbone); ResNet-50s (supervised, MoCo v2) -> `toy_vit` (a random-init
two-block ViT, seeded, the stand-in for a different, weaker backbone). Released checkpoints do not exist here:
a 'release' row trains its release preset at toy scale instead. Toy runs test the pipeline, not paper numbers.
"""
import math
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer

from stego.backbones import BACKBONES, Backbone, BackboneSpec, build_backbone, register_backbone, spec_of
from stego.config import Config, from_dict, set_dotted
from stego.data.fivecrop import five_crop
from stego.data.synthetic import SceneSpec, make_scenes
from stego.projection import FIXED

SPEC = SceneSpec(n_classes=5, n_train=16, n_val=4, size=64)
"""The toy world: 16 training scenes (80 five-crops), 4 validation scenes, 5 classes."""
SEED = 0

BACKBONE_MAP = {"dino_vits8": "filterbank", "dino_vitb8": "filterbank", "dino_vits16": "filterbank",
                "dino_vitb16": "filterbank", "dinov2_vits14": "filterbank", "dinov2_vitb14": "filterbank",
                "dinov3_vits16": "filterbank", "dinov3_vitb16": "filterbank", "mocov2_r50": "toy_vit",
                "r50_supervised": "toy_vit"}

SETTINGS = {
    "data.dataset": "synthetic", "data.res": 32, "data.workers": 0, "data.knn_k": 8, "data.n_classes": SPEC.n_classes,
    "model.weights": "random", "loss.feature_samples": 5,
    "train.batch_size": 4, "train.iterations": 3, "train.checkpoint_every": 1000, "train.log_every": 1,
    "train.hist_every": 1, "train.val_every": 0, "train.device": "cpu",
    "eval.res": 32, "eval.batch_size": 4, "eval.crf_workers": 0, "eval.max_images": 0,
}
"""Sizes of a toy run; everything else comes from the row's config."""
TOY_DIM = 8


def toy_dim(dim: int, channels: int, toy_channels: int) -> int:
    """A reduction's dimension on the toy backbone: the same place on a log scale between 1 and the channels
    (a 90-of-768 reduction becomes 7 of 19), so a dimension sweep keeps its order and spread."""
    return max(1, min(toy_channels, round(toy_channels ** (math.log(dim) / math.log(channels)))))
VAL_EVERY = 1


class ToyViT(Backbone):
    """A random-init two-block ViT (patch 4, 32 channels), the same weights on every build (fixed seed)."""

    def __init__(self, seed: int = 0):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vit = VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=0,
                                    dynamic_img_size=True)
        super().__init__("toy_vit", 32, 4, vit)

    def extract(self, images):
        b, _, h, w = images.shape
        tokens = self.trunk.forward_features(images)[:, self.trunk.num_prefix_tokens:]
        return tokens.transpose(1, 2).reshape(b, self.dim, h // self.patch, w // self.patch)


def register_toy_backbones() -> None:
    """Make `toy_vit` buildable by name (idempotent; `filterbank` is built into stego.backbones)."""
    if "toy_vit" not in BACKBONES:
        register_backbone(BackboneSpec("toy_vit", "custom", 32, 4), lambda weights=None, weights_dir=None: ToyViT())


def make_toy_data(root) -> Path:
    """The synthetic scenes and the five-crops of their training split under `root` (kept if already there)."""
    root = make_scenes(root, SPEC, seed=SEED)
    five_crop("imagefolder", root, "train", crop_ratio=0.5, workers=1, n_classes=SPEC.n_classes)
    return root


def toy_config(cfg: Config, root, select_on_val: bool = False) -> Config:
    """`cfg` moved onto the toy world under `root`: switches kept, sizes shrunk, backbone mapped (BACKBONE_MAP)."""
    register_toy_backbones()
    values = cfg.to_dict()
    for key, value in SETTINGS.items():
        set_dotted(values, key, value)
    set_dotted(values, "data.root", str(root))
    toy_backbone = BACKBONE_MAP.get(cfg.model.backbone, cfg.model.backbone)
    set_dotted(values, "model.backbone", toy_backbone)
    if cfg.model.projection in FIXED:
        toy_channels = build_backbone(toy_backbone, "random").dim  # the filter bank's width is set at build time
        set_dotted(values, "model.dim", toy_dim(cfg.model.dim, spec_of(cfg.model.backbone).dim, toy_channels))
    elif cfg.model.projection != "none":
        set_dotted(values, "model.dim", TOY_DIM)
    if select_on_val:
        set_dotted(values, "train.select_on_val", True)
        set_dotted(values, "train.val_every", VAL_EVERY)
    return from_dict(values, source=f"toy version of {cfg.name}")
