"""ResNet-50 backbones (supervised ImageNet, MoCo v2): the final-stage (layer4) map at stride 32, the paper's
Table 1 baselines; not the release's feature-pyramid variant (docs/protocol.md §1)."""
import functools

import torchvision
from torch import Tensor, nn

from .registry import Backbone, BackboneSpec, register_backbone
from .weights import load_weights


class ResNetBackbone(Backbone):
    """ResNet-50 final stage (layer4) at stride 32."""

    def extract(self, images: Tensor) -> Tensor:
        r = self.trunk
        x = r.maxpool(r.relu(r.bn1(r.conv1(images))))
        return r.layer4(r.layer3(r.layer2(r.layer1(x))))


def build_resnet(spec: BackboneSpec, weights=None, weights_dir=None) -> ResNetBackbone:
    trunk = torchvision.models.resnet50(weights=None)
    trunk.fc = nn.Identity()
    return load_weights(ResNetBackbone(spec.name, spec.dim, spec.patch, trunk), spec, weights, weights_dir)


SPECS = (
    BackboneSpec("r50_supervised", "resnet", 2048, 32, "resnet50-0676ba61.pth",
                 "https://download.pytorch.org/models/resnet50-0676ba61.pth", family="resnet"),
    BackboneSpec("mocov2_r50", "resnet", 2048, 32, "moco_v2_800ep_pretrain.pth.tar",
                 "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar",
                 family="resnet"),
)
for _s in SPECS:
    register_backbone(_s, functools.partial(build_resnet, _s))
