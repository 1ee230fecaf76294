"""Correspondence diagnostics: the math against hand-worked and brute-force values, and the evaluation hook."""
import json

import numpy as np
import pytest
import torch

from stego.analysis import (average_precision, cell_labels, cluster_to_class, five_crop_self_match,
                            knn_cooccurrence, precision_recall, read_example_png, same_label_pr)
from stego.constants import IGNORE
from stego.errors import StegoError


def brute_force_ap(scores, truth):
    """AP by definition, with plain loops in float64: Σ over distinct thresholds (high to low) of ΔR · P."""
    positives = sum(truth)
    ap, previous_recall = 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        chosen = [y for s, y in zip(scores, truth) if s >= t]
        tp = sum(chosen)
        recall = tp / positives
        ap += (recall - previous_recall) * (tp / len(chosen))
        previous_recall = recall
    return ap


def test_average_precision_hand_worked_with_a_tie():
    scores, truth = [0.9, 0.8, 0.8, 0.3], [1, 0, 1, 0]
    precision, recall, thresholds = precision_recall(scores, truth)
    # thresholds 0.9 | 0.8 (both tied items enter together) | 0.3
    assert np.allclose(thresholds, [0.9, 0.8, 0.3])
    assert np.allclose(precision, [1.0, 2 / 3, 0.5])
    assert np.allclose(recall, [0.5, 1.0, 1.0])
    assert average_precision(scores, truth) == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3, abs=1e-15)
    # Order of the input must not matter.
    assert average_precision(scores[::-1], truth[::-1]) == pytest.approx(5 / 6, abs=1e-15)


def test_average_precision_matches_brute_force_on_random_ties():
    rng = np.random.default_rng(1)
    for _ in range(5):
        scores = np.round(rng.random(300), 1)  # many ties
        truth = (rng.random(300) < scores).astype(int)
        assert average_precision(scores, truth) == pytest.approx(brute_force_ap(list(scores), list(truth)), abs=1e-12)
    assert np.isnan(average_precision([0.1, 0.2], [0, 0]))


def test_cell_labels_reads_the_centre_pixel_of_each_cell():
    labels = torch.arange(64).reshape(1, 8, 8)
    assert cell_labels(labels, 2, 2).tolist() == [[[18, 22], [50, 54]]]  # rows/cols 2 and 6
    tall = torch.arange(10).reshape(1, 10, 1).expand(1, 10, 3)
    assert cell_labels(tall, 3, 1)[0, :, 0].tolist() == [1, 5, 8]  # floor((i + 0.5) * 10 / 3)


def test_same_label_pr_uses_centre_labels_and_drops_ignore():
    torch.manual_seed(0)
    h = w = 6
    centre = torch.randint(0, 3, (4, h, w))
    centre[:, 0, :2] = IGNORE
    # Labels at 4×: only each cell's centre pixel (row/col 4i+2) carries the cell's class; others are noise.
    labels = torch.randint(0, 3, (4, 4 * h, 4 * w))
    labels[:, 2::4, 2::4] = centre
    feats = torch.nn.functional.one_hot(centre.clamp(min=0), 3).permute(0, 3, 1, 2).float()
    feats[:, :, 0, :2] = torch.tensor([1.0, 0, 0]).view(3, 1)  # ignored cells look like class 0
    code = torch.randn(4, 5, h, w)
    out = same_label_pr(feats, code, labels, n_pairs=20_000, generator=torch.Generator().manual_seed(0))
    # Features are one-hot of the true cell label: a perfect ranking, unless ignored cells or wrong pixels leak in.
    assert out["features"]["ap"] == pytest.approx(1.0)
    assert abs(out["code"]["ap"] - out["prevalence"]) < 0.05
    valid = centre[centre != IGNORE]
    share = sum(float((valid == c).float().mean()) ** 2 for c in range(3))
    assert out["prevalence"] == pytest.approx(share, abs=0.02)
    assert len(out["code"]["recall"]) <= 101 and out["code"]["recall"][-1] == pytest.approx(1.0)


def test_same_label_pr_never_pairs_a_cell_with_itself():
    labels = torch.full((1, 2, 2), IGNORE)
    labels[0, 0, 0], labels[0, 1, 1] = 0, 1
    feats = torch.randn(1, 3, 2, 2)
    out = same_label_pr(feats, feats, labels, n_pairs=100, generator=torch.Generator().manual_seed(0))
    assert out["prevalence"] == 0.0  # the only two labelled cells differ; a self-pair would be a match
    with pytest.raises(StegoError, match="labelled"):
        same_label_pr(feats, feats, torch.full((1, 2, 2), IGNORE), n_pairs=10)


# Four images, three classes: 0 is half class 0, half class 1; 1 is class 1; 2 is class 2; 3 is unlabelled.
HIST = np.array([[2, 2, 0], [0, 4, 0], [0, 0, 4], [0, 0, 0]])
TABLE = torch.tensor([[0, 1, 3], [1, 2, 0], [2, 0, 1], [3, 0, 1]])


def test_knn_cooccurrence_hand_worked():
    # Profiles over labelled partners (ranks 1, 2): q0 → {1}: [0, 1, 0]; q1 → {2, 0}: [.25, .25, .5];
    # q2 → {0, 1}: [.25, .75, 0]. Anchor weights: q0 [.5, .5, 0], q1 [0, 1, 0], q2 [0, 0, 1]; q3 is unlabelled.
    out = knn_cooccurrence(TABLE, HIST, ranks=[1, 2])
    expected = [[0, 1, 0], [1 / 6, 1 / 2, 1 / 3], [0.25, 0.75, 0]]
    assert np.allclose(out["matrix"], expected, atol=1e-6)
    assert out["anchor_mass"] == [0.5, 1.5, 1.0] and out["queries"] == 3
    assert out["diagonal"] == pytest.approx((0.5 * 0 + 1.5 * 0.5 + 1.0 * 0) / 3, abs=1e-6)
    # chance: mean query profile [1/6, 1/2, 1/3] read along the diagonal with the same anchor mass.
    assert out["chance"] == pytest.approx((0.5 / 6 + 1.5 / 2 + 1.0 / 3) / 3, abs=1e-6)

    presence = knn_cooccurrence(TABLE, HIST, ranks=[1, 2], partner="presence")
    assert np.allclose(presence["matrix"], [[0, 1, 0], [1 / 3, 2 / 3, 1 / 3], [0.5, 1, 0]], atol=1e-6)
    dominant = knn_cooccurrence(TABLE, HIST, ranks=[1, 2], anchor="dominant")  # q0's tie goes to class 0
    assert np.allclose(dominant["matrix"], [[0, 1, 0], [0.25, 0.25, 0.5], [0.25, 0.75, 0]], atol=1e-6)
    one = knn_cooccurrence(TABLE, HIST, ranks=[1, 2], rows=[1])
    assert one["matrix"][0] == [None, None, None] and np.allclose(one["matrix"][1], [0.25, 0.25, 0.5])


def test_knn_cooccurrence_matches_a_loop_reference():
    rng = np.random.default_rng(0)
    n, c, k = 30, 4, 6
    hist = rng.integers(0, 5, (n, c)) * (rng.random((n, c)) < 0.6)
    idx = np.c_[np.arange(n), np.array([rng.permutation(np.delete(np.arange(n), i))[:k - 1] for i in range(n)])]
    ranks = [1, 2, 3]
    num, mass = np.zeros((c, c)), np.zeros(c)
    for i in range(n):
        if hist[i].sum() == 0:
            continue
        partners = [j for j in idx[i, ranks] if hist[j].sum() > 0]
        if not partners:
            continue
        profile = sum(hist[j] / hist[j].sum() for j in partners) / len(partners)
        for a in range(c):
            w = hist[i, a] / hist[i].sum()
            num[a] += w * profile
            mass[a] += w
    out = knn_cooccurrence(idx, hist, ranks)
    assert np.allclose(out["matrix"], num / mass[:, None], atol=1e-6)
    assert np.allclose(np.sum(out["matrix"], axis=1), 1.0, atol=1e-5)


def test_knn_cooccurrence_rejects_bad_input():
    with pytest.raises(StegoError, match="one row per table row"):
        knn_cooccurrence(TABLE, HIST[:3], ranks=[1])
    with pytest.raises(StegoError, match="ranks"):
        knn_cooccurrence(TABLE, HIST, ranks=[1, 3])


def test_five_crop_self_match_hand_made():
    # Ten crops of two images (crops 0-4 of image 0, 5-9 of image 1); ranks 1..3 of each row.
    table = torch.tensor([[0, 1, 5, 2], [1, 6, 7, 8], [2, 3, 4, 0], [3, 9, 8, 7], [4, 0, 1, 2],
                          [5, 6, 7, 8], [6, 0, 1, 2], [7, 5, 0, 6], [8, 9, 4, 3], [9, 8, 7, 6]])
    out = five_crop_self_match(table, k=3)
    # own-image counts per crop: 2 0 3 0 3 3 0 2 1 3
    assert out["histogram"] == [3, 1, 2, 4]
    assert out["mean"] == pytest.approx(1.7)
    assert out["per_rank"] == pytest.approx([0.7, 0.4, 0.6])
    assert out["chance_per_rank"] == pytest.approx(4 / 9, abs=1e-6)
    with pytest.raises(StegoError, match="multiple of 5"):
        five_crop_self_match(table[:7], k=3)
    with pytest.raises(StegoError, match="k=4"):
        five_crop_self_match(table, k=4)


def test_cluster_to_class_numbers_unmatched_clusters_after_the_classes():
    # class 0 ← cluster 2, class 1 ← cluster 0, class 2 unmatched; clusters 1 and 3 are spare.
    assert cluster_to_class([2, 0, -1], 4, 3).tolist() == [1, 3, 0, 4]


# --- the evaluation hook, on a tiny trained run ------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from stego.config import from_dict
    from stego.data.synthetic import SceneSpec, make_scenes
    from stego.evaluate import run_eval
    from stego.train import train

    tmp = tmp_path_factory.mktemp("analysis")
    root = make_scenes(tmp / "scenes", SceneSpec(n_train=16, n_val=6, size=48), seed=3)
    cfg = from_dict({
        "name": "tiny",
        "data": {"dataset": "synthetic", "root": str(root), "crop": "none", "res": 32, "workers": 0, "knn_k": 8},
        "model": {"backbone": "dino_vits16", "weights": "random", "dim": 8},
        "loss": {"feature_samples": 4, "neg_samples": 2, "b_rand": 0.3},
        "train": {"batch_size": 4, "iterations": 2, "log_every": 1, "hist_every": 1},
        "eval": {"res": 32, "crf": True, "crf_workers": 0, "batch_size": 3},
    })
    checkpoint = train(cfg, tmp / "run")
    record = run_eval(cfg, checkpoint, tmp / "run" / "record.json")
    return cfg, tmp / "run", record


def test_eval_record_names_its_analysis_files(evaluated):
    cfg, run_dir, record = evaluated
    saved = json.loads((run_dir / "record.json").read_text())
    assert saved["analysis"] == record.analysis
    analysis = json.loads((run_dir / saved["analysis"]["data"]).read_text())
    folder = (run_dir / saved["analysis"]["data"]).parent
    assert analysis["pr"]["features"]["ap"] == saved["analysis"]["ap_features"]
    assert 0 < analysis["pr"]["code"]["ap"] <= 1 and 0 < analysis["pr"]["prevalence"] < 1
    assert analysis["class_names"] == [f"class{i}" for i in range(5)]
    # Copies of the training files, byte for byte.
    for name in ("code_corr_hist.json", "train_log.csv"):
        assert (folder / name).read_bytes() == (run_dir / name).read_bytes()
    # KNN co-occurrence over every training image (fewer than the query cap); rows are distributions.
    knn = analysis["knn_cooccurrence"]
    assert knn["queries"] == 16 and knn["ranks"] == list(range(1, 8))
    assert np.allclose([sum(r) for r in knn["matrix"] if r[0] is not None], 1.0, atol=1e-5)
    assert "crop=none" in analysis["five_crop_self_match"]["skipped"]


def test_examples_store_truth_and_matched_predictions(evaluated):
    from stego import build

    cfg, run_dir, record = evaluated
    folder = run_dir / "record_analysis"
    examples = json.loads((folder / "analysis.json").read_text())["examples"]
    assert len(examples) == 4
    val = build.val_dataset(cfg)
    n_classes = 5
    for i, entry in enumerate(examples):
        assert set(entry) == {"image", "truth", "cluster", "linear", "cluster_crf", "linear_crf"}
        assert np.array_equal(read_example_png(folder / entry["truth"]), val[i]["label"].numpy())
        for key in ("cluster", "cluster_crf", "linear", "linear_crf"):
            pred = read_example_png(folder / entry[key])
            assert pred.shape == (32, 32) and pred.min() >= 0 and pred.max() < n_classes
    # Matched clusters are stored as the class they were matched to: pixels counted as class c's true
    # positives in the record's confusion matrix reappear as value c where the truth is c.
    confusion = np.asarray(record.metrics["cluster"]["confusion"])
    match = record.metrics["cluster"]["match"]
    hits = sum(int(((read_example_png(folder / e["cluster"]) == c)
                    & (read_example_png(folder / e["truth"]) == c)).sum())
               for e in examples for c in range(n_classes))
    assert 0 < hits <= sum(confusion[match[c], c] for c in range(n_classes))
