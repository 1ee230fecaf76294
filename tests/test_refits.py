"""Refits of the cluster probe (stego.refits): the batched fit against one probe at a time trained with the probe's
own loss, the over-clustering K by hand, and the stationary point a fit must reach."""
import pytest
import torch
import torch.nn.functional as F

from stego.model import ClusterProbe
from stego.refits import as_probe, fit_cluster_probes, overclustering_ks


def single_fit(codes, k, seed, steps, batch_rows, lr):
    """One probe as training fits it: randn init, Adam on ClusterProbe.loss over rows drawn from its generator."""
    generator = torch.Generator().manual_seed(seed)
    probe = ClusterProbe(codes.shape[1], k)
    with torch.no_grad():
        probe.clusters.copy_(torch.randn(k, codes.shape[1], generator=generator))
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    for _ in range(steps):
        rows = codes[torch.randint(codes.shape[0], (batch_rows,), generator=generator)]
        loss = probe.loss(rows.T.contiguous()[None, :, :, None])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe.clusters.detach()


def test_batched_refits_equal_probes_fitted_one_at_a_time():
    codes = torch.randn(300, 6, generator=torch.Generator().manual_seed(0)) * 3
    ks, seeds = [3, 5, 3], [11, 12, 13]
    batched = fit_cluster_probes(codes, ks, seeds, steps=25, batch_rows=20, lr=0.05)
    for k, seed, got in zip(ks, seeds, batched):
        want = single_fit(codes, k, seed, 25, 20, 0.05)
        assert got.shape == (k, 6)
        assert torch.allclose(got, want, atol=1e-5), (k, seed)
    assert not torch.allclose(batched[0], batched[2])  # same K, other seed: another init


def test_a_refit_ends_where_each_centroid_points_at_the_mean_of_its_rows():
    """At a stationary point of −mean max cos, each winning centroid is the normalised sum of the unit rows it wins
    (the gradient on the sphere, Σx − (Σx·μ)μ, vanishes): a closed form the fit must reach."""
    generator = torch.Generator().manual_seed(1)
    directions = F.normalize(torch.randn(4, 5, generator=generator), dim=1)
    codes = directions[torch.arange(800) % 4] + 0.3 * torch.randn(800, 5, generator=generator)
    probe = as_probe(fit_cluster_probes(codes, [4], [7], steps=400, batch_rows=400, lr=0.05)[0])
    unit = F.normalize(codes, dim=1)
    assigned = probe.cosine(codes.T[None, :, :, None])[0, :, :, 0].argmax(0)
    winners = assigned.unique()
    assert len(winners) >= 2
    for c in winners:
        mean = F.normalize(unit[assigned == c].sum(0), dim=0)
        assert float(mean @ F.normalize(probe.clusters[c], dim=0)) > 0.999, int(c)


@pytest.mark.parametrize("n, ks", [(5, [5, 8, 10, 12, 15]), (27, [27, 40, 54, 68, 81]), (1, [1, 2, 3])])
def test_overclustering_ks_by_hand(n, ks):
    # round() halves to even: 1.5 x 5 = 7.5 -> 8, 2.5 x 5 = 12.5 -> 12, 1.5 x 27 = 40.5 -> 40, 2.5 x 27 = 67.5 -> 68
    assert overclustering_ks(n) == ks
