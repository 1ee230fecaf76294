"""What an eval record says about how sure its numbers are, against independent computations: the per-image
sidecar against a batched ConfusionMatrix of the same predictions, intervals and protocols against stego.stats on
the re-read counts, the restarts against scoring the refitted probes directly, the spread against the statistics
module, and the sidecar's size for CocoStuff's validation set."""
import json
import statistics

import numpy as np
import pytest
import torch

from stego import records
from stego.config import from_dict
from stego.data.synthetic import SceneSpec, make_scenes
from stego.evaluate import run_eval
from stego.inference import predict_log_probs, upsampled_code
from stego.metrics import ConfusionMatrix, cluster_scores
from stego.refits import overclustering_ks, refit_probes
from stego.runs import counts_file
from stego.counts import ImageCounts
from stego.stats import bootstrap_ci, score_protocol
from stego.uncertainty import counts_from_json, counts_json, cluster_spread, spread


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from stego.train import train

    tmp = tmp_path_factory.mktemp("uncertainty")
    root = make_scenes(tmp / "scenes", SceneSpec(n_train=12, n_val=6, size=48), seed=5)
    cfg = from_dict({
        "name": "tiny",
        "data": {"dataset": "synthetic", "root": str(root), "crop": "none", "res": 32, "workers": 0, "knn_k": 8},
        "model": {"backbone": "filterbank", "weights": "random", "dim": 8},
        "loss": {"feature_samples": 4, "neg_samples": 2, "b_rand": 0.3},
        "train": {"batch_size": 4, "iterations": 6, "log_every": 1},
        "eval": {"res": 32, "crf": True, "crf_workers": 0, "batch_size": 4, "cluster_restarts": 3,
                 "bootstrap_resamples": 200, "bootstrap_seed": 4},
    })
    checkpoint = train(cfg, tmp / "run")
    record = run_eval(cfg, checkpoint, tmp / "run" / "record.json")
    return cfg, checkpoint, tmp / "run" / "record.json", record


def test_sidecar_counts_sum_to_the_confusion_of_the_same_predictions(evaluated):
    from stego import build
    from stego.checkpoint import load_for_eval

    cfg, checkpoint, path, record = evaluated
    assert record.image_counts == counts_file(path).name
    sidecar = records.read(path.parent / record.image_counts, "image_counts")
    counts = counts_from_json(sidecar.probes)
    assert set(counts) == {"cluster", "linear", "cluster_crf", "linear_crf"} and sidecar.images == 6
    assert all(c.n_images == 6 for c in counts.values())
    # independent: the predictions again, summed by the batched ConfusionMatrix
    _, model, backbone = load_for_eval(checkpoint, cfg)
    val = build.val_dataset(cfg)
    images = torch.stack([val[i]["img"] for i in range(len(val))])
    labels = torch.stack([val[i]["label"] for i in range(len(val))])
    cluster_lp, linear_lp = predict_log_probs(model.eval(), backbone, images, labels.shape[-2:], "fp32")
    for probe, lp in (("cluster", cluster_lp), ("linear", linear_lp)):
        batched = ConfusionMatrix(lp.shape[1], 5)
        batched.update(lp.argmax(1), labels)
        assert np.array_equal(counts[probe].total(), batched.counts.numpy()), probe
        assert record.metrics[probe]["confusion"] == batched.counts.tolist()
    assert record.metrics["cluster"]["protocol"] == "hungarian" and record.metrics["linear"]["protocol"] == "identity"


def test_intervals_and_protocols_recompute_from_the_sidecar(evaluated):
    cfg, _, path, record = evaluated
    counts = counts_from_json(records.read(path.parent / record.image_counts, "image_counts").probes)
    for probe, c in counts.items():
        kind = "cluster" if probe.startswith("cluster") else "linear"
        for metric in ("miou", "accuracy"):
            saved = record.intervals[probe][metric]
            again = bootstrap_ci(c, metric, kind, 200, 4)
            assert (saved["lower"], saved["upper"]) == (again.lower, again.upper)
            assert saved["point"] == pytest.approx(record.metrics[probe][metric])
            assert saved["lower"] <= saved["upper"] and saved["n_resamples"] == 200
    for probe in ("cluster", "cluster_crf"):
        scored = record.protocols[probe]
        assert scored["hungarian"]["miou"] == pytest.approx(record.metrics[probe]["miou"])
        # many-to-one may give several clusters one class: never fewer correct pixels than one-to-one
        assert scored["majority"]["accuracy"] >= scored["hungarian"]["accuracy"] - 1e-12
        held = score_protocol(counts[probe], "heldout_hungarian", seed=4)
        assert scored["heldout_hungarian"]["miou"] == pytest.approx(held.miou)
    curve = record.protocols["overclustering"]
    assert curve["ks"] == overclustering_ks(5) and curve["protocol"] == "majority"
    assert all(0 <= v <= 1 for v in curve["miou"] + curve["accuracy"])


def test_restarts_are_the_refitted_probes_scored_directly(evaluated):
    from stego import build
    from stego.checkpoint import load_for_eval

    cfg, checkpoint, _, record = evaluated
    spread_section = record.cluster_spread
    assert len(spread_section["seeds"]) == 3 == len(set(spread_section["seeds"]))
    assert spread_section["summary"]["miou"]["n"] == 3
    run_cfg, model, backbone = load_for_eval(checkpoint, cfg)
    refits = refit_probes(model, backbone, run_cfg, torch.device("cpu"))
    assert refits.seeds == spread_section["seeds"]
    val = build.val_dataset(cfg)
    images = torch.stack([val[i]["img"] for i in range(len(val))])
    labels = torch.stack([val[i]["label"] for i in range(len(val))])
    code = upsampled_code(model.eval(), backbone, images, labels.shape[-2:], "fp32")  # what the probes are scored on
    for probe, miou in zip(refits.restarts, spread_section["miou"]):
        confusion = ConfusionMatrix(5, 5)
        confusion.update(probe.cosine(code).argmax(1), labels)
        assert cluster_scores(confusion).miou == pytest.approx(miou)


def test_spread_is_median_and_range():
    values = [0.7, 0.2, 0.55, 0.9]
    assert spread(values) == {"n": 4, "median": pytest.approx(statistics.median(values)), "min": 0.2, "max": 0.9}
    confusions = [np.array([[8, 2], [1, 9]]), np.array([[1, 9], [8, 2]])]  # the second is the first with rows swapped
    section = cluster_spread(confusions, [3, 4])
    assert section["miou"][0] == pytest.approx(section["miou"][1])  # Hungarian undoes the swap
    assert section["accuracy"][0] == pytest.approx(17 / 20) and section["seeds"] == [3, 4]


def test_sidecar_size_for_cocostuff_validation(tmp_path):
    """2,175 images x 27 classes, 10-40 touched cells per image, 320x320 labelled pixels, four probes: the sidecar
    as written measured 1,864,990 bytes (857 per image, 466 kB per probe); the eval record beside it stays small."""
    rng = np.random.default_rng(0)
    probes = {}
    for probe in ("cluster", "linear", "cluster_crf", "linear_crf"):
        per_image = np.zeros((2175, 27 * 27), dtype=np.int64)
        for row in per_image:
            k = rng.integers(10, 41)
            pixels = rng.multinomial(320 * 320, rng.dirichlet(np.full(k, 0.5)))  # drawn first, as in the one-liner
            row[rng.choice(row.size, size=k, replace=False)] = pixels
        probes[probe] = ImageCounts.from_dense(per_image.reshape(2175, 27, 27))
    path = tmp_path / "record_counts.json"
    records.write(records.ImageCountsRecord(split="val", images=2175, probes=counts_json(probes)), path)
    size = path.stat().st_size
    assert 1_700_000 < size < 2_100_000, size
    again = counts_from_json(json.loads(path.read_text())["probes"])
    assert all(np.array_equal(again[p].total(), probes[p].total()) for p in probes)


def test_refits_without_training_images_are_skipped_with_the_reason(evaluated, tmp_path, monkeypatch):
    """A released checkpoint evaluated on val-only data: no codes to refit on, so the record says why, and every
    other section stands."""
    from stego import build
    from stego.errors import MissingFileError

    cfg, checkpoint, _, _ = evaluated

    def missing(*args, **kwargs):
        raise MissingFileError("no training split here\nsecond line")

    monkeypatch.setattr(build, "train_dataset", missing)
    record = run_eval(cfg, checkpoint, tmp_path / "record.json")
    assert record.cluster_spread == {"skipped": "no training split here"}
    assert "overclustering" not in record.protocols and "majority" in record.protocols["cluster"]
    assert record.intervals["cluster"]["miou"]["n_resamples"] == 200
