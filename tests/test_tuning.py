"""`stego tune-shifts` (stego.tuning): the search converges on hand-built monotone responses, reads the right
window of a log, and a real search on a tiny world never opens a label file (the labels are deleted and every
label reader raises) and writes a loadable preset with its trace. The demo-world acceptance run (from the
release's CocoStuff shifts to the targets, then beating raw k-means) is in tests/test_demo.py."""
import csv
import shutil

import pytest
import yaml

from stego import records
from stego.cli import main
from stego.config import load_config
from stego.data.synthetic import SceneSpec, make_scenes
from stego.errors import StegoError
from stego.tuning import TERMS, Targets, mean_correlations, next_shift


def solve(response, target, start, rounds=12, tolerance=0.01):
    """Run next_shift against a deterministic response b -> correlation; the shifts visited."""
    history, b = [], start
    for _ in range(rounds):
        c = response(b)
        history.append((b, c))
        if abs(c - target) <= tolerance:
            break
        b = next_shift(history, target)
    return history


@pytest.mark.parametrize("response, root, slope", [
    (lambda b: 0.9 - b, 0.6, 1.0),  # linear: a secant lands on it
    (lambda b: 0.8 / (1 + (b / 0.5) ** 4), 0.5 * (0.8 / 0.3 - 1) ** 0.25, 1.32),  # sigmoid-like, flat at both ends
    (lambda b: 0.7 - 0.05 * b, 8.0, 0.05),  # very flat: steps are capped at MAX_STEP, then bracketed
])
def test_the_search_finds_the_shift_of_a_monotone_response(response, root, slope):
    history = solve(response, 0.3, start=0.1, rounds=40)
    assert abs(history[-1][1] - 0.3) <= 0.01
    assert history[-1][0] == pytest.approx(root, abs=0.011 / slope)  # |Δb| ≤ |Δcorr| / |slope at the root|


def test_steps_go_the_falling_way_and_stay_inside_a_bracket():
    assert next_shift([(0.2, 0.7)], 0.3) == pytest.approx(0.4)  # too correlated: raise the shift by FIRST_STEP
    assert next_shift([(0.2, 0.1)], 0.3) == pytest.approx(0.0)  # too little: lower it
    # bracket (0.2: 0.5 above) – (0.6: 0.1 below): regula falsi gives 0.4, inside the bracket
    assert next_shift([(0.2, 0.5), (0.6, 0.1)], 0.3) == pytest.approx(0.4)
    # a guess at the bracket's edge is pulled 10% inside
    assert next_shift([(0.2, 0.31), (0.6, -0.9)], 0.3) == pytest.approx(0.24)


def write_log(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["iteration", "corr_self", "corr_knn", "corr_rand"])
        writer.writeheader()
        writer.writerows(rows)


def test_mean_correlations_read_the_last_quarter(tmp_path):
    rows = [{"iteration": i, "corr_self": i, "corr_knn": 2 * i, "corr_rand": -i} for i in range(1, 9)]
    write_log(tmp_path / "log.csv", rows)
    corr = mean_correlations(tmp_path / "log.csv")
    assert corr == {"self": 7.5, "knn": 15.0, "rand": -7.5}  # rows 7 and 8


def test_a_log_without_correlations_says_why(tmp_path):
    write_log(tmp_path / "log.csv", [{"iteration": 1, "corr_self": "", "corr_knn": "", "corr_rand": ""}])
    with pytest.raises(StegoError, match="did not distil"):
        mean_correlations(tmp_path / "log.csv")


def test_targets_count_only_the_tuned_terms():
    t = Targets(self=None, knn=0.3, rand=0.0, tolerance=0.05)
    assert t.tuned() == ["knn", "rand"]
    assert t.met({"self": 0.9, "knn": 0.34, "rand": -0.04})
    assert not t.met({"self": 0.3, "knn": 0.36, "rand": 0.0})


@pytest.fixture(params=["labels on disk", "labels deleted"])
def unlabelled_world(request, tmp_path, monkeypatch):
    """A tiny synthetic world whose label readers all raise; its label folders kept or deleted."""
    root = make_scenes(tmp_path / "scenes", SceneSpec(n_classes=4, n_train=12, n_val=3, size=48), seed=1)
    if request.param == "labels deleted":
        shutil.rmtree(root / "labels")

    def touched(*args, **kwargs):
        raise AssertionError("tune-shifts opened a label file")

    monkeypatch.setattr("stego.data.datasets.read_label_png", touched)
    monkeypatch.setattr("stego.data.datasets.SegmentationDataset._read_label", touched)
    values = {"name": "tiny", "data": {"dataset": "synthetic", "root": str(root), "crop": "none", "res": 32,
                                       "workers": 0, "knn_k": 8, "n_classes": 4},
              "model": {"backbone": "filterbank", "weights": "random", "dim": 6},
              "loss": {"feature_samples": 4, "neg_samples": 2, "b_self": 0.12, "b_knn": 0.2, "b_rand": 1.0},
              "train": {"batch_size": 4, "iterations": 40, "log_every": 1, "hist_every": 0, "device": "cpu"},
              "eval": {"res": 32, "crf": False}}
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump(values))
    return preset


def test_tune_shifts_never_touches_a_label_and_writes_a_preset(unlabelled_world, tmp_path):
    out = tmp_path / "tune"
    code = main(["tune-shifts", str(unlabelled_world), "--out", str(out), "--iterations", "8", "--rounds", "3",
                 "--target-knn", "0.3", "--target-rand", "0.0", "--target-self", "none"])
    record = records.read(out / "tuning.json", "tuning")
    assert code == (0 if record.converged else 1)
    assert len(record.trace) == 3 or record.converged
    assert [r["round"] for r in record.trace] == list(range(len(record.trace)))
    assert all((out / f"round{k}" / "train_log.csv").is_file() for k in range(len(record.trace)))
    # b_self has no target: it never moves; the others move from the start after round 0 unless met there
    assert all(r["shifts"]["self"] == 0.12 for r in record.trace)
    first = record.trace[0]
    assert first["shifts"] == {"self": 0.12, "knn": 0.2, "rand": 1.0}
    if not first["met"] and len(record.trace) > 1:
        assert record.trace[1]["shifts"] != first["shifts"]
    best = min(record.trace, key=lambda r: max(abs(r["correlations"][t] - record.targets[t]) for t in ("knn", "rand")))
    assert record.shifts == best["shifts"] and record.best_round == best["round"]
    tuned = load_config(str(out / record.tuned_preset))
    assert (tuned.name, tuned.follows) == ("tiny_tuned", "ours")
    assert {t: getattr(tuned.loss, f"b_{t}") for t in TERMS} == record.shifts
    assert "without labels" in (out / record.tuned_preset).read_text().splitlines()[0]


def test_rerunning_reuses_the_rounds(unlabelled_world, tmp_path):
    out = tmp_path / "tune"
    args = ["tune-shifts", str(unlabelled_world), "--out", str(out), "--iterations", "6", "--rounds", "2"]
    main(args)
    first = records.read(out / "tuning.json", "tuning")
    stamp = (out / "round0" / "checkpoint.pt").stat().st_mtime_ns
    main(args)
    again = records.read(out / "tuning.json", "tuning")
    assert again.trace == first.trace
    assert (out / "round0" / "checkpoint.pt").stat().st_mtime_ns == stamp


def test_bad_arguments_are_one_line_errors(unlabelled_world, tmp_path, capsys):
    assert main(["tune-shifts", str(unlabelled_world), "--out", str(tmp_path / "t"), "--target-knn", "none",
                 "--target-rand", "none"]) == 2
    assert "every target is off" in capsys.readouterr().err
    assert main(["tune-shifts", "data.root=/x"]) == 2
    assert "give a preset" in capsys.readouterr().err
