"""stego.stats against independent computations: np.add.at confusions, a from-scratch IoU, brute-force bootstrap
loops on the same RNG stream, analytic standard errors, scipy's t, and hand-worked 2-class examples."""
import json

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats
from scipy.optimize import linear_sum_assignment

from stego import stats
from stego.errors import StegoError
from stego.metrics import ConfusionMatrix, hungarian_match, scores
from stego.counts import ImageCounts, ImageCountsBuilder, image_confusions
from stego.stats import agreement, bootstrap_ci, overclustering_curve, paired_bootstrap, score_protocol, t_interval


# --- references, written from scratch -------------------------------------------------------------------------------

def ref_confusion(pred, target, n_pred, n_classes):
    out = np.zeros((n_pred, n_classes), dtype=np.int64)
    kept = target != -1
    np.add.at(out, (pred[kept], target[kept]), 1)
    return out


def ref_scores(conf, mapping):
    """(miou, accuracy, iou) with row p scored as class mapping[p] (-1: never matched), by plain loops."""
    conf = np.asarray(conf, dtype=float)
    n_classes = conf.shape[1]
    iou = []
    correct = 0.0
    for k in range(n_classes):
        rows = [p for p in range(conf.shape[0]) if mapping[p] == k]
        tp = sum(conf[p, k] for p in rows)
        predicted = sum(conf[p].sum() for p in rows)
        truth = conf[:, k].sum()
        union = predicted + truth - tp
        iou.append(tp / union if union else np.nan)
        correct += tp
    defined = [v for v in iou if not np.isnan(v)]
    return sum(defined) / len(defined), correct / conf.sum(), iou


def ref_hungarian(conf):
    rows, cols = linear_sum_assignment(conf, maximize=True)
    mapping = [-1] * conf.shape[0]
    for r, c in zip(rows, cols):
        mapping[r] = c
    return mapping


def ref_metric(conf, kind, metric, mapping=None):
    if mapping is None:
        mapping = ref_hungarian(conf) if kind == "cluster" else list(range(conf.shape[0]))
    miou, accuracy, iou = ref_scores(conf, mapping)
    return {"miou": miou, "accuracy": accuracy}.get(metric) if ":" not in metric else iou[int(metric[4:])]


def random_images(n, n_pred, n_classes, seed, shape=(6, 7), signal=0.6):
    """Predictions that follow the labels with probability `signal`, else uniform noise; some ignore pixels."""
    rng = np.random.default_rng(seed)
    target = rng.integers(-1, n_classes, size=(n, *shape))
    noise = rng.integers(0, n_pred, size=target.shape)
    pred = np.where(rng.random(target.shape) < signal, (target * 3 + 1) % n_pred, noise)
    return pred, target


def build(pred, target, n_pred, n_classes):
    builder = ImageCountsBuilder(n_pred, n_classes)
    for p, t in zip(pred, target):
        builder.add(p, t)
    return builder.build()


def brute_force(per_image, kind, metric, n_resamples, seed, mapping=None):
    """The metric on resamples of image indices drawn as stego.stats documents; matching refitted unless given."""
    rng = np.random.default_rng(seed)
    n = len(per_image)
    values = []
    for _ in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        values.append(ref_metric(per_image[idx].sum(0), kind, metric, mapping))
    return np.array(values)


# --- per-image counts -----------------------------------------------------------------------------------------------

def test_counts_total_and_dense_equal_direct_confusions():
    pred, target = random_images(25, 5, 4, seed=1)
    counts = build(pred, target, 5, 4)
    per_image = np.stack([ref_confusion(p, t, 5, 4) for p, t in zip(pred, target)])
    assert counts.n_images == 25
    assert np.array_equal(counts.dense(), per_image.reshape(25, -1))
    assert np.array_equal(counts.total(), ref_confusion(pred.ravel(), target.ravel(), 5, 4))
    assert np.array_equal(counts.total([3, 3, 7]), 2 * per_image[3] + per_image[7])
    global_cm = ConfusionMatrix(5, 4)
    global_cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    assert np.array_equal(counts.total(), global_cm.counts.numpy())
    cells, values = image_confusions(pred[0], target[0], 5, 4)
    assert np.all(np.diff(cells) > 0) and np.all(values > 0)
    assert np.array_equal(ImageCounts.from_dense(per_image).dense(), counts.dense())


def test_json_round_trip_is_plain_ints():
    pred, target = random_images(6, 5, 4, seed=2)
    counts = build(pred, target, 5, 4)
    data = json.loads(json.dumps(counts.to_json()))
    assert all(type(v) is int for key in ("offsets", "cells", "counts") for v in data[key])
    back = ImageCounts.from_json(data)
    assert (back.n_pred, back.n_classes) == (5, 4)
    for key in ("offsets", "cells", "counts"):
        assert np.array_equal(getattr(back, key), getattr(counts, key))
    assert ImageCountsBuilder(3, 3).build().n_images == 0


def test_json_size_for_cocostuff_validation():
    # 2,175 images x 27 classes, 10-40 touched cells per image (24.9 on average), 320x320 labelled pixels:
    # measured 579,443 bytes (266 per image) with json.dumps' defaults, 469,125 with separators=(",", ":")
    rng = np.random.default_rng(0)
    n_classes, pixels = 27, 320 * 320
    per_image = np.zeros((2175, n_classes * n_classes), dtype=np.int64)
    for row in per_image:
        k = rng.integers(10, 41)
        row[rng.choice(row.size, size=k, replace=False)] = rng.multinomial(pixels, rng.dirichlet(np.full(k, 0.5)))
    counts = ImageCounts.from_dense(per_image.reshape(2175, n_classes, n_classes))
    size = len(json.dumps(counts.to_json()))
    assert 450_000 < size < 700_000, size


# --- bootstrap ------------------------------------------------------------------------------------------------------

def test_bootstrap_se_of_a_mean_matches_analytic():
    # each image: 10 pixels of class 0, c_i of them predicted right, so accuracy = mean(c_i / 10)
    rng = np.random.default_rng(3)
    c = rng.binomial(10, 0.7, size=400)
    per_image = np.zeros((400, 2, 2), dtype=np.int64)
    per_image[:, 0, 0], per_image[:, 1, 0] = c, 10 - c
    x = c / 10
    analytic = x.std() / np.sqrt(x.size)
    for kind in ("linear", "cluster"):
        ci = bootstrap_ci(ImageCounts.from_dense(per_image), "accuracy", kind, n_resamples=4000)
        assert ci.point == pytest.approx(x.mean())
        assert ci.se == pytest.approx(analytic, rel=0.05)


@pytest.mark.parametrize("kind, n_pred, metric", [("cluster", 5, "miou"), ("cluster", 5, "accuracy"),
                                                  ("linear", 4, "miou"), ("cluster", 5, "iou:2")])
def test_percentile_ci_equals_brute_force_on_same_draws(kind, n_pred, metric):
    # few pixels and a weak signal: the Hungarian matching changes between resamples
    pred, target = random_images(30, n_pred, 4, seed=4, shape=(2, 3), signal=0.2)
    per_image = np.stack([ref_confusion(p, t, n_pred, 4) for p, t in zip(pred, target)])
    ci = bootstrap_ci(build(pred, target, n_pred, 4), metric, kind, n_resamples=200, seed=7)
    values = brute_force(per_image, kind, metric, 200, seed=7)
    if kind == "cluster":
        fixed = brute_force(per_image, kind, metric, 200, seed=7, mapping=ref_hungarian(per_image.sum(0)))
        assert not np.allclose(fixed, values, equal_nan=True)
    values = values[~np.isnan(values)]
    assert ci.point == pytest.approx(ref_metric(per_image.sum(0), kind, metric), abs=1e-12)
    assert [ci.lower, ci.upper] == pytest.approx(np.percentile(values, [2.5, 97.5]).tolist(), abs=1e-12)
    assert ci.se == pytest.approx(values.std(ddof=1), abs=1e-12)
    assert (ci.n_resamples, ci.seed, ci.level) == (200, 7, 0.95)


def test_point_estimate_equals_stego_metrics():
    pred, target = random_images(20, 6, 4, seed=5)
    counts = build(pred, target, 6, 4)
    total = counts.total()
    expected = scores(total, hungarian_match(total))
    got = score_protocol(counts, "hungarian")
    assert (got.miou, got.accuracy) == pytest.approx((expected.miou, expected.accuracy), abs=1e-12)
    assert bootstrap_ci(counts, "miou", "cluster", n_resamples=10).point == pytest.approx(expected.miou, abs=1e-12)


def test_seeded_determinism_and_chunking(monkeypatch):
    pred, target = random_images(30, 5, 4, seed=6)
    counts = build(pred, target, 5, 4)
    first = bootstrap_ci(counts, "miou", "cluster", n_resamples=100, seed=1)
    assert bootstrap_ci(counts, "miou", "cluster", n_resamples=100, seed=1) == first
    other = bootstrap_ci(counts, "miou", "cluster", n_resamples=100, seed=2)
    assert (other.lower, other.upper, other.se) != (first.lower, first.upper, first.se)
    monkeypatch.setattr(stats, "_CHUNK_FLOATS", 7)  # one resample at a time: the same draws, the same interval
    assert bootstrap_ci(counts, "miou", "cluster", n_resamples=100, seed=1) == first


# --- matching protocols, hand-worked --------------------------------------------------------------------------------

def test_majority_and_hungarian_by_hand():
    conf = np.array([[5, 1], [3, 0], [1, 4]])
    majority = score_protocol(conf, "majority")
    # rows 0, 1 -> class 0; row 2 -> class 1. IoU0 = 8 / (9 + 9 - 8), IoU1 = 4 / (5 + 5 - 4)
    assert majority.mapping == [0, 0, 1]
    assert majority.iou == pytest.approx([0.8, 4 / 6])
    assert (majority.miou, majority.accuracy) == pytest.approx(((0.8 + 4 / 6) / 2, 12 / 14))
    hungarian = score_protocol(conf)
    # class 0 -> row 0, class 1 -> row 2; row 1's 3 pixels are errors. IoU0 = 5 / (6 + 9 - 5)
    assert hungarian.protocol == "hungarian" and hungarian.mapping == [0, -1, 1]
    assert (hungarian.miou, hungarian.accuracy) == pytest.approx(((0.5 + 4 / 6) / 2, 9 / 14))
    assert score_protocol(conf, "overclustering").protocol == "overclustering"


def test_overclustering_curve_by_hand():
    two = np.array([[6, 1], [3, 4]])            # majority: identity; IoU0 = 6/10, IoU1 = 4/8
    three = np.array([[5, 1], [3, 0], [1, 4]])  # as test_majority_and_hungarian_by_hand
    curve = overclustering_curve([(3, three), (2, two)])
    assert curve.ks == [2, 3]
    assert curve.miou == pytest.approx([(0.6 + 0.5) / 2, (0.8 + 4 / 6) / 2])
    assert curve.accuracy == pytest.approx([10 / 14, 12 / 14])


def test_heldout_hungarian_by_hand():
    image_a = [[4, 1], [0, 3]]  # its own matching: identity
    image_b = [[1, 3], [2, 0]]  # its own matching: swapped
    counts = ImageCounts.from_dense([image_a, image_b])
    # fit on A, score B: tp0 = 1, IoU0 = 1 / (4 + 3 - 1); tp1 = 0. Fit on B, score A: IoU0 = 0, IoU1 = 1 / (5 + 4 - 1)
    by_hand = {0: (1 / 12, 1 / 6), 1: (1 / 16, 1 / 8)}
    seen = set()
    for seed in range(10):
        s = score_protocol(counts, "heldout_hungarian", seed=seed)
        assert len(s.fit_images) == 1
        seen.add(s.fit_images[0])
        assert (s.miou, s.accuracy) == pytest.approx(by_hand[s.fit_images[0]])
    assert seen == {0, 1}
    assert score_protocol(counts, "heldout_hungarian", seed=3) == score_protocol(counts, "heldout_hungarian", seed=3)


# --- paired bootstrap -----------------------------------------------------------------------------------------------

def test_paired_bootstrap_by_hand():
    # two images, both with 2 labelled pixels of each class. a: A 3/4 right, B 2/4; b: both perfect.
    a = ImageCounts.from_dense([[[2, 1], [0, 1]], [[1, 1], [1, 1]]])
    b = ImageCounts.from_dense([[[2, 0], [0, 2]], [[2, 0], [0, 2]]])
    # metrics are scale-free, so a resample is A alone (p 1/4), A + B (1/2) or B alone (1/4): accuracy b - a is
    # 0.25, 0.375 or 0.5, and with ~250 draws at each end the 2.5% / 97.5% percentiles are the extremes
    ci = paired_bootstrap(a, b, "accuracy", "linear")
    assert ci.point == pytest.approx(1 - 5 / 8)
    assert (ci.lower, ci.upper) == pytest.approx((0.25, 0.5))
    assert ci.metric == "accuracy (b - a)" and ci.method.startswith("paired")
    assert agreement(ci, 0.1) == "agrees" and agreement(ci, -0.1) == "opposite"
    flipped = paired_bootstrap(b, a, "accuracy", "linear")
    assert (flipped.lower, flipped.upper) == pytest.approx((-0.5, -0.25))
    same = paired_bootstrap(a, a, "miou", "cluster")
    assert (same.point, same.lower, same.upper, same.se) == (0, 0, 0, 0)
    assert agreement(same, 0.1) == "inconclusive"


def test_paired_bootstrap_equals_brute_force_difference():
    pred, target = random_images(30, 5, 4, seed=8, shape=(2, 3), signal=0.3)
    other = np.where(np.random.default_rng(9).random(pred.shape) < 0.3, 0, pred)
    per_a = np.stack([ref_confusion(p, t, 5, 4) for p, t in zip(pred, target)])
    per_b = np.stack([ref_confusion(p, t, 5, 4) for p, t in zip(other, target)])
    ci = paired_bootstrap(ImageCounts.from_dense(per_a), ImageCounts.from_dense(per_b), "miou", "cluster",
                          n_resamples=150, seed=11)
    diff = brute_force(per_b, "cluster", "miou", 150, 11) - brute_force(per_a, "cluster", "miou", 150, 11)
    assert [ci.lower, ci.upper] == pytest.approx(np.percentile(diff, [2.5, 97.5]).tolist(), abs=1e-12)
    assert ci.se == pytest.approx(diff.std(ddof=1), abs=1e-12)


# --- over seeds -----------------------------------------------------------------------------------------------------

def test_t_interval_against_scipy():
    values = [0.281, 0.305, 0.297, 0.290]
    t = t_interval(values, level=0.9)
    half = scipy_stats.t.ppf(0.95, df=3) * np.std(values, ddof=1) / np.sqrt(4)
    assert (t.mean, t.std, t.half_width) == pytest.approx((np.mean(values), np.std(values, ddof=1), half))
    assert (t.lower, t.upper, t.n, t.n_missing) == pytest.approx((np.mean(values) - half, np.mean(values) + half, 4, 0))
    with_failures = t_interval([*values, None, float("nan")], level=0.9)
    assert (with_failures.mean, with_failures.half_width, with_failures.n_missing) == pytest.approx((t.mean, half, 2))
    one = t_interval([0.3])
    assert one.mean == 0.3 and one.n == 1 and np.isnan(one.std) and np.isnan(one.lower)
    assert np.isnan(t_interval([]).mean)


# --- errors ---------------------------------------------------------------------------------------------------------

def raises(call, match):
    with pytest.raises(StegoError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_errors_are_one_line():
    counts = ImageCounts.from_dense(np.ones((3, 2, 2), dtype=np.int64))
    fewer = ImageCounts.from_dense(np.ones((2, 2, 2), dtype=np.int64))
    relabelled = ImageCounts.from_dense([[[1, 1], [1, 1]]] * 2 + [[[2, 1], [1, 0]]])
    raises(lambda: paired_bootstrap(counts, fewer, "miou", "linear"), "same images")
    raises(lambda: paired_bootstrap(counts, relabelled, "miou", "linear"), "image 2")
    raises(lambda: image_confusions(np.zeros((2, 3), int), np.zeros((3, 2), int), 2, 2), "shape")
    raises(lambda: image_confusions(np.zeros(4), np.zeros(4, int), 2, 2), "integer")
    raises(lambda: image_confusions(np.zeros(4, int), np.full(4, 5), 2, 2), "labels must be in")
    raises(lambda: image_confusions(np.full(4, 2), np.zeros(4, int), 2, 2), "predictions must be in")
    raises(lambda: ImageCounts.from_dense(np.ones((2, 2))), "n_images, n_pred, n_classes")
    raises(lambda: ImageCounts.from_json({"n_pred": 2}), "to_json")
    raises(lambda: ImageCounts(2, 2, [0, 3], [0, 1], [1, 1]), "offsets")
    raises(lambda: ImageCounts(2, 2, [0, 1], [4], [1]), "cells must be in")
    raises(lambda: counts.total([5]), "image indices")
    raises(lambda: bootstrap_ci(counts, "dice", "linear"), "unknown metric")
    raises(lambda: bootstrap_ci(counts, "iou:2", "linear"), "unknown metric")
    raises(lambda: bootstrap_ci(counts, "miou", "kmeans"), "probe kind")
    raises(lambda: bootstrap_ci(counts, "miou", "linear", level=95), "level")
    raises(lambda: bootstrap_ci(counts.total(), "miou", "linear"), "ImageCounts")
    raises(lambda: bootstrap_ci(ImageCounts.from_dense(np.ones((2, 3, 2))), "miou", "linear"), "identity")
    raises(lambda: score_protocol(counts, "greedy"), "unknown matching protocol")
    raises(lambda: score_protocol(counts.total(), "heldout_hungarian"), "ImageCounts")
    raises(lambda: score_protocol(np.ones((1, 2)), "overclustering"), "K >= n_classes")
    raises(lambda: score_protocol(np.ones(3)), "2-D")
    raises(lambda: overclustering_curve([(3, np.ones((2, 2)))]), "K = 3")
    raises(lambda: overclustering_curve([(2, np.ones((2, 2))), (2, np.ones((2, 2)))]), "each K once")
    raises(lambda: agreement(bootstrap_ci(counts, "miou", "linear", n_resamples=10), 0.0), "non-zero")
    raises(lambda: t_interval([0.1, 0.2], level=0), "level")
