"""The STEGO segmentation head and the two evaluation probes (docs/protocol.md §2 and §4)."""
import torch
import torch.nn.functional as F
from torch import nn

from .config import PROJECTIONS
from .constants import IGNORE
from .errors import StegoError
from .projection import FIXED, FixedProjection


class SegmentationHead(nn.Module):
    """Maps frozen backbone features [B, C, h, w] to (teacher features, code [B, D, h, w]).

    projection: 'nonlinear' (linear + MLP branch, the paper's), 'linear', 'none' (code = features), or a fixed
    'pca' / 'random' map fitted once (stego.projection; nothing trainable, a baseline). Three independent
    `Dropout2d` masks, as released: one before the linear branch, one before the MLP branch, one on the features
    handed to the loss as the teacher signal. Dropout acts in training mode only.
    """

    def __init__(self, in_dim: int, dim: int, projection: str = "nonlinear", dropout: float = 0.1):
        super().__init__()
        if projection not in PROJECTIONS:
            raise StegoError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        self.projection = projection
        self.in_dim = in_dim
        self.dim = in_dim if projection == "none" else dim
        self.dropout = nn.Dropout2d(p=dropout)
        if projection in FIXED:
            self.fixed = FixedProjection(in_dim, dim)
        elif projection != "none":
            self.linear = nn.Conv2d(in_dim, dim, 1)
        if projection == "nonlinear":
            self.mlp = nn.Sequential(nn.Conv2d(in_dim, in_dim, 1), nn.ReLU(), nn.Conv2d(in_dim, dim, 1))

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.projection == "none":
            code = feats
        elif self.projection in FIXED:
            code = self.fixed(feats)
        else:
            code = self.linear(self.dropout(feats))
            if self.projection == "nonlinear":
                code = code + self.mlp(self.dropout(feats))
        return self.dropout(feats), code


class ClusterProbe(nn.Module):
    """K centroids on the unit sphere; trained to maximise each pixel's best cosine (a cosine k-means)."""

    def __init__(self, dim: int, n_clusters: int):
        super().__init__()
        self.clusters = nn.Parameter(torch.randn(n_clusters, dim))

    def cosine(self, code: torch.Tensor) -> torch.Tensor:
        """Cosine of every pixel's code with every centroid: [B, K, h, w]."""
        return torch.einsum("bchw,kc->bkhw", F.normalize(code, dim=1), F.normalize(self.clusters, dim=1))

    def loss(self, code: torch.Tensor) -> torch.Tensor:
        """−mean over pixels of max_k cos(code, μ_k)."""
        return -self.cosine(code).max(dim=1).values.mean()

    def log_probs(self, code: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
        """Cluster log-probabilities at evaluation: log_softmax(alpha · cos)."""
        return F.log_softmax(alpha * self.cosine(code), dim=1)


class LinearProbe(nn.Module):
    """A 1×1 convolution D→classes on the detached code, scored against labels at label resolution."""

    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, n_classes, 1)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.conv(code)

    def loss(self, code: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over labelled pixels, logits bilinearly upsampled to the label size."""
        logits = F.interpolate(self(code), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        # sum over labelled pixels ÷ their count (at least 1): the mean, or 0 when none, without asking the device
        total = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")
        return total / (labels != IGNORE).sum().clamp(min=1)


class Stego(nn.Module):
    """What training learns: the head and both probes (the backbone is frozen and kept apart)."""

    def __init__(self, in_dim: int, dim: int, n_classes: int, projection: str = "nonlinear", dropout: float = 0.1,
                 extra_clusters: int = 0):
        super().__init__()
        self.head = SegmentationHead(in_dim, dim, projection, dropout)
        self.cluster_probe = ClusterProbe(self.head.dim, n_classes + extra_clusters)
        self.linear_probe = LinearProbe(self.head.dim, n_classes)
        self.n_classes = n_classes

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(feats)
