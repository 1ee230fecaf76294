"""Fixed projections (stego.projection): PCA from streamed moments against numpy's SVD of the whole standardised
matrix, the random projection's distribution and seed, and a reduced baseline end to end (fitted once, saved in
the checkpoint, never refitted on resume, evaluated through the same path)."""
import numpy as np
import pytest
import torch
import yaml

from baselines.raw_features import baseline_config, is_raw, run_baseline
from stego import projection
from stego.checkpoint import load_checkpoint
from stego.data.synthetic import SceneSpec, make_scenes
from stego.errors import StegoError
from stego.model import SegmentationHead
from stego.projection import FixedProjection, Moments, fit_projection, gaussian_matrix, principal_axes


def correlated_features(seed=0, n=2000, c=12):
    """Rows with unequal channel scales and offsets and a few strong directions (a well-separated spectrum)."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(c, c))
    spectrum = np.array([8.0, 5.0, 3.0, 2.0] + [0.5] * (c - 4))
    x = (rng.normal(size=(n, c)) * spectrum) @ basis
    return x * rng.uniform(0.5, 3.0, size=c) + rng.uniform(-2, 2, size=c)


def test_streamed_moments_match_numpy_in_any_chunking():
    x = correlated_features()
    moments = Moments.empty(x.shape[1])
    for chunk in np.array_split(x, 7):
        moments.add(torch.from_numpy(chunk).float())
    mean, std = moments.mean_std()
    x32 = x.astype(np.float32).astype(np.float64)  # what the float32 rows carried
    np.testing.assert_allclose(mean.numpy(), x32.mean(0), rtol=1e-10)
    np.testing.assert_allclose(std.numpy(), x32.std(0), rtol=1e-8)
    np.testing.assert_allclose(moments.correlation().numpy(), np.corrcoef(x32, rowvar=False), atol=1e-10)


def test_pca_axes_are_the_svd_of_the_standardised_matrix():
    x = correlated_features(1)
    moments = Moments.empty(x.shape[1])
    moments.add(torch.from_numpy(x))
    axes = principal_axes(moments.correlation(), 4).numpy()
    z = (x - x.mean(0)) / x.std(0)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    for got, want in zip(axes, vt[:4]):
        assert abs(abs(got @ want) - 1) < 1e-9  # the same axis up to sign
        assert got[np.abs(got).argmax()] > 0  # the sign rule
    np.testing.assert_allclose(axes @ axes.T, np.eye(4), atol=1e-12)


def test_the_projection_module_computes_standardise_then_project():
    proj = FixedProjection(5, 3)
    mean, scale, weight = torch.randn(5), torch.rand(5) + 0.5, torch.randn(3, 5)
    proj.set(mean, scale, weight)
    feats = torch.randn(2, 5, 4, 3)
    want = np.einsum("dc,bchw->bdhw", weight.numpy(),
                     (feats.numpy() - mean.numpy()[:, None, None]) / scale.numpy()[:, None, None])
    np.testing.assert_allclose(proj(feats).numpy(), want, rtol=1e-5, atol=1e-6)
    assert bool(proj.fitted) and not list(proj.parameters())
    assert set(proj.state_dict()) == {"mean", "scale", "weight", "fitted"}


def test_random_matrix_is_seeded_gaussian_with_variance_one_over_dim():
    a, b = gaussian_matrix(64, 400, seed=3), gaussian_matrix(64, 400, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, gaussian_matrix(64, 400, seed=4))
    values = a.flatten().numpy()
    assert abs(values.mean()) < 0.01 and values.var() == pytest.approx(1 / 64, rel=0.03)
    # Johnson–Lindenstrauss: squared norms of projected unit vectors concentrate around 1
    unit = torch.nn.functional.normalize(torch.randn(200, 400, dtype=torch.float64), dim=1)
    norms = ((unit @ a.T) ** 2).sum(1)
    assert abs(float(norms.mean()) - 1) < 0.05


def test_a_head_with_a_fixed_projection_has_nothing_to_train():
    head = SegmentationHead(19, 7, "pca")
    assert not list(head.parameters())
    assert head(torch.randn(1, 19, 3, 3))[1].shape == (1, 7, 3, 3)


def test_fit_refuses_more_dimensions_than_channels():
    with pytest.raises(StegoError, match=r"model.dim=30 exceeds the backbone's 19 channels"):
        fit_projection("pca", FixedProjection(19, 30), backbone=None, dataset=None, seed=0)


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("projection")
    root = make_scenes(tmp / "scenes", SceneSpec(n_classes=4, n_train=10, n_val=3, size=48), seed=2)
    values = {"name": "tiny", "data": {"dataset": "synthetic", "root": str(root), "crop": "none", "res": 32,
                                       "workers": 0},
              "model": {"backbone": "filterbank", "weights": "random", "dim": 5},
              "train": {"batch_size": 4, "iterations": 4, "log_every": 1, "hist_every": 0, "device": "cpu"},
              "eval": {"res": 32, "crf": False, "batch_size": 2}}
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize("kind", ["pca", "random"])
def test_a_reduced_baseline_fits_once_and_evaluates(preset, tmp_path, monkeypatch, kind):
    cfg = baseline_config(str(preset), "filterbank", reduce=kind, dim=5)
    assert is_raw(cfg) and cfg.model.projection == kind and cfg.name == f"tiny-{kind}5-filterbank"
    record = run_baseline(cfg, tmp_path)
    state = load_checkpoint(tmp_path / "train" / "checkpoint.pt")["model"]
    assert bool(state["head.fixed.fitted"]) and state["head.fixed.weight"].shape == (5, 19)
    if kind == "pca":  # orthonormal rows: principal axes of the training features
        w = state["head.fixed.weight"].double()
        torch.testing.assert_close(w @ w.T, torch.eye(5, dtype=torch.float64), atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(state["head.fixed.weight"], gaussian_matrix(5, 19, cfg.train.seed).float())
    assert 0 < record.metrics["cluster"]["accuracy"] <= 1

    def refit(*args, **kwargs):
        raise AssertionError("a resumed run must load its projection, not refit it")

    monkeypatch.setattr("stego.train.fit_projection", refit)
    longer = baseline_config(str(preset), "filterbank", ["train.iterations=6"], reduce=kind, dim=5)
    run_baseline(longer, tmp_path)
    resumed = load_checkpoint(tmp_path / "train" / "checkpoint.pt")
    assert resumed["iteration"] == 6
    assert torch.equal(resumed["model"]["head.fixed.weight"], state["head.fixed.weight"])


def test_reduce_must_be_known(preset):
    with pytest.raises(StegoError, match="reduce must be one of none, pca, random"):
        baseline_config(str(preset), "filterbank", reduce="umap")


def test_fixed_kinds_are_config_choices():
    from stego.config import PROJECTIONS

    assert set(projection.FIXED) <= set(PROJECTIONS)
