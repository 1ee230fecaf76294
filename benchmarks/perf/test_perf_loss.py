"""Speed of the correspondence loss (forward + backward) against the release's structure of the same math.

The reference is the release's structure: a 5-D einsum per term, a Python loop over negative draws, each
gathering whole feature maps. CI runs ViT-S/8-sized inputs (B = 8, C = 384); STEGO_BENCH_FULL=1 runs the
release's ViT-B/8 shapes (B = 16, C = 768, D = 90). `--benchmark-enable` adds pytest-benchmark statistics.
"""
import os

import pytest
import torch
import torch.nn.functional as F

from stego.config import LossConfig
from stego.loss import correspondence_loss, draw_samples

from .report import compare

FULL = os.environ.get("STEGO_BENCH_FULL", "") == "1"
B, C, D, H = (16, 768, 90, 28) if FULL else (8, 384, 70, 28)
MIN_RATIO = 0.8
"""Ours must not be slower than the reference beyond timing noise on a shared machine."""


def naive_loss(feats, feats_pos, code, code_pos, cfg, draws):
    """The release's ContrastiveCorrelationLoss, term by term (reference for the speed ratio)."""
    def sample(t, coords):
        return F.grid_sample(t, coords.permute(0, 2, 1, 3), padding_mode="border", align_corners=True)

    def corr(a, b):
        return torch.einsum("nchw,ncij->nhwij", F.normalize(a, dim=1, eps=1e-10), F.normalize(b, dim=1, eps=1e-10))

    def helper(f1, f2, c1, c2, shift):
        with torch.no_grad():
            fd = corr(f1, f2)
            old_mean = fd.mean()
            fd = fd - fd.mean([3, 4], keepdim=True)
            fd = fd - fd.mean() + old_mean
        cd = corr(c1, c2)
        return -cd.clamp(0) * (fd - shift)

    f1, c1 = sample(feats, draws.coords1), sample(code, draws.coords1)
    f2, c2 = sample(feats_pos, draws.coords2), sample(code_pos, draws.coords2)
    self_loss = helper(f1, f1, c1, c1, cfg.b_self).mean()
    knn_loss = helper(f1, f2, c1, c2, cfg.b_knn).mean()
    neg = [helper(f1, sample(feats[p], draws.coords2), c1, sample(code[p], draws.coords2), cfg.b_rand)
           for p in draws.perms]
    rand_loss = torch.cat(neg).mean()
    return cfg.lambda_self * self_loss + cfg.lambda_knn * knn_loss + cfg.lambda_rand * rand_loss


def make_inputs():
    """Backbone-sized features and codes (leaf tensors, so the timing is the loss alone) and one set of draws."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(B, C, H, H, generator=g)
    feats_pos = torch.randn(B, C, H, H, generator=g)
    code = torch.randn(B, D, H, H, generator=g).requires_grad_(True)
    code_pos = torch.randn(B, D, H, H, generator=g).requires_grad_(True)
    cfg = LossConfig()
    return feats, feats_pos, code, code_pos, cfg, draw_samples(B, cfg, generator=g)


def step(loss_fn, feats, feats_pos, code, code_pos, cfg, draws):
    code.grad = code_pos.grad = None
    out = loss_fn(feats, feats_pos, code, code_pos, cfg, draws)
    total = out.total if hasattr(out, "total") else out
    total.backward()
    return total.item()


def test_naive_form_computes_the_same_loss_and_gradient():
    feats, feats_pos, code, code_pos, cfg, draws = make_inputs()
    ours = step(correspondence_loss, feats, feats_pos, code, code_pos, cfg, draws)
    grads = code.grad.clone(), code_pos.grad.clone()
    naive = step(naive_loss, feats, feats_pos, code, code_pos, cfg, draws)
    assert ours == pytest.approx(naive, rel=1e-4, abs=1e-6)
    torch.testing.assert_close(grads[0], code.grad, rtol=1e-3, atol=1e-7)
    torch.testing.assert_close(grads[1], code_pos.grad, rtol=1e-3, atol=1e-7)


@pytest.mark.benchmark(group="loss-fwd-bwd")
def test_loss_speed(benchmark):
    inputs = make_inputs()
    row = compare(benchmark, "loss fwd+bwd", f"B={B} C={C} D={D} {H}×{H}, 11×11 samples, 5 negatives",
                  lambda: step(correspondence_loss, *inputs), lambda: step(naive_loss, *inputs),
                  ours_name="stego.loss (one gather, one bmm)", reference_name="release structure (einsum per term)",
                  rounds=2, unit="batch")
    assert row.ratio >= MIN_RATIO, f"loss slower than the release's structure: {row}"
