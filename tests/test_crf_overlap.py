"""Evaluation that overlaps the network with the DenseCRF pool: the same numbers as the sequential loop, bit for bit,
and the pool's guarantees (serial fallback with one warning, no worker left behind) with batches in flight.

CRF workers import this module to find the crashing worker below, so torch and the evaluation are imported inside
the tests: at module level they would add seconds to every worker start.
"""
import dataclasses
import logging
import multiprocessing
import os

import numpy as np
import pytest

from stego.crf import CrfPool, crf_batch, dense_crf

MARK = 255
"""Pixel (0, 0, 0) value on which the crashing worker below exits."""


def _crash_worker(image, probs, iterations):
    if image[0, 0, 0] == MARK:
        os._exit(3)
    return dense_crf(image, probs, iterations)


def _batch(seed, n, marked=()):
    rng = np.random.default_rng(seed)
    images, probs = [], []
    for i in range(n):
        image = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
        image[0, 0, 0] = MARK if i in marked else 0
        logits = rng.normal(0, 2, (3, 20, 24))
        e = np.exp(logits - logits.max(axis=0))
        images.append(image)
        probs.append((e / e.sum(axis=0)).astype(np.float32))
    return images, probs


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    import torch

    from benchmarks.perf.crf_overlap import scene_setup
    from stego.refits import refit_probes

    model, backbone, dataset, cfg = scene_setup(tmp_path_factory.mktemp("overlap"), images=5, size=48, batch=2,
                                                workers=2)
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, cluster_restarts=2),
                              train=dataclasses.replace(cfg.train, iterations=3, batch_size=2))  # refits: 3 steps
    return model, backbone, dataset, cfg, refit_probes(model, backbone, cfg, torch.device("cpu"))


def test_overlapped_counts_and_metrics_equal_the_sequential_loop(scenes):
    from benchmarks.perf.crf_overlap import sequential_score
    from stego.evaluate import score_split

    model, backbone, dataset, cfg, refits = scenes
    assert len(refits.restarts) == 2 and refits.overclustering
    metrics, counts, confusions = score_split(model, backbone, dataset, cfg, refits=refits)
    want_counts, want_confusions = sequential_score(model, backbone, dataset, cfg, refits)
    assert set(counts) == set(want_counts) == {"cluster", "linear", "cluster_crf", "linear_crf"}
    for probe, got in counts.items():
        want = want_counts[probe]
        assert got.n_images == 5
        for field in ("offsets", "cells", "counts"):
            assert np.array_equal(getattr(got, field), getattr(want, field)), (probe, field)
        assert metrics[probe]["confusion"] == want.total().tolist()
    assert not np.array_equal(counts["cluster_crf"].total(), counts["cluster"].total())  # the CRF did something
    for got, want in zip(confusions["restarts"], want_confusions["restarts"]):
        assert np.array_equal(got, want)
    assert confusions["overclustering"].keys() == want_confusions["overclustering"].keys()
    for k, got in confusions["overclustering"].items():
        assert np.array_equal(got, want_confusions["overclustering"][k])
    assert multiprocessing.active_children() == []


def test_serial_crf_gives_the_same_counts(scenes):
    from stego.evaluate import score_split

    model, backbone, dataset, cfg, _ = scenes
    serial = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, crf_workers=0))
    _, pooled, _ = score_split(model, backbone, dataset, cfg)
    _, alone, _ = score_split(model, backbone, dataset, serial)
    for probe in pooled:
        assert np.array_equal(pooled[probe].dense(), alone[probe].dense()), probe


def test_a_crash_with_batches_in_flight_falls_back_with_one_warning(caplog):
    first, second = _batch(1, 3, marked={1}), _batch(2, 3, marked={0})
    with caplog.at_level(logging.WARNING, logger="stego.crf"), CrfPool(2, timeout=30.0,
                                                                       _worker_fn=_crash_worker) as pool:
        tickets = [pool.submit(*first), pool.submit(*second)]
        results = [pool.result(t) for t in reversed(tickets)][::-1]  # the later batch collected first
    expected = crf_batch(first[0] + second[0], first[1] + second[1])
    for got, want in zip(results[0] + results[1], expected):
        np.testing.assert_array_equal(got, want)
    lines = [r for r in caplog.records if r.name == "stego.crf"]
    assert len(lines) == 1 and "\n" not in lines[0].getMessage() and "recomputing it serially" in lines[0].getMessage()
    assert multiprocessing.active_children() == []


def test_an_error_between_submit_and_result_leaves_no_worker():
    images, probs = _batch(3, 4)
    with pytest.raises(KeyboardInterrupt):
        with CrfPool(2) as pool:
            pool.submit(images, probs)
            raise KeyboardInterrupt  # as Ctrl-C during the next batch's network pass
    assert multiprocessing.active_children() == []


def test_projection_sequential_idles_workers_beyond_the_batch():
    from benchmarks.perf.crf_overlap import project

    proj = project(t_item=1.0, t_main=0.1, batch=8, workers=16)
    assert proj["overlapped"] == pytest.approx(1.0)
    assert proj["sequential"] == pytest.approx(16 / (16 * 2.1))
