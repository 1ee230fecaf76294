"""Fixed (untrained) projections of raw backbone features to the code dimension: the dimensionality-reduction
baselines of Koenig et al. (docs/protocol.md §10), which ask whether STEGO is more than a good linear reduction.

Both standardise each channel with the training set's mean and standard deviation, then project:
- 'pca': onto the top `dim` principal axes of the standardised training features (the eigenvectors of their
  correlation matrix), fitted from streamed float64 moments, so the whole training set is used in one pass;
- 'random': by a seeded Gaussian matrix with entries N(0, 1/dim) (a Johnson–Lindenstrauss projection, as
  scikit-learn's GaussianRandomProjection draws it).
Koenig et al. standardise each evaluation batch by its own statistics; here the training statistics are used
at every step, so a pixel's code does not depend on the other images of its batch.
"""
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .errors import StegoError

FIXED = ("pca", "random")
"""Projection kinds whose weights are fitted or drawn once, never trained."""


class FixedProjection(nn.Module):
    """code = W · (feats − mean) / scale as a 1×1 map; the statistics and W are buffers (saved, never trained)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("scale", torch.ones(in_dim))
        self.register_buffer("weight", torch.zeros(dim, in_dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def forward(self, feats: Tensor) -> Tensor:
        x = (feats - self.mean[None, :, None, None]) / self.scale[None, :, None, None]
        return torch.einsum("bchw,dc->bdhw", x, self.weight)

    def set(self, mean: Tensor, scale: Tensor, weight: Tensor) -> None:
        self.mean.copy_(mean)
        self.scale.copy_(scale)
        self.weight.copy_(weight)
        self.fitted.fill_(True)


@dataclass
class Moments:
    """Running float64 sums of patch features: count, Σx [C] and Σxxᵀ [C, C] (one pass, any N)."""

    n: int
    total: Tensor
    outer: Tensor

    @classmethod
    def empty(cls, dim: int, device=None) -> "Moments":
        zeros = dict(dtype=torch.float64, device=device)
        return cls(0, torch.zeros(dim, **zeros), torch.zeros(dim, dim, **zeros))

    def add(self, rows: Tensor) -> None:
        """Accumulate feature rows [M, C]."""
        x = rows.to(torch.float64)
        self.n += x.shape[0]
        self.total += x.sum(0)
        self.outer += x.T @ x

    def mean_std(self) -> tuple[Tensor, Tensor]:
        mean = self.total / self.n
        var = (self.outer.diagonal() / self.n - mean**2).clamp(min=0)
        return mean, var.sqrt()

    def correlation(self) -> Tensor:
        """The correlation matrix of the features (covariance of the standardised features)."""
        mean, std = self.mean_std()
        cov = self.outer / self.n - torch.outer(mean, mean)
        safe = torch.where(std > 0, std, torch.ones_like(std))
        return cov / torch.outer(safe, safe)


@torch.no_grad()
def feature_moments(backbone, dataset, batch_size: int = 32, workers: int = 0, device=None) -> Moments:
    """Moments of every patch feature of every item of `dataset`, in dataset order (no sampling, no augmentation)."""
    device = device or torch.device("cpu")
    moments = Moments.empty(backbone.dim, device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    for batch in tqdm(loader, desc="projection moments", unit="batch"):
        feats = backbone(batch["img"].to(device)).float()
        moments.add(feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]))
    return Moments(moments.n, moments.total.cpu(), moments.outer.cpu())


def principal_axes(correlation: Tensor, dim: int) -> Tensor:
    """The top `dim` eigenvectors of a symmetric matrix as rows [dim, C], largest eigenvalue first, each signed so
    its largest-magnitude entry is positive (a deterministic choice among ±v)."""
    values, vectors = torch.linalg.eigh(correlation)
    axes = vectors[:, values.argsort(descending=True)[:dim]].T
    signs = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
    return axes * signs


def gaussian_matrix(dim: int, in_dim: int, seed: int) -> Tensor:
    """A seeded [dim, in_dim] matrix with independent N(0, 1/dim) entries."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(dim, in_dim, generator=generator, dtype=torch.float64) / dim**0.5


def fit_projection(kind: str, projection: FixedProjection, backbone, dataset, seed: int, batch_size: int = 32,
                   workers: int = 0, device=None) -> None:
    """Fill `projection` for `kind` from the training features of `dataset` (one pass) and the seed."""
    if kind not in FIXED:
        raise StegoError(f"model.projection={kind!r} is not a fixed projection ({', '.join(FIXED)})")
    dim, in_dim = projection.weight.shape
    if dim > in_dim:
        raise StegoError(f"model.dim={dim} exceeds the backbone's {in_dim} channels: a {kind} projection cannot add "
                         f"dimensions; set model.dim ≤ {in_dim}")
    moments = feature_moments(backbone, dataset, batch_size, workers, device)
    mean, std = moments.mean_std()
    scale = torch.where(std > 0, std, torch.ones_like(std))
    weight = principal_axes(moments.correlation(), dim) if kind == "pca" else gaussian_matrix(dim, in_dim, seed)
    projection.set(mean.float(), scale.float(), weight.float())
