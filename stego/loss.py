"""The STEGO correspondence-distillation loss (paper eqs. 1–5, docs/protocol.md §3), as a deterministic function.

Randomness (sample coordinates, negative pairings) is drawn by `draw_samples` and can be injected, so the
loss of given inputs and draws is a plain function that tests can check against a brute-force reference.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import LossConfig


@dataclass
class Draws:
    """The random choices of one loss evaluation."""

    coords1: torch.Tensor
    """Anchor sample points [B, S, S, 2] in [-1, 1)."""
    coords2: torch.Tensor
    """Partner sample points [B, S, S, 2] in [-1, 1)."""
    perms: torch.Tensor
    """Negative pairings [neg_samples, B]: draw n pairs image i with image perms[n, i] ≠ i."""


@dataclass
class LossOutput:
    total: torch.Tensor
    self_loss: torch.Tensor
    knn_loss: torch.Tensor
    rand_loss: torch.Tensor
    corr_self: torch.Tensor
    """Mean code correlation of each term (detached): the balance read-out of the paper's A.11."""
    corr_knn: torch.Tensor
    corr_rand: torch.Tensor
    code_corr: torch.Tensor | None = None
    """All sampled code correlations [2 + neg, B, P, P] (detached): self, KNN, then each random draw."""


def derangement_perm(n: int, generator=None, device=None) -> torch.Tensor:
    """The release's `super_perm`: a random permutation whose fixed points are moved up by one, modulo n."""
    perm = torch.randperm(n, generator=generator, device=device)
    return (perm + (perm == torch.arange(n, device=device))) % n


def draw_samples(batch: int, cfg: LossConfig, generator=None, device=None) -> Draws:
    """Draw sample coordinates for anchor and partner, and the negative pairings."""
    shape = (batch, cfg.feature_samples, cfg.feature_samples, 2)
    coords1 = torch.rand(shape, generator=generator, device=device) * 2 - 1
    coords2 = torch.rand(shape, generator=generator, device=device) * 2 - 1
    perms = [derangement_perm(batch, generator, device) for _ in range(cfg.neg_samples)]
    perms = torch.stack(perms) if perms else torch.empty(0, batch, dtype=torch.long, device=device)
    return Draws(coords1, coords2, perms)


def sample_points(t: torch.Tensor, images: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of t [B, C, h, w] at points (images[k], coords[k]) → [K, C]: `grid_sample` with border
    padding and aligned corners, exactly (docs/protocol.md §3.1).

    Written as an embedding bag over the channels-last pixel table, so sampling other images of the batch
    (the random pairings) reads only the 4 pixels each point needs, instead of copying whole feature maps.
    """
    batch, channels, h, w = t.shape
    table = t.permute(0, 2, 3, 1).reshape(batch * h * w, channels)
    x = ((coords[:, 0] + 1) / 2 * (w - 1)).clamp(0, w - 1)
    y = ((coords[:, 1] + 1) / 2 * (h - 1)).clamp(0, h - 1)
    x0, y0 = x.floor(), y.floor()
    ax, ay = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    base = images * (h * w)
    taps = torch.stack([base + y0 * w + x0, base + y0 * w + x1, base + y1 * w + x0, base + y1 * w + x1], dim=1)
    weights = torch.stack([(1 - ax) * (1 - ay), ax * (1 - ay), (1 - ax) * ay, ax * ay], dim=1).to(t.dtype)
    return F.embedding_bag(taps, table, per_sample_weights=weights, mode="sum")


def correlation(points: torch.Tensor) -> torch.Tensor:
    """Cosine correlations of each image's anchor points with all its partner points.

    points [B, G, P, C]: per image b, G groups of P sampled vectors, group 0 the anchor's own.
    Returns [G, B, P, P]: entry (g, b, p, q) = cos(points[b, 0, p], points[b, g, q]). One batched matmul; the
    anchor is never copied G times.
    """
    batch, groups, n_points, channels = points.shape
    unit = F.normalize(points, dim=-1, eps=1e-10)
    out = torch.bmm(unit[:, 0], unit.reshape(batch, groups * n_points, channels).transpose(1, 2))
    return out.view(batch, n_points, groups, n_points).permute(2, 0, 1, 3)


def center(fd: torch.Tensor, mode: str) -> torch.Tensor:
    """Spatial ('pointwise') centering of feature correlations fd [G, B, P, Q], one group per term or draw.

    Each anchor point's mean over partner points is subtracted; the release then adds back the global mean of
    the uncentred group (the group is what one call of the release's helper saw).
    """
    if mode == "off":
        return fd
    centred = fd - fd.mean(dim=-1, keepdim=True)
    if mode == "release":
        dims = (1, 2, 3)
        centred = centred - centred.mean(dim=dims, keepdim=True) + fd.mean(dim=dims, keepdim=True)
    return centred


def correspondence_loss(feats, feats_pos, code, code_pos, cfg: LossConfig, draws: Draws) -> LossOutput:
    """STEGO's loss of anchor features/codes against themselves, their KNN partners and random batch partners.

    feats, feats_pos: teacher features [B, C, h, w] (no gradient flows into them);
    code, code_pos: head outputs [B, D, h, w]. All 2 + neg_samples terms are evaluated in one batched pass.
    """
    neg, batch = draws.perms.shape
    groups = neg + 2
    n_points = draws.coords1.shape[1] * draws.coords1.shape[2]
    own = torch.arange(batch, device=feats.device)
    # Per image b, in order: its own points (coords1), its KNN partner's (image B + b of cat([maps, maps_pos]),
    # coords2), then each random draw's (image perms[n, b], coords2 of b).
    images = torch.stack([own, own + batch, *draws.perms], dim=1)
    coords = torch.stack([draws.coords1] + [draws.coords2] * (groups - 1), dim=1)
    images = images.repeat_interleave(n_points, dim=1).reshape(-1)
    coords = coords.reshape(-1, 2)

    def points_of(maps, maps_pos):
        return sample_points(torch.cat([maps, maps_pos]), images, coords).view(batch, groups, n_points, -1)

    with torch.no_grad():
        fd = center(correlation(points_of(feats.detach(), feats_pos.detach())), cfg.pointwise)
    cd = correlation(points_of(code, code_pos))

    shift = torch.full((groups,), cfg.b_rand, dtype=fd.dtype, device=fd.device)  # no host-to-device copy
    shift[0], shift[1] = cfg.b_self, cfg.b_knn
    clamped = cd
    if cfg.zero_clamp or cfg.stabilize:
        clamped = cd.clamp(0.0 if cfg.zero_clamp else None, 0.8 if cfg.stabilize else None)
    loss = -clamped * (fd - shift.view(-1, 1, 1, 1))

    zero = loss.new_zeros(())
    self_loss, knn_loss = loss[0].mean(), loss[1].mean()
    rand_loss = loss[2:].mean() if neg else zero
    total = cfg.lambda_self * self_loss + cfg.lambda_knn * knn_loss + cfg.lambda_rand * rand_loss
    cd = cd.detach()
    corr_rand = cd[2:].mean() if neg else zero.detach()
    return LossOutput(total, self_loss, knn_loss, rand_loss, cd[0].mean(), cd[1].mean(), corr_rand, cd)


class CorrespondenceLoss(torch.nn.Module):
    """Module wrapper that draws fresh samples on each call unless `draws` is given."""

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, feats, feats_pos, code, code_pos, draws: Draws | None = None, generator=None) -> LossOutput:
        if draws is None:
            draws = draw_samples(feats.shape[0], self.cfg, generator=generator, device=feats.device)
        return correspondence_loss(feats, feats_pos, code, code_pos, self.cfg, draws)
