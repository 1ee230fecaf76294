"""Cosine k-means against brute force and hand-made cases, and the raw-feature baseline end to end."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stego import backbones
from stego.config import from_dict
from stego.data.synthetic import SceneSpec, make_scenes
from stego.errors import StegoError
from stego.kmeans import assign, kmeans_plusplus, raw_feature_kmeans, spherical_kmeans


def blobs(n_per, k, dim, spread, seed):
    """k unit directions in general position and n_per noisy copies of each: (rows [k·n_per, dim], truth)."""
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(k, dim, generator=gen), dim=1)
    truth = torch.arange(k).repeat_interleave(n_per)
    x = centres[truth] + spread * torch.randn(k * n_per, dim, generator=gen)
    return x, truth


def test_well_separated_clusters_are_recovered_exactly():
    x, truth = blobs(40, 4, 8, 0.05, seed=0)
    fit = spherical_kmeans(x, 4, restarts=3, seed=1)
    # each true cluster maps to exactly one label and the mapping is one-to-one
    pairs = {(int(t), int(lab)) for t, lab in zip(truth, fit.labels)}
    assert len(pairs) == 4 and len({lab for _, lab in pairs}) == 4
    # centroids are the normalised means of their members (checked in float64)
    x64 = F.normalize(x.double(), dim=1)
    for j in range(4):
        mean = F.normalize(x64[fit.labels == j].sum(0), dim=0)
        torch.testing.assert_close(fit.centroids[j].double(), mean, atol=1e-5, rtol=0)


def test_global_optimum_matches_brute_force_over_all_partitions():
    """For 8 points and k=3, enumerate all 3^8 assignments: the best objective is Σ_clusters ‖Σ members‖."""
    x, _ = blobs(3, 3, 3, 0.6, seed=5)
    x = x[:8]
    unit = (x.double() / x.double().norm(dim=1, keepdim=True)).numpy()
    best = 0.0
    for labels in itertools.product(range(3), repeat=len(unit)):
        labels = np.array(labels)
        best = max(best, sum(np.linalg.norm(unit[labels == j].sum(0)) for j in range(3)))
    fit = spherical_kmeans(x, 3, restarts=20, seed=0)
    assert fit.objective == pytest.approx(best, abs=1e-4)
    # the reported objective is the sum of cosines of the reported assignment
    cos = (unit @ F.normalize(fit.centroids.double(), dim=1).numpy().T)[np.arange(len(unit)), fit.labels.numpy()]
    assert fit.objective == pytest.approx(cos.sum(), abs=1e-4)


def test_objective_never_decreases_and_runs_are_seeded():
    x, _ = blobs(100, 6, 5, 0.8, seed=2)  # heavily overlapping: many Lloyd iterations
    fit = spherical_kmeans(x, 6, restarts=2, seed=3)
    assert len(fit.history) > 3
    assert all(b >= a - 1e-5 * abs(a) for a, b in zip(fit.history, fit.history[1:]))
    again = spherical_kmeans(x, 6, restarts=2, seed=3)
    assert torch.equal(fit.centroids, again.centroids) and torch.equal(fit.labels, again.labels)
    other = spherical_kmeans(x, 6, restarts=1, seed=4)
    assert not torch.equal(fit.centroids, other.centroids)


def test_assign_is_the_float64_argmax_of_cosines():
    gen = torch.Generator().manual_seed(0)
    x, c = torch.randn(500, 7, generator=gen), torch.randn(5, 7, generator=gen)
    xn = x.double().numpy() / np.linalg.norm(x.double().numpy(), axis=1, keepdims=True)
    cn = c.double().numpy() / np.linalg.norm(c.double().numpy(), axis=1, keepdims=True)
    labels, sims = assign(x, c, chunk=64)
    np.testing.assert_array_equal(labels.numpy(), (xn @ cn.T).argmax(1))
    np.testing.assert_allclose(sims.numpy(), (xn @ cn.T).max(1), atol=1e-6)


def test_kmeans_plusplus_never_reseeds_an_already_covered_direction():
    """Three directions repeated ten times: after a seed, its copies have zero weight, so seeds are all distinct."""
    dirs = torch.eye(3)
    x = dirs.repeat(10, 1)
    for seed in range(5):
        seeds = kmeans_plusplus(x, 3, torch.Generator().manual_seed(seed))
        assert sorted(map(tuple, seeds.tolist())) == sorted(map(tuple, dirs.tolist()))


def test_bad_input_is_a_clear_error():
    with pytest.raises(StegoError, match="all-zero"):
        spherical_kmeans(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), 1)
    with pytest.raises(StegoError, match="k=3"):
        spherical_kmeans(torch.randn(2, 4), 3)
    with pytest.raises(StegoError, match="NaN"):
        spherical_kmeans(torch.tensor([[1.0, float("nan")], [1.0, 0.0]]), 1)


class MeanColour(torch.nn.Module):
    """Test featurizer: the un-normalised RGB averaged over 2×2 patches (its direction is a region's hue)."""

    dim, patch = 3, 2

    def forward(self, images):
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        return F.avg_pool2d(images * std + mean, 2)


class Constant(MeanColour):
    def forward(self, images):
        return torch.ones_like(super().forward(images))


@pytest.mark.parametrize("featurizer, lowest, highest", [(MeanColour, 0.85, 1.0), (Constant, 0.0, 0.5)])
def test_raw_feature_kmeans_scores_the_featurizer(tmp_path, monkeypatch, featurizer, lowest, highest):
    """One colour per class and no nuisance: the hue (RGB direction) is the class, speckle only scales it, so
    k-means on mean colour finds the classes; on constant features it cannot."""
    monkeypatch.setitem(backbones.BACKBONES, "test_feats", backbones.BackboneSpec("test_feats", "custom", 3, 2))
    monkeypatch.setitem(backbones.registry._FACTORIES, "test_feats",
                        lambda weights=None, weights_dir=None: featurizer())
    spec = SceneSpec(n_classes=3, modes_per_class=1, size=32, n_train=12, n_val=6, min_regions=2, max_regions=3,
                     signature=0.0, gain=0.0, offset=0.0, cast=0.0, noise=0.0)
    root = make_scenes(tmp_path, spec, seed=0)
    cfg = from_dict({"data": {"dataset": "synthetic", "root": str(root), "res": 32, "workers": 0},
                     "model": {"backbone": "test_feats", "weights": "random"},
                     "eval": {"res": 32, "crf": False, "batch_size": 4}})
    metrics = raw_feature_kmeans(cfg, crf=False, restarts=3)
    assert set(metrics) >= {"cluster", "images", "kmeans_objective"} and "linear" not in metrics
    assert metrics["images"] == 6
    assert lowest <= metrics["cluster"]["miou"] <= highest
