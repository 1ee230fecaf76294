"""Metrics against hand-worked confusion matrices, brute-force matching and random permutations."""
import itertools

import numpy as np
import pytest
import torch

from stego.errors import StegoError
from stego.metrics import ConfusionMatrix, cluster_scores, hungarian_match, linear_scores, scores


def test_hand_worked_confusion_matrix_identity():
    # truth:      0 0 0 1 1 2  (and two ignored pixels)
    # prediction: 0 0 1 1 2 2
    pred = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    target = torch.tensor([0, 0, 0, 1, 1, 2, -1, -1])
    cm = ConfusionMatrix(3, 3)
    cm.update(pred, target)
    assert cm.counts.tolist() == [[2, 0, 0], [1, 1, 0], [0, 1, 1]]
    s = linear_scores(cm)
    # IoU0 = 2/(2+0+1); IoU1 = 1/(1+1+1); IoU2 = 1/(1+1+0)
    assert s.iou == pytest.approx([2 / 3, 1 / 3, 1 / 2])
    assert s.miou == pytest.approx((2 / 3 + 1 / 3 + 1 / 2) / 3)
    assert s.accuracy == pytest.approx(4 / 6)


def test_streaming_equals_one_shot():
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 4, (5, 9, 9), generator=g)
    target = torch.randint(-1, 4, (5, 9, 9), generator=g)
    whole, parts = ConfusionMatrix(4, 4), ConfusionMatrix(4, 4)
    whole.update(pred, target)
    for p, t in zip(pred, target):
        parts.update(p, t)
    assert torch.equal(whole.counts, parts.counts)


def brute_force_best(counts):
    n_pred, n_classes = counts.shape
    best = -1
    for rows in itertools.permutations(range(n_pred), min(n_pred, n_classes)):
        if n_pred >= n_classes:
            total = sum(counts[r, c] for c, r in enumerate(rows))
        else:
            total = max(sum(counts[r, c] for r, c in zip(rows, cols))
                        for cols in itertools.permutations(range(n_classes), n_pred))
        best = max(best, total)
    return best


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_pred,n_classes", [(4, 4), (6, 4), (3, 5)])
def test_hungarian_maximises_matched_pixels(seed, n_pred, n_classes):
    counts = np.random.default_rng(seed).integers(0, 50, size=(n_pred, n_classes))
    match = hungarian_match(counts)
    matched = sum(counts[r, c] for c, r in enumerate(match) if r >= 0)
    assert matched == brute_force_best(counts)
    assert len(set(r for r in match if r >= 0)) == min(n_pred, n_classes)


@pytest.mark.parametrize("seed", range(4))
def test_permuted_cluster_ids_score_like_the_truth(seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 6, (3, 20, 20), generator=g)
    perm = torch.randperm(6, generator=g)
    cm = ConfusionMatrix(6, 6)
    cm.update(perm[target], target)
    s = cluster_scores(cm)
    assert s.miou == pytest.approx(1.0) and s.accuracy == pytest.approx(1.0)
    assert s.match == perm.tolist()


def test_extra_clusters_count_as_errors():
    # Two classes, three clusters. Cluster 2 holds 4 pixels of class 1 that no matching can claim.
    counts = np.array([[10, 0], [0, 6], [0, 4]])
    s = scores(counts, hungarian_match(counts))
    assert s.match == [0, 1]
    assert s.iou == pytest.approx([1.0, 6 / 10])
    assert s.accuracy == pytest.approx(16 / 20)
    # The release dropped cluster 2 and would have reported 100 % accuracy here.
    assert s.accuracy < 1.0


def test_fewer_clusters_than_classes_leave_a_class_at_zero():
    counts = np.array([[5, 0, 1], [0, 4, 2]])
    s = scores(counts, hungarian_match(counts))
    assert s.match[2] == -1
    assert s.iou[2] == 0.0
    assert s.accuracy == pytest.approx(9 / 12)


def test_absent_class_is_left_out_of_the_mean():
    counts = np.array([[3, 0, 0], [1, 2, 0], [0, 0, 0]])
    s = scores(counts)
    assert np.isnan(s.iou[2])
    assert s.miou == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert s.as_dict()["iou"][2] is None


def test_bad_labels_and_shapes_are_clear_errors():
    cm = ConfusionMatrix(3, 3)
    with pytest.raises(StegoError, match="label values"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 3]))
    with pytest.raises(StegoError, match="shape"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(StegoError, match="predictions"):
        cm.update(torch.tensor([0, 5]), torch.tensor([0, 1]))
