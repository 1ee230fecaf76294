"""Frozen feature extractors behind one interface: `build_backbone(name)(images) -> [B, C, H/p, W/p]`.

One module per family registers its names (dino: DINO ViTs; dinov2: DINOv2 ViTs with and without registers;
dinov3: DINOv3 ViTs and ConvNeXts, licence-gated weights; resnet: ResNet-50 / MoCo v2; filterbank: the synthetic
world's fixed featurizer); `weights` finds and reads pretrained files. `BACKBONES` lists every name.
"""
from . import dino, dinov2, dinov3, filterbank, resnet  # noqa: F401  (each family registers itself)
from .dino import ViTBackbone, dino_resize_pos_embed
from .dinov2 import PrefixTokenBackbone, adapt_dinov2
from .dinov3 import ConvNeXtBackbone, adapt_dinov3_convnext, adapt_dinov3_vit
from .registry import BACKBONES, Backbone, BackboneSpec, build_backbone, register_backbone, spec_of
from .resnet import ResNetBackbone
from .weights import WEIGHTS_ENV, MissingWeightsError, load_backbone_state_dict, resolve_weight_file

__all__ = ["BACKBONES", "Backbone", "BackboneSpec", "ConvNeXtBackbone", "MissingWeightsError", "PrefixTokenBackbone",
           "ResNetBackbone", "ViTBackbone", "WEIGHTS_ENV", "adapt_dinov2", "adapt_dinov3_convnext", "adapt_dinov3_vit",
           "build_backbone", "dino_resize_pos_embed", "load_backbone_state_dict", "register_backbone",
           "resolve_weight_file", "spec_of"]
