"""Segmentation head (three independent dropout masks) and the two probes, against direct computations."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stego.model import ClusterProbe, LinearProbe, SegmentationHead


def capture_inputs(head):
    seen = {}
    head.linear.register_forward_pre_hook(lambda m, a: seen.__setitem__("linear", a[0]))
    head.mlp[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("mlp", a[0]))
    return seen


def kept_channels(x, feats):
    """Which channels a Dropout2d mask kept, checking kept ones are scaled by 1/(1-p) and dropped ones are zero."""
    kept = x.abs().sum(dim=(2, 3)) > 0
    torch.testing.assert_close(x, feats * kept[..., None, None] * 2.0)
    return kept


def test_three_independent_channel_dropout_masks():
    torch.manual_seed(0)
    head = SegmentationHead(64, 8, "nonlinear", dropout=0.5).train()
    seen = capture_inputs(head)
    feats = torch.randn(2, 64, 5, 5)
    teacher, code = head(feats)
    masks = [kept_channels(x, feats) for x in (seen["linear"], seen["mlp"], teacher)]
    assert not any(torch.equal(masks[i], masks[j]) for i, j in ((0, 1), (1, 2), (0, 2)))
    torch.testing.assert_close(code, head.linear(seen["linear"]) + head.mlp(seen["mlp"]))


def test_eval_mode_has_no_dropout_and_code_is_linear_plus_mlp():
    head = SegmentationHead(16, 6, "nonlinear").eval()
    feats = torch.randn(2, 16, 4, 3)
    teacher, code = head(feats)
    assert torch.equal(teacher, feats)
    w1, b1 = head.linear.weight[:, :, 0, 0], head.linear.bias
    wa, ba = head.mlp[0].weight[:, :, 0, 0], head.mlp[0].bias
    wb, bb = head.mlp[2].weight[:, :, 0, 0], head.mlp[2].bias
    x = feats.double().permute(0, 2, 3, 1)
    mlp = torch.relu(x @ wa.double().T + ba.double()) @ wb.double().T + bb.double()
    expected = x @ w1.double().T + b1.double() + mlp
    torch.testing.assert_close(code.double(), expected.permute(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("projection,dim", [("nonlinear", 7), ("linear", 7), ("none", 16)])
def test_projection_types(projection, dim):
    head = SegmentationHead(16, 7, projection).eval()
    feats = torch.randn(3, 16, 4, 5)
    _, code = head(feats)
    assert code.shape == (3, dim, 4, 5) and head.dim == dim
    if projection == "linear":
        torch.testing.assert_close(code, head.linear(feats))
        assert not hasattr(head, "mlp")
    if projection == "none":
        assert torch.equal(code, feats)


def test_cluster_probe_loss_and_log_probs_match_numpy():
    torch.manual_seed(1)
    probe = ClusterProbe(5, 4)
    code = torch.randn(2, 5, 3, 3)
    c = code.double().numpy().transpose(0, 2, 3, 1).reshape(-1, 5)
    mu = probe.clusters.detach().double().numpy()
    cos = (c / np.linalg.norm(c, axis=1, keepdims=True)) @ (mu / np.linalg.norm(mu, axis=1, keepdims=True)).T
    assert probe.loss(code).item() == pytest.approx(-cos.max(axis=1).mean(), rel=1e-5)
    logits = 2 * cos
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    got = probe.log_probs(code).detach().double().numpy().transpose(0, 2, 3, 1).reshape(-1, 4)
    np.testing.assert_allclose(got, log_probs, rtol=1e-5, atol=1e-6)


def test_cluster_probe_training_moves_centroids_onto_clusters():
    torch.manual_seed(2)
    centres = F.normalize(torch.randn(3, 8), dim=1)
    code = (centres[torch.randint(0, 3, (400,))] + 0.05 * torch.randn(400, 8)).T.reshape(1, 8, 20, 20)
    probe = ClusterProbe(8, 3)
    opt = torch.optim.Adam(probe.parameters(), lr=5e-3)
    first = probe.loss(code).item()
    for _ in range(400):
        opt.zero_grad()
        probe.loss(code).backward()
        opt.step()
    assert probe.loss(code).item() < first - 0.1


def test_linear_probe_loss_ignores_unlabelled_pixels_and_upsamples():
    torch.manual_seed(3)
    probe = LinearProbe(4, 3)
    code = torch.randn(2, 4, 3, 3)
    labels = torch.randint(0, 3, (2, 6, 6))
    labels[0, :2] = -1
    logits = F.interpolate(probe(code), size=(6, 6), mode="bilinear", align_corners=False)
    logp = torch.log_softmax(logits.double(), dim=1).permute(0, 2, 3, 1).reshape(-1, 3)
    flat = labels.reshape(-1)
    keep = flat >= 0
    expected = -logp[keep].gather(1, flat[keep, None]).mean()
    assert probe.loss(code, labels).item() == pytest.approx(expected.item(), rel=1e-5)
    assert probe.loss(code, torch.full((2, 6, 6), -1)).item() == 0.0


def test_bad_projection_is_rejected():
    with pytest.raises(ValueError, match="projection"):
        SegmentationHead(4, 2, "mlp")
