"""A fixed, hand-designed colour + texture featurizer: a backbone with no learned weights for synthetic scenes.

Per patch of `patch`×`patch` pixels it returns, from ImageNet-normalised images:
- colour: opponent-colour means (luminance, red–green, blue–yellow) over windows of 1 and 3 patches;
- texture: the orientation/frequency profile of Gabor energies of the luminance (quadrature pairs at
  `orientations` angles and each of `wavelengths`), divided by their mean so that image gain cancels,
  and the log of that mean (local contrast).
The groups are weighted by fixed constants and, when `out_dim` > 0, expanded by a fixed seeded random
projection and a ReLU. Every tensor is computed from the constructor's arguments: there is nothing to load,
so `weights` ("random", None or anything else) is accepted and ignored. Used to show STEGO learning on CPU
where no pretrained network can be downloaded; it is not a stand-in for DINO on natural images.
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import Backbone
from .constants import IMAGENET_MEAN, IMAGENET_STD
from .errors import StegoError

NAME = "filterbank"


def gabor_pair(wavelength: float, theta: float, sigma_ratio: float = 0.5) -> Tensor:
    """Even (zero-mean cosine) and odd (sine) Gabor kernels [2, k, k] at `wavelength` px and angle `theta`.

    The grating runs along direction (cos θ, sin θ) in (x, y); the Gaussian envelope has σ = sigma_ratio·λ,
    the kernel radius is 3σ. Each kernel has unit L2 norm, so energies of different bands are comparable.
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
    pair = torch.stack([even / even.norm(), odd / odd.norm()])
    return pair.float()


class FilterBank(Backbone):
    """Opponent-colour means + normalised Gabor energy profile per patch; deterministic, frozen, weightless.

    dim = 6 colour + (orientations × len(wavelengths)) texture + 1 contrast channels, or `out_dim` after the
    fixed random expansion. Input side lengths must be multiples of `patch`.
    """

    def __init__(self, patch: int = 4, orientations: int = 6, wavelengths=(4.0, 6.0), colour_weight: float = 1.0,
                 texture_weight: float = 1.0, contrast_weight: float = 0.25, out_dim: int = 0, seed: int = 0,
                 name: str = NAME):
        if patch < 2 or patch % 2:
            raise StegoError(f"filterbank: patch must be an even number ≥ 2, got {patch}")
        if orientations < 1 or not wavelengths:
            raise StegoError("filterbank: need at least one orientation and one wavelength")
        bands = orientations * len(wavelengths)
        raw = 6 + bands + 1
        super().__init__(name, out_dim or raw, patch, nn.Identity())
        self.orientations, self.wavelengths = orientations, tuple(float(w) for w in wavelengths)
        self.raw_dim, self.out_dim = raw, out_dim
        self.weights = (colour_weight, texture_weight, contrast_weight)
        for i, lam in enumerate(self.wavelengths):
            kernels = torch.cat([gabor_pair(lam, math.pi * k / orientations) for k in range(orientations)])
            self.register_buffer(f"gabor{i}", kernels.unsqueeze(1), persistent=False)
        rgb_mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        rgb_std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("rgb_mean", rgb_mean, persistent=False)
        self.register_buffer("rgb_std", rgb_std, persistent=False)
        opponent = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, -1.0, 0.0], [0.5, 0.5, -1.0]])
        self.register_buffer("opponent", opponent, persistent=False)
        if out_dim:
            gen = torch.Generator().manual_seed(seed)
            proj = torch.randn(out_dim, raw, generator=gen, dtype=torch.float64) / math.sqrt(raw)
            self.register_buffer("projection", proj.float(), persistent=False)

    def raw_features(self, images: Tensor) -> Tensor:
        """The weighted colour, texture and contrast channels [B, raw_dim, H/p, W/p] (before any expansion)."""
        p = self.patch
        rgb = images * self.rgb_std + self.rgb_mean
        opp = torch.einsum("oc,bchw->bohw", self.opponent, rgb)
        opp = opp - torch.tensor([0.5, 0.0, 0.0], device=opp.device).view(1, 3, 1, 1)
        colour = torch.cat([F.avg_pool2d(opp, p, p),
                            F.avg_pool2d(opp, 3 * p, p, padding=p, count_include_pad=False)], dim=1)
        lum = opp[:, :1] + 0.5
        energies = []
        for i in range(len(self.wavelengths)):
            kernels = getattr(self, f"gabor{i}")
            pad = kernels.shape[-1] // 2
            resp = F.conv2d(F.pad(lum, (pad,) * 4, mode="reflect"), kernels, stride=2)
            energies.append(resp.unflatten(1, (-1, 2)).pow(2).sum(2).sqrt())
        energy = torch.cat(energies, dim=1)
        energy = F.avg_pool2d(energy, p, p // 2, padding=p // 4, count_include_pad=False) \
            if p >= 4 else F.avg_pool2d(energy, 1, 1)
        energy = energy[..., : colour.shape[-2], : colour.shape[-1]]
        level = energy.mean(dim=1, keepdim=True)
        profile = energy / (level + 1e-3) - 1
        contrast = torch.log(level + 1e-3) + 3
        wc, wt, wk = self.weights
        return torch.cat([wc * colour, wt * profile, wk * contrast], dim=1)

    def extract(self, images: Tensor) -> Tensor:
        feats = self.raw_features(images)
        if not self.out_dim:
            return feats
        return F.relu(torch.einsum("oc,bchw->bohw", self.projection, feats))


def build_filterbank(weights=None, weights_dir=None, **options) -> FilterBank:
    """The `filterbank` backbone factory; `weights` and `weights_dir` are ignored (the bank has no weights)."""
    return FilterBank(**options)
