"""Speed of one confusion-matrix update (an evaluation batch of 8 at 320×320, 27 classes) against straightforward
numpy forms of the same counting: `np.add.at` over (prediction, truth) pairs, and a loop over truth classes.
Timed as CPU time on one thread. `ConfusionMatrix.update` is one numpy bincount with no boolean mask: the ignore
label lands in an extra column that is dropped.
"""
import numpy as np
import pytest
import torch

from stego.constants import IGNORE
from stego.metrics import ConfusionMatrix

from .report import compare

B, H, N_CLASSES = 8, 320, 27
MIN_RATIO = 0.8


def make_batch():
    """Predictions and labels of one batch; about 10% of the label pixels are ignore."""
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, N_CLASSES, (B, H, H), generator=g)
    target = torch.randint(0, N_CLASSES, (B, H, H), generator=g)
    target[torch.rand(B, H, H, generator=g) < 0.1] = IGNORE
    return pred, target


def ours(pred, target):
    confusion = ConfusionMatrix(N_CLASSES, N_CLASSES)
    confusion.update(pred, target)
    return confusion.counts.numpy()


def add_at(pred, target):
    """np.add.at: unbuffered scatter-add of one per labelled pixel into [prediction, truth]."""
    p, t = pred.numpy().ravel(), target.numpy().ravel()
    keep = t != IGNORE
    counts = np.zeros((N_CLASSES, N_CLASSES), dtype=np.int64)
    np.add.at(counts, (p[keep], t[keep]), 1)
    return counts


def per_class(pred, target):
    """per-class loop: one pass per truth class, a histogram of the predictions of its pixels."""
    p, t = pred.numpy().ravel(), target.numpy().ravel()
    counts = np.zeros((N_CLASSES, N_CLASSES), dtype=np.int64)
    for c in range(N_CLASSES):
        counts[:, c] = np.bincount(p[t == c], minlength=N_CLASSES)
    return counts


def brute_force(pred, target):
    """Every (prediction, truth) cell counted by its own mask: the definition, for the correctness check."""
    p, t = pred.numpy(), target.numpy()
    return np.array([[np.count_nonzero((p == i) & (t == j)) for j in range(N_CLASSES)] for i in range(N_CLASSES)])


def test_every_form_counts_the_same():
    pred, target = make_batch()
    want = brute_force(pred, target)
    assert want.sum() == np.count_nonzero(target.numpy() != IGNORE)
    for fn in (ours, add_at, per_class):
        np.testing.assert_array_equal(fn(pred, target), want, err_msg=fn.__name__)


def _name(fn):
    return fn.__doc__.split(":")[0]


@pytest.mark.benchmark(group="metric-update")
@pytest.mark.parametrize("reference", [add_at, per_class], ids=["np.add.at", "per-class-loop"])
def test_update_speed(benchmark, reference):
    pred, target = make_batch()
    row = compare(benchmark, "metric update", f"{B}×{H}×{H} pixels, {N_CLASSES} classes",
                  lambda: ours(pred, target), lambda: reference(pred, target),
                  ours_name="ConfusionMatrix.update", reference_name=_name(reference), rounds=5,
                  units=B, unit="image", clock="cpu")
    assert row.ratio >= MIN_RATIO, f"confusion update slower than {reference.__name__}: {row}"
