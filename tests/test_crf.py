"""DenseCRF of docs/protocol.md §7 against direct pydensecrf and torch references; the worker pool's fallbacks.

Worker processes import this module to find the injected workers below, so torch is imported inside the
tests that compare with it: at module level it would add seconds to every worker start.
"""
import logging
import multiprocessing
import os
import signal
import threading
import time

import numpy as np
import pydensecrf.densecrf as dcrf
import pytest

from stego.constants import IMAGENET_MEAN, IMAGENET_STD
from stego.crf import CrfPool, as_labels, crf_batch, dense_crf, image_to_bgr_uint8, resize_bilinear
from stego.errors import StegoError

MARK = 255
"""Pixel (0, 0, 0) value that makes the test workers below misbehave on that item."""


def _crash_worker(image, probs, iterations):
    if image[0, 0, 0] == MARK:
        os._exit(3)
    return dense_crf(image, probs, iterations)


def _raise_worker(image, probs, iterations):
    if image[0, 0, 0] == MARK:
        raise RuntimeError("injected failure")
    return dense_crf(image, probs, iterations)


def _sleep_worker(image, probs, iterations):
    if image[0, 0, 0] == MARK:
        time.sleep(60)
    return dense_crf(image, probs, iterations)


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


def _random_item(rng, height=24, width=32, labels=4, marked=False):
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[0, 0, 0] = MARK if marked else 0
    return image, _softmax(rng.normal(0, 2, (labels, height, width)))


def _batch(seed, n, marked=()):
    rng = np.random.default_rng(seed)
    items = [_random_item(rng, labels=3 + i % 3, marked=i in marked) for i in range(n)]
    return [im for im, _ in items], [p for _, p in items]


def _direct_crf(image, probs):
    """The release's pydensecrf calls, written out with docs/protocol.md §7's constants."""
    k, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(np.clip(probs, 1e-5, 1.0)).reshape(k, -1).astype(np.float32)))
    crf.addPairwiseGaussian(sxy=1, compat=3)
    crf.addPairwiseBilateral(sxy=67, srgb=3, rgbim=np.ascontiguousarray(image), compat=4)
    return np.array(crf.inference(10)).reshape(k, h, w)


def _release_image(img):
    """The release's path: UnNormalize (per channel mul_(std).add_(mean)), to_pil_image's mul(255).byte(), RGB→BGR."""
    x = img.clone()
    for t, m, s in zip(x, IMAGENET_MEAN, IMAGENET_STD):
        t.mul_(s).add_(m)
    rgb = x.mul(255).byte().permute(1, 2, 0).numpy()
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _normalise(rgb01):
    import torch

    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (rgb01 - mean) / std


def _assert_no_children():
    assert multiprocessing.active_children() == []


def test_dense_crf_matches_direct_pydensecrf():
    image, probs = _random_item(np.random.default_rng(0), labels=5)
    out = dense_crf(image, probs)
    assert out.dtype == np.float32 and out.shape == probs.shape
    np.testing.assert_array_equal(out, _direct_crf(image, probs))
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-5)


def test_resize_bilinear_matches_torch_interpolate():
    import torch
    import torch.nn.functional as F

    x = np.random.default_rng(1).normal(size=(3, 7, 9)).astype(np.float32)
    for size in [(24, 32), (5, 4), (7, 9)]:
        ref = F.interpolate(torch.from_numpy(x)[None], size=size, mode="bilinear", align_corners=False)[0]
        np.testing.assert_allclose(resize_bilinear(x, *size), ref.numpy(), rtol=1e-5, atol=1e-6)


def test_smaller_probs_are_resized_like_the_release():
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(2)
    image, _ = _random_item(rng)
    small = _softmax(rng.normal(0, 2, (4, 6, 8)))
    logp = F.interpolate(torch.from_numpy(np.log(small))[None], size=(24, 32), mode="bilinear", align_corners=False)
    release_probs = F.softmax(logp[0], dim=0).numpy()
    np.testing.assert_allclose(dense_crf(image, small), _direct_crf(image, release_probs), atol=1e-4)


def test_channel_order_changes_the_result():
    image, probs = _random_item(np.random.default_rng(3), height=48, width=64)
    flipped = np.ascontiguousarray(image[:, :, ::-1])
    assert np.abs(dense_crf(image, probs) - dense_crf(flipped, probs)).max() > 0.1


def test_image_to_bgr_puts_red_last_and_truncates():
    import torch

    rgb = torch.zeros(3, 2, 3)
    rgb[0] = torch.tensor([[0.9999, 0.5, 1.0], [0.0, 1.5, -0.2]])
    rgb[1] = 0.5
    rgb[2] = 0.25
    out = image_to_bgr_uint8(_normalise(rgb))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3) and out.flags["C_CONTIGUOUS"]
    # 0.9999·255 = 254.97 → 254, 0.5·255 = 127.5 → 127 (truncation, not rounding); out of range clamps.
    np.testing.assert_array_equal(out[:, :, 2], [[254, 127, 255], [0, 255, 0]])
    np.testing.assert_array_equal(out[:, :, 1], 127)
    np.testing.assert_array_equal(out[:, :, 0], 63)


def test_image_to_bgr_equals_the_release_in_range():
    import torch

    gen = torch.Generator().manual_seed(4)
    grid = torch.randint(0, 256, (3, 16, 20), generator=gen).float() / 255
    noisy = torch.rand(3, 16, 20, generator=gen)
    for rgb in (grid, noisy):
        img = _normalise(rgb)
        np.testing.assert_array_equal(image_to_bgr_uint8(img), _release_image(img))


def test_bad_input_is_a_clear_error():
    image, probs = _random_item(np.random.default_rng(5))
    with pytest.raises(StegoError, match="uint8"):
        dense_crf(image.astype(np.float32), probs)
    with pytest.raises(StegoError, match=r"\[K,H,W\]"):
        dense_crf(image, probs[0])
    with pytest.raises(StegoError, match="2 images but 1"):
        crf_batch([image, image], [probs])


def test_crf_sharpens_a_noisy_map_toward_the_image_edge():
    rng = np.random.default_rng(6)
    h, w, edge = 24, 32, 13
    truth = np.zeros((h, w), np.int64)
    truth[:, edge:] = 1
    image = (np.where(truth[..., None] == 1, 200, 40) + rng.integers(0, 10, (h, w, 3))).astype(np.uint8)
    logits = np.stack([(truth == k).astype(float) for k in range(3)]) + rng.normal(0, 1.0, (3, h, w))
    logits[1, :, edge - 3:edge + 3] += 1.5  # class 1 bleeds three columns past the edge
    probs = _softmax(logits)
    before = (probs.argmax(0) == truth).mean()
    after = (dense_crf(image, probs).argmax(0) == truth).mean()
    assert before < 0.8
    assert after >= before and after >= 0.98


def test_pool_equals_serial():
    images, probs = _batch(7, 5)
    serial = crf_batch(images, probs, workers=0)
    pooled = crf_batch(images, probs, workers=2)
    for a, b in zip(pooled, serial):
        np.testing.assert_array_equal(a, b)
    _assert_no_children()


@pytest.mark.parametrize("worker_fn, timeout", [(_crash_worker, 30.0), (_raise_worker, 30.0), (_sleep_worker, 2.0)])
def test_failing_worker_falls_back_to_serial(worker_fn, timeout, caplog):
    images, probs = _batch(8, 4, marked={1, 2})
    serial = crf_batch(images, probs, workers=0)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="stego.crf"):
        pooled = crf_batch(images, probs, workers=2, timeout=timeout, _worker_fn=worker_fn)
    elapsed = time.monotonic() - start
    assert elapsed < timeout + 20
    for a, b in zip(pooled, serial):
        np.testing.assert_array_equal(a, b)
    assert len([r for r in caplog.records if r.name == "stego.crf"]) == 1
    _assert_no_children()


def test_labels_from_the_workers_are_the_argmax_of_the_marginals():
    import torch

    images, probs = _batch(13, 5, marked={3})
    marginals = crf_batch(images, probs, workers=0)
    expected = [torch.from_numpy(q).argmax(0).numpy() for q in marginals]  # what evaluation took before
    tied = np.full((3, 4, 5), 0.25, np.float32)  # equal maxima everywhere: the first label wins, as in torch
    assert (as_labels(tied) == torch.from_numpy(tied).argmax(0).numpy()).all()
    for labels in (crf_batch(images, probs, workers=0, labels=True),
                   crf_batch(images, probs, workers=2, timeout=30.0, _worker_fn=_crash_worker, labels=True)):
        assert [a.dtype for a in labels] == [np.uint8] * 5  # one byte a pixel instead of K floats
        for a, b in zip(labels, expected):
            np.testing.assert_array_equal(a, b)  # item 3 crashed its worker: the serial fallback's labels
    assert as_labels(np.zeros((300, 2, 2), np.float32)).dtype == np.int32
    _assert_no_children()


def test_workers_that_cannot_start_leave_the_pool_serial(caplog):
    images, probs = _batch(12, 3)
    with caplog.at_level(logging.WARNING, logger="stego.crf"):
        pooled = crf_batch(images, probs, workers=2, _worker_fn=lambda *args: None)  # a lambda cannot be sent
    for a, b in zip(pooled, crf_batch(images, probs)):
        np.testing.assert_array_equal(a, b)
    assert "could not start a CRF worker" in caplog.text
    _assert_no_children()


def test_pool_survives_a_crash_across_batches():
    first_images, first_probs = _batch(9, 3, marked={0})
    second_images, second_probs = _batch(10, 3)
    with CrfPool(2, timeout=30.0, _worker_fn=_crash_worker) as pool:
        first = pool.map(first_images, first_probs)
        second = pool.map(second_images, second_probs)
        assert len(multiprocessing.active_children()) == 2
    expected = crf_batch(first_images + second_images, first_probs + second_probs)
    for a, b in zip(first + second, expected):
        np.testing.assert_array_equal(a, b)
    _assert_no_children()
    with pytest.raises(StegoError, match="after close"):
        pool.map(second_images, second_probs)


def test_ctrl_c_stops_the_workers():
    # Ctrl-C as a terminal delivers it, also where the test runner was started in the background (SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    images, probs = _batch(11, 2, marked={0, 1})
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    start = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            crf_batch(images, probs, workers=2, timeout=30.0, _worker_fn=_sleep_worker)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - start < 15
    _assert_no_children()
