"""A fixed, hand-designed colour + texture featurizer: the backbone, with no learned weights, of the synthetic demo.

Per patch of `patch`×`patch` pixels it returns, from ImageNet-normalised images (like every backbone):
- colour (6 channels): opponent-colour means (luminance − 0.45, red − green, (red + green)/2 − blue) over windows
  of 1 and 3 patches;
- texture (orientations × wavelengths channels): the profile of quadrature Gabor energies of the luminance,
  (energy − mean energy) / mean energy, so that image gain and the isotropic part of the texture cancel and an
  oriented grating shows as a peak at its orientation and wavelength;
- contrast (1 channel): log(mean energy / 0.2), the local texture strength.
The groups are scaled by fixed weights (colour 1, texture 0.25, contrast 0.25): colour dominates, as the
appearance of a region dominates self-supervised features, and texture is the weaker shared signal
(SYNTHETIC.md). When `out_dim` > 0 the channels are expanded by a fixed seeded random projection and a ReLU.

Everything is computed from the constructor's arguments: there is nothing to load, so `weights` ("random",
None, a path: anything) is accepted and ignored. It runs in a few milliseconds per batch on a CPU. It shows
STEGO learning where no pretrained network can be downloaded; it is no stand-in for DINO on natural images.
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stego.constants import IMAGENET_MEAN, IMAGENET_STD
from stego.errors import StegoError

from .registry import Backbone, BackboneSpec, register_backbone

NAME = "filterbank"
GREY = 0.45
"""Luminance subtracted from the luminance channel (about ImageNet's mean), so the colour channels are centred."""
CONTRAST_REF = 0.2
"""Typical mean Gabor energy of a textured region (unit-norm kernels, intensities in [0, 1])."""
EPS = 1e-3


def gabor_pair(wavelength: float, theta: float, sigma_ratio: float = 0.5) -> Tensor:
    """Even (zero-mean cosine) and odd (sine) Gabor kernels [2, k, k] of `wavelength` px at angle `theta`.

    The carrier varies along direction (cos θ, sin θ) in (x, y), i.e. it detects stripes whose normal is at θ;
    the Gaussian envelope has σ = sigma_ratio·λ and the kernel radius is ⌈3σ⌉. Both kernels have unit L2 norm.
    """
    sigma = sigma_ratio * wavelength
    radius = max(1, math.ceil(3 * sigma))
    yy, xx = torch.meshgrid(torch.arange(-radius, radius + 1, dtype=torch.float64),
                            torch.arange(-radius, radius + 1, dtype=torch.float64), indexing="ij")
    envelope = torch.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
    phase = 2 * math.pi / wavelength * (xx * math.cos(theta) + yy * math.sin(theta))
    even = envelope * torch.cos(phase)
    even = even - envelope * (even.sum() / envelope.sum())
    odd = envelope * torch.sin(phase)
    return torch.stack([even / even.norm(), odd / odd.norm()]).float()


class FilterBank(Backbone):
    """Opponent-colour means + Gabor energy profile + contrast per patch; deterministic, frozen, weightless.

    dim = 6 + orientations·len(wavelengths) + 1 (19 by default), or `out_dim` after the random expansion.
    `patch` must be a multiple of 4 (Gabor energies are computed at stride 2 and pooled over 2×2 patches).
    """

    def __init__(self, patch: int = 4, orientations: int = 6, wavelengths=(4.0, 6.0), weights=(1.0, 0.25, 0.25),
                 out_dim: int = 0, seed: int = 0, name: str = NAME):
        if patch < 4 or patch % 4:
            raise StegoError(f"filterbank: patch must be a positive multiple of 4, got {patch}")
        if orientations < 1 or not wavelengths:
            raise StegoError("filterbank: need at least one orientation and one wavelength")
        raw_dim = 6 + orientations * len(wavelengths) + 1
        super().__init__(name, out_dim or raw_dim, patch, nn.Identity())
        self.raw_dim, self.out_dim = raw_dim, out_dim
        self.group_weights = tuple(float(w) for w in weights)
        self.n_wavelengths = len(wavelengths)
        # all Gabor pairs zero-padded to the largest kernel, so one convolution computes every band
        pairs = [gabor_pair(float(lam), math.pi * k / orientations) for lam in wavelengths for k in range(orientations)]
        size = max(p.shape[-1] for p in pairs)
        kernels = torch.cat([F.pad(p, [(size - p.shape[-1]) // 2] * 4) for p in pairs]).unsqueeze(1)
        self.register_buffer("gabor", kernels, persistent=False)
        # ImageNet un-normalisation and the opponent transform folded into one affine map of the input channels
        std, mean = torch.tensor(IMAGENET_STD), torch.tensor(IMAGENET_MEAN)
        opponent = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, -1.0, 0.0], [0.5, 0.5, -1.0]])
        self.register_buffer("colour_weight", (opponent * std).view(3, 3, 1, 1), persistent=False)
        self.register_buffer("colour_bias", opponent @ mean - torch.tensor([GREY, 0.0, 0.0]), persistent=False)
        if out_dim:
            gen = torch.Generator().manual_seed(seed)
            proj = torch.randn(out_dim, raw_dim, 1, 1, generator=gen, dtype=torch.float64) / math.sqrt(raw_dim)
            self.register_buffer("projection", proj.float(), persistent=False)

    def raw_features(self, images: Tensor) -> Tensor:
        """The weighted colour, texture and contrast channels [B, raw_dim, H/p, W/p], before any expansion."""
        p = self.patch
        opp = F.conv2d(images, self.colour_weight, self.colour_bias)
        fine = F.avg_pool2d(opp, p)
        colour = torch.cat([fine, F.avg_pool2d(fine, 3, 1, padding=1, count_include_pad=False)], dim=1)
        pad = self.gabor.shape[-1] // 2
        lum = F.pad(opp[:, :1], [pad] * 4, mode="replicate")
        resp = F.conv2d(lum, self.gabor, stride=2)
        energy = resp.unflatten(1, (-1, 2)).pow(2).sum(2).sqrt()
        energy = F.avg_pool2d(energy, p, p // 2, padding=p // 4, count_include_pad=False)
        level = energy.mean(dim=1, keepdim=True)
        profile = (energy - level) / (level + EPS)
        contrast = torch.log((level + EPS) / CONTRAST_REF)
        wc, wt, wk = self.group_weights
        return torch.cat([wc * colour, wt * profile, wk * contrast], dim=1)

    def extract(self, images: Tensor) -> Tensor:
        feats = self.raw_features(images)
        return F.relu(F.conv2d(feats, self.projection)) if self.out_dim else feats


def build_filterbank(weights=None, weights_dir=None, **options) -> FilterBank:
    """The `filterbank` backbone factory. `weights` and `weights_dir` are ignored: the bank has no weights."""
    return FilterBank(**options)


register_backbone(BackboneSpec(NAME, "custom", 0, 0, family="filterbank"), build_filterbank)
