"""Frozen feature extractors behind one interface: `build_backbone(name)(images) -> [B, C, H/p, W/p]`.

One module per family registers its names (dino: DINO ViTs; resnet: ResNet-50 / MoCo v2; filterbank: the
synthetic world's fixed featurizer); `weights` finds and reads pretrained files. `BACKBONES` lists every name.
"""
from . import dino, filterbank, resnet  # noqa: F401  (each family registers itself)
from .dino import ViTBackbone, dino_resize_pos_embed
from .registry import BACKBONES, Backbone, BackboneSpec, build_backbone, register_backbone, spec_of
from .resnet import ResNetBackbone
from .weights import WEIGHTS_ENV, MissingWeightsError, load_backbone_state_dict, resolve_weight_file

__all__ = ["BACKBONES", "Backbone", "BackboneSpec", "MissingWeightsError", "ResNetBackbone", "ViTBackbone",
           "WEIGHTS_ENV", "build_backbone", "dino_resize_pos_embed", "load_backbone_state_dict", "register_backbone",
           "resolve_weight_file", "spec_of"]
