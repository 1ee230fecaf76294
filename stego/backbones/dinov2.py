"""DINOv2 ViTs (S/14, B/14, L/14, g/14, each also with 4 registers): timm's architectures, features as the authors'
code computes them: last block, final LayerNorm, every prefix token (class, registers) dropped, [B, C, H/14, W/14].

The position embeddings are stored for a 37x37 grid (the 518 px training size). At another input size the authors
resize them in one of two ways, and so do we (the class entry is kept as is in both):
- without registers: bicubic, no antialias, called with scale_factor ((H/14 + 0.1)/37, (W/14 + 0.1)/37), skipped
  only when there are 37*37 tokens and H == W. That is DINO v1's rule, so `dino_resize_pos_embed` runs it; timm's
  `dynamic_img_size` resize (size-based, antialiased, no offset) gives other numbers.
- with registers: bicubic to the size (H/14, W/14), antialias on, no offset, the same skip. That is timm's resize,
  so timm's own forward runs. The registers get no position embedding in either code.
The giant model's FFN is a SwiGLU: one packed linear to [gate; value] (4096 each), silu(gate) * value, a linear out.
"""
import functools

import timm
from torch import Tensor

from .dino import ViTBackbone
from .registry import Backbone, BackboneSpec, register_backbone
from .weights import load_weights

GRID_IMG_SIZE = 518
"""Training size of the released weights: their position embeddings hold a 37x37 grid."""
URL = "https://dl.fbaipublicfiles.com/dinov2"


class PrefixTokenBackbone(Backbone):
    """A timm ViT run by its own forward (last block, final norm); its `num_prefix_tokens` dropped, [B,C,H/p,W/p]."""

    def extract(self, images: Tensor) -> Tensor:
        b, _, h, w = images.shape
        tokens = self.trunk.forward_features(images)[:, self.trunk.num_prefix_tokens:]
        return tokens.transpose(1, 2).reshape(b, -1, h // self.patch, w // self.patch)


def adapt_dinov2(state: dict) -> dict:
    """The authors' key names -> timm's; timm-keyed state dicts pass unchanged.

    mask_token (masked-image pretraining only) goes; with registers, register_tokens -> reg_token and the class
    entry of pos_embed is folded into cls_token (timm adds position embeddings to patch tokens only: same sums);
    the giant's mlp.w12 / mlp.w3 -> mlp.fc1 / mlp.fc2 (timm's packed SwiGLU takes the same [gate; value] order).
    """
    state = {k: v for k, v in state.items() if k != "mask_token"}
    if "register_tokens" in state:
        pos_embed = state["pos_embed"]
        state["reg_token"] = state.pop("register_tokens")
        state["cls_token"] = state["cls_token"] + pos_embed[:, :1]
        state["pos_embed"] = pos_embed[:, 1:]
    return {k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2."): v for k, v in state.items()}


def build_dinov2(spec: BackboneSpec, weights=None, weights_dir=None) -> Backbone:
    """timm's DINOv2 ViT of `spec` with the 37x37 grid, run by the authors' position rule, filled with `weights`."""
    random_init = isinstance(weights, str) and weights == "random"
    vit = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, img_size=GRID_IMG_SIZE,
                            dynamic_img_size=True, weight_init="" if random_init else "skip")
    wrapper = ViTBackbone if vit.reg_token is None else PrefixTokenBackbone
    return load_weights(wrapper(spec.name, spec.dim, spec.patch, vit), spec, weights, weights_dir)


def _spec(size: str, timm_size: str, dim: int, registers: bool) -> BackboneSpec:
    stem = f"dinov2_vit{size}14"
    reg = "_reg4" if registers else ""
    file = f"{stem}{reg}_pretrain.pth"
    return BackboneSpec(stem + ("_reg" if registers else ""), "vit", dim, 14, file, f"{URL}/{stem}/{file}",
                        f"vit_{timm_size}_patch14{reg}_dinov2", family="dinov2", adapt=adapt_dinov2)


SPECS = tuple(
    _spec(size, timm_size, dim, registers)
    for size, timm_size, dim in (("s", "small", 384), ("b", "base", 768), ("l", "large", 1024), ("g", "giant", 1536))
    for registers in (False, True)
)
for _s in SPECS:
    register_backbone(_s, functools.partial(build_dinov2, _s))
