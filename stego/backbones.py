"""Frozen feature extractors behind one interface: `features(images) -> [B, C, H/p, W/p]` (PROTOCOL §1).

DINO ViTs are timm VisionTransformers run by our own forward so that position embeddings are resized with
DINO's rule (bicubic, scale_factor=((h0+0.1)/g, (w0+0.1)/g)), not timm's antialiased size-based resample.
ResNet-50 backbones (supervised, MoCo v2) return the final-stage (layer4) map at stride 32. Weight files are
pickles: load only files from sources you trust; they are read with `torch.load(weights_only=True)`.
"""
import argparse
import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import Callable

import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from stego.errors import MissingFileError, StegoError

log = logging.getLogger(__name__)

WEIGHTS_ENV = "STEGO_WEIGHTS_DIR"
OFFLINE_ENVS = ("STEGO_OFFLINE", "HF_HUB_OFFLINE")


class MissingWeightsError(MissingFileError):
    """A backbone weight file is not on disk and cannot be downloaded; the message says what and where."""


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What a backbone name means: architecture kind ('vit', 'resnet' or 'custom'), output shape, weights."""

    name: str
    arch: str
    dim: int
    patch: int
    weight_file: str | None = None
    url: str | None = None
    timm_name: str | None = None


def _dino(name, timm_name, dim, patch, stem):
    url = f"https://dl.fbaipublicfiles.com/dino/{stem}/{stem}.pth"
    return BackboneSpec(name, "vit", dim, patch, f"{stem}.pth", url, timm_name)


BACKBONES: dict[str, BackboneSpec] = {
    s.name: s
    for s in (
        _dino("dino_vits16", "vit_small_patch16_224", 384, 16, "dino_deitsmall16_pretrain"),
        _dino("dino_vits8", "vit_small_patch8_224", 384, 8, "dino_deitsmall8_300ep_pretrain"),
        _dino("dino_vitb16", "vit_base_patch16_224", 768, 16, "dino_vitbase16_pretrain"),
        _dino("dino_vitb8", "vit_base_patch8_224", 768, 8, "dino_vitbase8_pretrain"),
        BackboneSpec(
            "r50_supervised", "resnet", 2048, 32, "resnet50-0676ba61.pth",
            "https://download.pytorch.org/models/resnet50-0676ba61.pth",
        ),
        BackboneSpec(
            "mocov2_r50", "resnet", 2048, 32, "moco_v2_800ep_pretrain.pth.tar",
            "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar",
        ),
    )
}

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}


class Backbone(nn.Module):
    """A frozen feature extractor: always eval, no gradients, images [B,3,H,W] -> features [B,dim,H/p,W/p].

    Input must be ImageNet-normalised (the caller's job). Subclasses override `extract`; the default runs
    `trunk`, so any module with that contract can be wrapped (see `register_backbone`).
    """

    def __init__(self, name: str, dim: int, patch: int, trunk: nn.Module):
        super().__init__()
        self.name, self.dim, self.patch = name, dim, patch
        self.trunk = trunk
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True):
        """Stay in eval mode whatever is asked: the backbone is frozen (dropout and BN statistics off)."""
        return super().train(False)

    def extract(self, images: Tensor) -> Tensor:
        return self.trunk(images)

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4:
            raise StegoError(f"{self.name}: expected images [B,3,H,W], got shape {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.patch or w % self.patch:
            raise StegoError(
                f"{self.name}: image size {h}x{w} is not divisible by the patch/stride {self.patch}; "
                f"resize or crop to a multiple of {self.patch}"
            )
        with torch.no_grad():
            feats = self.extract(images)
        want = (images.shape[0], self.dim, h // self.patch, w // self.patch)
        if tuple(feats.shape) != want:
            raise StegoError(f"{self.name}: features have shape {tuple(feats.shape)}, expected {want}")
        return feats

    features = forward


class ViTBackbone(Backbone):
    """DINO ViT: last-block tokens after the final LayerNorm, class token dropped, DINO position-embedding resize."""

    def extract(self, images: Tensor) -> Tensor:
        vit = self.trunk
        b, _, h, w = images.shape
        h0, w0 = h // self.patch, w // self.patch
        tokens = vit.patch_embed.norm(vit.patch_embed.proj(images).flatten(2).transpose(1, 2))
        tokens = torch.cat([vit.cls_token.expand(b, -1, -1), tokens], dim=1)
        tokens = vit.pos_drop(tokens + dino_resize_pos_embed(vit.pos_embed, h0, w0))
        tokens = vit.norm(vit.blocks(tokens))
        return tokens[:, 1:].transpose(1, 2).reshape(b, -1, h0, w0)


class ResNetBackbone(Backbone):
    """ResNet-50 final stage (layer4) at stride 32. Not the release's feature-pyramid variant (PROTOCOL §1)."""

    def extract(self, images: Tensor) -> Tensor:
        r = self.trunk
        x = r.maxpool(r.relu(r.bn1(r.conv1(images))))
        return r.layer4(r.layer3(r.layer2(r.layer1(x))))


def dino_resize_pos_embed(pos_embed: Tensor, h0: int, w0: int) -> Tensor:
    """Resize [1, 1+g*g, C] position embeddings to an h0 x w0 token grid exactly as DINO does.

    Bicubic, no antialias, called with scale_factor=((h0+0.1)/g, (w0+0.1)/g) (so source coordinates follow the
    scale factors, not the sizes); unchanged when h0*w0 == g*g and h0 == w0; the class-token embedding is kept.
    """
    n = pos_embed.shape[1] - 1
    g = math.isqrt(n)
    if g * g != n:
        raise StegoError(f"position embedding has {n} patch entries, not a square grid")
    if h0 * w0 == n and h0 == w0:
        return pos_embed
    dim = pos_embed.shape[-1]
    grid = pos_embed[:, 1:].reshape(1, g, g, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(
        grid, scale_factor=((h0 + 0.1) / g, (w0 + 0.1) / g), mode="bicubic", align_corners=False, antialias=False
    )
    if grid.shape[-2:] != (h0, w0):
        raise StegoError(f"DINO position-embedding resize gave {tuple(grid.shape[-2:])}, expected {(h0, w0)}")
    return torch.cat([pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, dim)], dim=1)


def register_backbone(spec_or_name: BackboneSpec | str, factory: Callable[..., nn.Module]) -> None:
    """Make `build_backbone(name)` call `factory(weights=..., weights_dir=...)` (e.g. a hand-made featurizer).

    The factory returns a Backbone, or any module mapping images to [B,dim,H/p,W/p]; the latter is wrapped,
    taking dim/patch from the spec, or from the module's `dim` and `patch` attributes when only a name is given.
    """
    spec = spec_or_name if isinstance(spec_or_name, BackboneSpec) else BackboneSpec(spec_or_name, "custom", 0, 0)
    BACKBONES[spec.name] = spec
    _FACTORIES[spec.name] = factory


def _filterbank(weights=None, weights_dir=None) -> nn.Module:
    """The built-in weightless colour/texture featurizer of synthetic scenes (stego/filterbank.py), imported lazily."""
    from .filterbank import build_filterbank

    return build_filterbank(weights=weights, weights_dir=weights_dir)


register_backbone("filterbank", _filterbank)


def build_backbone(name: str, weights=None, weights_dir=None) -> Backbone:
    """Build a frozen backbone by name.

    weights: None -> the official file found by `resolve_weight_file` (downloaded when online); "random" ->
    random init (tests, smoke runs); a path -> that file; a dict -> a state dict (e.g. from a STEGO checkpoint).
    """
    if name not in BACKBONES:
        raise StegoError(f"unknown backbone {name!r}; choose one of {', '.join(sorted(BACKBONES))}")
    spec = BACKBONES[name]
    random_init = isinstance(weights, str) and weights == "random"
    if name in _FACTORIES:
        return _wrap_custom(spec, _FACTORIES[name](weights=weights, weights_dir=weights_dir))
    if spec.arch == "vit":
        # timm's init takes seconds for ViT-B; skip it when a strict load will overwrite every parameter
        init = "" if random_init else "skip"
        vit = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, weight_init=init)
        model = ViTBackbone(name, spec.dim, spec.patch, vit)
    else:
        trunk = torchvision.models.resnet50(weights=None)
        trunk.fc = nn.Identity()
        model = ResNetBackbone(name, spec.dim, spec.patch, trunk)
    if random_init:
        return model
    if isinstance(weights, dict):
        source = "the given state dict"
        state = load_backbone_state_dict(weights, spec.arch)
    else:
        path = Path(weights) if weights is not None else resolve_weight_file(name, weights_dir)
        source = str(path)
        state = load_backbone_state_dict(path, spec.arch)
    _load_strict(model.trunk, state, source, spec)
    log.info("loaded %s weights from %s", name, source)
    return model


def _wrap_custom(spec: BackboneSpec, module: nn.Module) -> Backbone:
    if isinstance(module, Backbone):
        return module
    dim = spec.dim or getattr(module, "dim", 0)
    patch = spec.patch or getattr(module, "patch", 0)
    if not dim or not patch:
        raise StegoError(
            f"backbone {spec.name!r}: register it with a BackboneSpec or give the module dim and patch"
        )
    return Backbone(spec.name, dim, patch, module)


def _offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in OFFLINE_ENVS)


def _search_dirs(weights_dir) -> list[Path]:
    dirs = [weights_dir, os.environ.get(WEIGHTS_ENV), Path(torch.hub.get_dir()) / "checkpoints"]
    return [Path(d).expanduser() for d in dirs if d]


def resolve_weight_file(name: str, weights_dir=None) -> Path:
    """Find the official weight file of `name` in weights_dir, $STEGO_WEIGHTS_DIR or the torch hub checkpoint
    dir; download it into the first of those when online. Raises MissingWeightsError (one line) otherwise."""
    if name not in BACKBONES or not BACKBONES[name].weight_file:
        raise StegoError(f"backbone {name!r} has no official weight file; pass weights=PATH or 'random'")
    spec = BACKBONES[name]
    dirs = _search_dirs(weights_dir)
    for d in dirs:
        if (d / spec.weight_file).is_file():
            return d / spec.weight_file
    where = f"put {spec.weight_file} (from {spec.url}) in ${WEIGHTS_ENV} or pass --weights PATH"
    searched = ", ".join(str(d) for d in dirs)
    if _offline():
        raise MissingWeightsError(
            f"{name}: weight file {spec.weight_file} not found and offline; {where} (searched {searched})"
        )
    target = dirs[0] / spec.weight_file
    log.info("downloading %s to %s", spec.url, target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(spec.url, str(target), progress=True)
    except Exception as e:
        raise MissingWeightsError(f"{name}: could not download {spec.weight_file} ({e}); {where}") from e
    return target


def _read(path: Path) -> dict:
    if not path.is_file():
        raise MissingWeightsError(f"weight file {path} does not exist; check the path given to --weights")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StegoError(
            f"cannot read weight file {path} ({reason}); re-download it or pass another --weights"
        ) from e
    if not isinstance(obj, dict):
        raise StegoError(f"weight file {path} holds a {type(obj).__name__}, not a state dict")
    return obj


def load_backbone_state_dict(path_or_dict, kind: str) -> dict:
    """Read a weight file (or take a dict) and return the backbone's own state dict for `kind` ('vit'/'resnet').

    Unwraps 'teacher' / 'state_dict' / 'model' containers (DINO, MoCo, Lightning); strips 'module.'; keeps only
    the keys under 'net.model.' (STEGO release), 'backbone.' (DINO) or 'encoder_q.' (MoCo) when present;
    drops classifier heads ('head.*' for ViTs, 'fc.*' for ResNets, so MoCo's MLP head goes too).
    """
    sd = path_or_dict if isinstance(path_or_dict, dict) else _read(Path(path_or_dict))
    source = "the given state dict" if isinstance(path_or_dict, dict) else str(path_or_dict)
    unwrapped = True
    while unwrapped:
        unwrapped = False
        for key in ("teacher", "state_dict", "model"):
            if isinstance(sd.get(key), dict):
                sd, unwrapped = sd[key], True
                break
    sd = {k.removeprefix("module."): v for k, v in sd.items() if isinstance(k, str) and isinstance(v, Tensor)}
    for prefix in ("net.model.", "backbone.", "encoder_q."):
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    head = {"vit": "head.", "resnet": "fc."}.get(kind)
    if head is None:
        raise StegoError(f"unknown backbone kind {kind!r}; expected 'vit' or 'resnet'")
    sd = {k: v for k, v in sd.items() if not k.startswith(head)}
    if not sd:
        raise StegoError(f"{source} holds no {kind} backbone tensors; is it the right weight file?")
    return sd


def _load_strict(trunk: nn.Module, state: dict, source: str, spec: BackboneSpec) -> None:
    own = trunk.state_dict()
    # old torchvision files predate BatchNorm's num_batches_tracked; BatchNorm fills it in when absent
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        parts = [
            f"{label} {len(keys)} (e.g. {', '.join(keys[:3])})"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
            if keys
        ]
        raise StegoError(
            f"{source} does not match {spec.name}: {'; '.join(parts)}; "
            f"use the {spec.weight_file or 'matching'} weights for this backbone"
        )
    trunk.load_state_dict(state, strict=True)
