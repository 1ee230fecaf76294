"""DINOv3 ViT-S/16, S+/16, B/16, L/16 and ConvNeXt T/S/B/L (LVD-1689M weights): timm's architectures, run by
timm's own forward, which computes what the authors' code does; features [B, C, H/p, W/p].

ViTs: last block, final LayerNorm (eps 1e-5), the class and 4 storage tokens dropped, p = 16. Positions are RoPE
only (no learned grid, nothing to resize at another size): patch centres (i + 0.5)/h and (j + 0.5)/w, each axis
normalised by its own token count and mapped to [-1, 1]; for head dimension D, D/4 periods 100^(2k / (D/2));
angles 2*pi*coordinate/period for the row then the column, repeated twice, rotate q and k of the patch tokens only
(x*cos + rotate_half(x)*sin), never the prefix tokens. The authors' random rescale of the coordinates (by 1/2 to 2)
acts in training mode only and a Backbone is always in eval, so it never applies. The qkv bias has its key third
masked to zero (`bias_mask`): timm's `_qkvb` models hold the query and value biases with a fixed zero key bias. The
periods are a buffer in the authors' files and their model uses the stored values, so ours is a loaded buffer too.

ConvNeXts: the last stage after the final LayerNorm (eps 1e-6, over channels at every location), stride 32 = p.

The weights are licence-gated: never downloaded; request access (the links come by e-mail) and load the file.
"""
import functools
import re

import timm
from torch import Tensor

from stego.errors import StegoError

from .dinov2 import PrefixTokenBackbone
from .registry import Backbone, BackboneSpec, register_backbone
from .weights import load_weights

ACCESS = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"
VIT_KEYS = (
    ("storage_tokens", "reg_token"), (".ls1.gamma", ".gamma_1"), (".ls2.gamma", ".gamma_2"),
    (".mlp.w1.", ".mlp.fc1_g."), (".mlp.w2.", ".mlp.fc1_x."), (".mlp.w3.", ".mlp.fc2."), ("rope_embed.", "rope."),
)
"""The authors' ViT key fragments -> timm's (SwiGLU: silu(w1 x) * w2 x -> silu(fc1_g x) * fc1_x x)."""
CONVNEXT_KEYS = (
    (r"^downsample_layers\.0\.", "stem."), (r"^downsample_layers\.(\d)\.", r"stages.\1.downsample."),
    (r"^stages\.(\d)\.(\d+)\.", r"stages.\1.blocks.\2."), (r"\.dwconv\.", ".conv_dw."),
    (r"\.pwconv1\.", ".mlp.fc1."), (r"\.pwconv2\.", ".mlp.fc2."), (r"^norm\.", "norm_pre."),
)
"""The authors' ConvNeXt key patterns -> timm's (the final norm is timm's `norm_pre`, applied at every location)."""


class ConvNeXtBackbone(Backbone):
    """timm ConvNeXt with its norm before the head: last stage, final LayerNorm per location, [B, C, H/32, W/32]."""

    def extract(self, images: Tensor) -> Tensor:
        return self.trunk.forward_features(images)


def adapt_dinov3_vit(state: dict) -> dict:
    """The authors' ViT key names -> timm's; timm-keyed state dicts pass unchanged.

    mask_token goes (it only fills masked patches in pretraining; the class token adds 0 * mask_token); qkv.bias
    times its bias_mask is split into q_bias and v_bias, its key third being zero (else one-line error).
    """
    out = {}
    for key, value in state.items():
        if key == "mask_token" or key.endswith(".attn.qkv.bias_mask"):
            continue
        if key.endswith(".attn.qkv.bias"):
            mask = state.get(key + "_mask")
            q_bias, k_bias, v_bias = (value if mask is None else value * mask.to(value.dtype)).chunk(3)
            if k_bias.any():
                raise StegoError(f"DINOv3 weights: {key} has a nonzero key bias after its bias_mask, which DINOv3's "
                                 f"ViTs never have; use an official DINOv3 LVD-1689M file")
            out[key.replace("qkv.bias", "q_bias")], out[key.replace("qkv.bias", "v_bias")] = q_bias, v_bias
            continue
        for old, new in VIT_KEYS:
            key = key.replace(old, new)
        out[key] = value
    return out


def adapt_dinov3_convnext(state: dict) -> dict:
    """The authors' ConvNeXt key names -> timm's; `norms.3.*` (the final norm registered a second time) goes."""
    out = {}
    for key, value in state.items():
        if key.startswith("norms."):
            continue
        for pattern, new in CONVNEXT_KEYS:
            key = re.sub(pattern, new, key)
        out[key] = value
    return out


def build_dinov3_vit(spec: BackboneSpec, weights=None, weights_dir=None) -> Backbone:
    """timm's DINOv3 ViT of `spec` (dynamic size, RoPE periods kept as a loaded buffer), filled with `weights`."""
    vit = timm.create_model(spec.timm_name, pretrained=False, num_classes=0)
    vit.rope.register_buffer("periods", vit.rope.periods, persistent=True)
    return load_weights(PrefixTokenBackbone(spec.name, spec.dim, spec.patch, vit), spec, weights, weights_dir)


def build_dinov3_convnext(spec: BackboneSpec, weights=None, weights_dir=None) -> Backbone:
    """timm's ConvNeXt of `spec` with the final norm before the (empty) head, filled with `weights`."""
    net = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, head_norm_first=True)
    return load_weights(ConvNeXtBackbone(spec.name, spec.dim, spec.patch, net), spec, weights, weights_dir)


def _spec(arch: str, timm_name: str, dim: int, file_hash: str) -> BackboneSpec:
    convnext = arch.startswith("convnext")
    return BackboneSpec(f"dinov3_{arch}", "convnext" if convnext else "vit", dim, 32 if convnext else 16,
                        f"dinov3_{arch}_pretrain_lvd1689m-{file_hash}.pth", None, timm_name, family="dinov3",
                        access=ACCESS, adapt=adapt_dinov3_convnext if convnext else adapt_dinov3_vit)


SPECS = (
    _spec("vits16", "vit_small_patch16_dinov3_qkvb", 384, "08c60483"),
    _spec("vits16plus", "vit_small_plus_patch16_dinov3_qkvb", 384, "4057cbaa"),
    _spec("vitb16", "vit_base_patch16_dinov3_qkvb", 768, "73cec8be"),
    _spec("vitl16", "vit_large_patch16_dinov3_qkvb", 1024, "8aa4cbdd"),
    _spec("convnext_tiny", "convnext_tiny", 768, "21b726bb"),
    _spec("convnext_small", "convnext_small", 768, "296db49d"),
    _spec("convnext_base", "convnext_base", 1024, "801f2ba9"),
    _spec("convnext_large", "convnext_large", 1536, "61fa432d"),
)
for _s in SPECS:
    register_backbone(_s, functools.partial(build_dinov3_convnext if _s.arch == "convnext" else build_dinov3_vit, _s))
