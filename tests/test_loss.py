"""The correspondence loss against a float64 brute-force double loop, and the direction of its gradient."""

import numpy as np
import pytest
import torch

from stego.config import LossConfig
from stego.loss import CorrespondenceLoss, Draws, correspondence_loss, derangement_perm, draw_samples


def bilinear_border(t, x, y):
    """Bilinear sample of t [C, h, w] at normalised (x, y) in [-1, 1], align_corners=True, border clamp."""
    _, h, w = t.shape
    px = min(max((x + 1) / 2 * (w - 1), 0.0), w - 1)
    py = min(max((y + 1) / 2 * (h - 1), 0.0), h - 1)
    x0, y0 = int(np.floor(px)), int(np.floor(py))
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    ax, ay = px - x0, py - y0
    return ((1 - ax) * (1 - ay) * t[:, y0, x0] + ax * (1 - ay) * t[:, y0, x1]
            + (1 - ax) * ay * t[:, y1, x0] + ax * ay * t[:, y1, x1])


def cos(a, b):
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))


def brute_term(fa, fb, ca, cb, coords_a, coords_b, shift, cfg):
    """Loss tensor of one term for a list of (anchor image, partner image) pairs, by explicit loops, float64."""
    n_pairs = len(fa)
    pts = [(i, j) for i in range(coords_a.shape[1]) for j in range(coords_a.shape[2])]
    fd = np.zeros((n_pairs, len(pts), len(pts)))
    cd = np.zeros_like(fd)
    for n in range(n_pairs):
        for p, (i, j) in enumerate(pts):
            xa, ya = coords_a[n, i, j]
            f_a, c_a = bilinear_border(fa[n], xa, ya), bilinear_border(ca[n], xa, ya)
            for q, (k, m) in enumerate(pts):
                xb, yb = coords_b[n, k, m]
                fd[n, p, q] = cos(f_a, bilinear_border(fb[n], xb, yb))
                cd[n, p, q] = cos(c_a, bilinear_border(cb[n], xb, yb))
    if cfg.pointwise != "off":
        old_mean = fd.mean()
        fd = fd - fd.mean(axis=2, keepdims=True)
        if cfg.pointwise == "release":
            fd = fd - fd.mean() + old_mean
    low = 0.0 if cfg.zero_clamp else -np.inf
    high = 0.8 if cfg.stabilize else np.inf
    return -np.clip(cd, low, high) * (fd - shift)


def brute_loss(feats, feats_pos, code, code_pos, cfg, draws):
    f, fp, c, cp = (x.double().numpy() for x in (feats, feats_pos, code, code_pos))
    c1, c2 = draws.coords1.double().numpy(), draws.coords2.double().numpy()
    self_t = brute_term(f, f, c, c, c1, c1, cfg.b_self, cfg)
    knn_t = brute_term(f, fp, c, cp, c1, c2, cfg.b_knn, cfg)
    rand_t = np.concatenate([brute_term(f, f[p], c, c[p], c1, c2, cfg.b_rand, cfg) for p in draws.perms.numpy()])
    total = cfg.lambda_self * self_t.mean() + cfg.lambda_knn * knn_t.mean() + cfg.lambda_rand * rand_t.mean()
    return total, self_t.mean(), knn_t.mean(), rand_t.mean()


def inputs(seed, batch=3, channels=5, dim=4, h=6, w=7):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, channels, h, w, generator=g)
    feats_pos = torch.randn(batch, channels, h, w, generator=g)
    code = torch.randn(batch, dim, h, w, generator=g)
    code_pos = torch.randn(batch, dim, h, w, generator=g)
    return feats, feats_pos, code, code_pos


@pytest.mark.parametrize("pointwise", ["release", "paper", "off"])
@pytest.mark.parametrize("zero_clamp,stabilize", [(True, False), (False, False), (True, True)])
def test_loss_matches_float64_brute_force(pointwise, zero_clamp, stabilize):
    cfg = LossConfig(lambda_self=0.3, lambda_knn=0.7, lambda_rand=0.5, b_self=0.1, b_knn=-0.05, b_rand=0.2,
                     pointwise=pointwise, zero_clamp=zero_clamp, stabilize=stabilize, feature_samples=3, neg_samples=2)
    x = inputs(0)
    # Coordinates include points outside the grid's interior and exactly on the border.
    draws = draw_samples(3, cfg, generator=torch.Generator().manual_seed(1))
    draws.coords1[0, 0, 0] = torch.tensor([-1.0, 1.0])
    draws.coords2[1, 2, 1] = torch.tensor([0.999, -1.0])
    expected = brute_loss(*x, cfg, draws)
    out = correspondence_loss(*(t.double() for t in x), cfg,
                              Draws(draws.coords1.double(), draws.coords2.double(), draws.perms))
    got = [out.total.item(), out.self_loss.item(), out.knn_loss.item(), out.rand_loss.item()]
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    out32 = correspondence_loss(*x, cfg, draws)
    np.testing.assert_allclose(out32.total.item(), expected[0], rtol=1e-4, atol=1e-6)


def test_release_and_paper_centering_differ_by_the_global_mean():
    cfg = dict(feature_samples=3, neg_samples=1, lambda_self=1.0, lambda_knn=0.0, lambda_rand=0.0, zero_clamp=False)
    x = inputs(2)
    draws = draw_samples(3, LossConfig(**cfg), generator=torch.Generator().manual_seed(3))
    release = correspondence_loss(*x, LossConfig(pointwise="release", **cfg), draws)
    paper = correspondence_loss(*x, LossConfig(pointwise="paper", **cfg), draws)
    assert abs(release.self_loss.item() - paper.self_loss.item()) > 1e-4


def test_derangement_never_pairs_an_image_with_itself():
    g = torch.Generator().manual_seed(0)
    for n in range(2, 9):
        for _ in range(50):
            perm = derangement_perm(n, g)
            assert not (perm == torch.arange(n)).any()
            assert perm.min() >= 0 and perm.max() < n


def one_pixel_pair(seed, feat_corr_sign, code_corr_sign):
    """Two images with 1×1 maps: feature correlation and code correlation of chosen signs."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(8, generator=g)
    feats = f.view(1, 8, 1, 1)
    feats_pos = (feat_corr_sign * f + 0.3 * torch.randn(8, generator=g)).view(1, 8, 1, 1)
    c = torch.randn(6, generator=g)
    code = c.view(1, 6, 1, 1).clone().requires_grad_(True)
    code_pos = (code_corr_sign * c + 0.5 * torch.randn(6, generator=g)).view(1, 6, 1, 1).clone().requires_grad_(True)
    return feats, feats_pos, code, code_pos


def knn_only(shift, zero_clamp=True):
    return LossConfig(lambda_self=0.0, lambda_knn=1.0, lambda_rand=0.0, b_knn=shift, pointwise="off",
                      zero_clamp=zero_clamp, feature_samples=2, neg_samples=0)


def code_cos(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shift", [-0.5, 0.0, 0.5])
def test_gradient_pulls_pairs_with_positive_shifted_correlation_and_pushes_others(seed, shift):
    feats, feats_pos, code, code_pos = one_pixel_pair(seed, feat_corr_sign=1 if seed % 2 else -1, code_corr_sign=1)
    cfg = knn_only(shift)
    fd = code_cos(feats, feats_pos)
    before = code_cos(code, code_pos)
    assert before > 0
    out = CorrespondenceLoss(cfg)(feats, feats_pos, code, code_pos, generator=torch.Generator().manual_seed(seed))
    out.total.backward()
    with torch.no_grad():
        after = code_cos(code - 0.01 * code.grad, code_pos - 0.01 * code_pos.grad)
    if fd - shift > 0:
        assert after > before
    else:
        assert after < before


def test_zero_clamp_zeroes_the_gradient_of_anticorrelated_codes():
    feats, feats_pos, code, code_pos = one_pixel_pair(7, feat_corr_sign=-1, code_corr_sign=-1)
    assert code_cos(code, code_pos) < 0
    draws = draw_samples(1, knn_only(0.0), generator=torch.Generator().manual_seed(0))
    correspondence_loss(feats, feats_pos, code, code_pos, knn_only(0.0, zero_clamp=True), draws).total.backward()
    assert torch.all(code.grad == 0) and torch.all(code_pos.grad == 0)
    code.grad = code_pos.grad = None
    correspondence_loss(feats, feats_pos, code, code_pos, knn_only(0.0, zero_clamp=False), draws).total.backward()
    assert code.grad.abs().sum() > 0


def test_no_gradient_reaches_the_features():
    feats, feats_pos, code, code_pos = (t.requires_grad_(True) for t in inputs(4))
    cfg = LossConfig(feature_samples=3, neg_samples=2)
    correspondence_loss(feats, feats_pos, code, code_pos, cfg, draw_samples(3, cfg)).total.backward()
    assert feats.grad is None and feats_pos.grad is None
    assert code.grad.abs().sum() > 0 and code_pos.grad.abs().sum() > 0


def test_random_term_averages_over_all_draws():
    cfg = LossConfig(feature_samples=2, neg_samples=3, lambda_self=0, lambda_knn=0, lambda_rand=1)
    x = inputs(5, batch=4)
    draws = draw_samples(4, cfg, generator=torch.Generator().manual_seed(6))
    whole = correspondence_loss(*x, cfg, draws).rand_loss
    singles = [correspondence_loss(*x, LossConfig(**{**cfg.__dict__, "neg_samples": 1}),
                                   Draws(draws.coords1, draws.coords2, draws.perms[i:i + 1])).rand_loss
               for i in range(3)]
    torch.testing.assert_close(whole, torch.stack(singles).mean())


def test_injected_draws_make_the_loss_deterministic_and_default_draws_vary():
    x = inputs(8)
    cfg = LossConfig(feature_samples=4, neg_samples=2)
    loss = CorrespondenceLoss(cfg)
    a = loss(*x, generator=torch.Generator().manual_seed(1)).total
    b = loss(*x, generator=torch.Generator().manual_seed(1)).total
    c = loss(*x, generator=torch.Generator().manual_seed(2)).total
    assert a == b and a != c


def test_config_rejects_unknown_centering():
    with pytest.raises(ValueError, match="pointwise"):
        LossConfig(pointwise="both")
