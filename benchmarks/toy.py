"""Toy scale: every benchmark row mapped onto the CPU demo's world, where STEGO demonstrably learns, so the whole
harness runs on a CPU in CI and each of the paper's switches is exercised.

The world is the demo's (stego/demo.py, stego/presets/synthetic_demo.yaml): its seeded synthetic scenes (5 classes,
each a family of appearance modes sharing a weaker grating signature) seen through the fixed `filterbank`
featurizer, and the loss weights and shifts the demo set for that featurizer by the paper's balance heuristic
(A.11, read from the training log, never from labels). A row keeps its switches (0-clamp, spatial centering,
five-crop, projection, CRF, stabilize, which loss terms are on, its backbone family) and takes the world's sizes
and values: the presets' λ and b were tuned for DINO on real images, and in this world they push every pair apart
(/work/shared/SYNTHETIC.md; docs/benchmarks.md has the measurement). Backbones map by family: DINO ViTs ->
`filterbank`, the stand-in for a good self-supervised backbone; ResNet-50s (supervised, MoCo v2) -> `toy_vit` (a
seeded random-init two-block ViT, a different, weaker backbone). A 'release' row trains its release preset at toy
scale (no released files here). Toy runs test the pipeline and the directions of the large effects, never the
paper's numbers.
"""
import math
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer

from stego.backbones import BACKBONES, Backbone, BackboneSpec, build_backbone, register_backbone, spec_of
from stego.config import Config, from_dict, load_config, set_dotted
from stego.data.fivecrop import five_crop
from stego.data.synthetic import make_scenes
from stego.demo import SCENES
from stego.projection import FIXED

SPEC = SCENES
"""The demo's scenes: 300 training scenes of 96 px (1,500 five-crops of 48 px), 50 validation scenes, 5 classes."""
SEED = 0
WORLD = "synthetic_demo"
"""The preset whose values (WORLD_KEYS) a toy row takes: the demo's, tuned for this world."""

BACKBONE_MAP = {"dino_vits8": "filterbank", "dino_vitb8": "filterbank", "dino_vits16": "filterbank",
                "dino_vitb16": "filterbank", "dinov2_vits14": "filterbank", "dinov2_vitb14": "filterbank",
                "dinov3_vits16": "filterbank", "dinov3_vitb16": "filterbank", "mocov2_r50": "toy_vit",
                "r50_supervised": "toy_vit"}

WORLD_KEYS = ("data.res", "data.knn_k", "model.weights", "model.dim", "loss.lambda_self", "loss.lambda_knn",
              "loss.lambda_rand", "loss.b_self", "loss.b_knn", "loss.b_rand", "loss.feature_samples",
              "loss.neg_samples", "train.probe_lr", "eval.res")
"""What a toy row takes from the world preset; a loss weight the row sets to 0 (an ablation) stays 0, and a
head-less baseline (projection 'none') keeps its raw feature dimension."""
SETTINGS = {
    "data.dataset": "synthetic", "data.workers": 0, "data.in_memory": True, "data.n_classes": SPEC.n_classes,
    "train.batch_size": 8, "train.iterations": 400, "train.lr": 0.003, "train.checkpoint_every": 1000,
    "train.log_every": 10, "train.hist_every": 100, "train.val_every": 0, "train.device": "cpu", "train.threads": 1,
    "eval.batch_size": 16, "eval.crf_workers": 0, "eval.max_images": 0, "eval.cluster_restarts": 3,
}
"""Sizes of a toy run, chosen for time (about 20 s of training on one core): 400 iterations at batch 8 instead of the
demo's 600 at 32, with three times its learning rate (at 1e-3 the head had not passed the raw features by then;
docs/benchmarks.md has the measurements), three cluster-probe restarts instead of five."""
VAL_EVERY = 100
"""Validation interval of toy runs that select their checkpoint on validation."""


def toy_dim(dim: int, channels: int, toy_channels: int) -> int:
    """A reduction's dimension on the toy backbone: the same place on a log scale between 1 and the channels
    (a 90-of-768 reduction becomes 7 of 19), so a dimension sweep keeps its order and spread."""
    return max(1, min(toy_channels, round(toy_channels ** (math.log(dim) / math.log(channels)))))


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
    """The world's scenes and the five-crops of their training split under `root` (kept if already there)."""
    root = make_scenes(root, SPEC, seed=SEED)
    five_crop("imagefolder", root, "train", crop_ratio=0.5, workers=1, n_classes=SPEC.n_classes)
    return root


def toy_config(cfg: Config, root, select_on_val: bool = False) -> Config:
    """`cfg` moved onto the toy world under `root`: switches kept, sizes and world values taken (module doc),
    backbone mapped (BACKBONE_MAP)."""
    register_toy_backbones()
    values, world = cfg.to_dict(), load_config(WORLD).to_dict()
    for key in WORLD_KEYS:
        section, name = key.split(".")
        if (key.startswith("loss.lambda") and not values[section][name]) or \
                (key == "model.dim" and cfg.model.projection == "none"):
            continue
        set_dotted(values, key, world[section][name])
    values["follows"] = world["follows"]  # the values now follow the world's preset, not the row's source
    for key, value in SETTINGS.items():
        set_dotted(values, key, value)
    set_dotted(values, "data.root", str(root))
    toy_backbone = BACKBONE_MAP.get(cfg.model.backbone, cfg.model.backbone)
    set_dotted(values, "model.backbone", toy_backbone)
    if cfg.model.projection in FIXED:
        toy_channels = build_backbone(toy_backbone, "random").dim  # the filter bank's width is set at build time
        set_dotted(values, "model.dim", toy_dim(cfg.model.dim, spec_of(cfg.model.backbone).dim, toy_channels))
    if select_on_val:
        set_dotted(values, "train.select_on_val", True)
        set_dotted(values, "train.val_every", VAL_EVERY)
    return from_dict(values, source=f"toy version of {cfg.name}")
