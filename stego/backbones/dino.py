"""DINO ViTs (ViT-S/16, S/8, B/16, B/8): timm's architecture run by our own forward, so that position embeddings at
another size are resized with DINO's rule (docs/protocol.md §1), not timm's antialiased size-based resample.

Features: last-block tokens after the final LayerNorm, class token dropped, as `[B, C, H/p, W/p]`.
"""
import functools
import math

import timm
import torch
import torch.nn.functional as F
from torch import Tensor

from stego.errors import StegoError

from .registry import Backbone, BackboneSpec, register_backbone
from .weights import load_weights


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


def build_dino(spec: BackboneSpec, weights=None, weights_dir=None) -> ViTBackbone:
    """timm's ViT of `spec`, wrapped and filled with `weights` (timm's init is skipped when a load replaces it)."""
    random_init = isinstance(weights, str) and weights == "random"
    vit = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, weight_init="" if random_init else "skip")
    return load_weights(ViTBackbone(spec.name, spec.dim, spec.patch, vit), spec, weights, weights_dir)


def _spec(name: str, timm_name: str, dim: int, patch: int, stem: str) -> BackboneSpec:
    url = f"https://dl.fbaipublicfiles.com/dino/{stem}/{stem}.pth"
    return BackboneSpec(name, "vit", dim, patch, f"{stem}.pth", url, timm_name, family="dino")


SPECS = (
    _spec("dino_vits16", "vit_small_patch16_224", 384, 16, "dino_deitsmall16_pretrain"),
    _spec("dino_vits8", "vit_small_patch8_224", 384, 8, "dino_deitsmall8_300ep_pretrain"),
    _spec("dino_vitb16", "vit_base_patch16_224", 768, 16, "dino_vitbase16_pretrain"),
    _spec("dino_vitb8", "vit_base_patch8_224", 768, 8, "dino_vitbase8_pretrain"),
)
for _s in SPECS:
    register_backbone(_s, functools.partial(build_dino, _s))
