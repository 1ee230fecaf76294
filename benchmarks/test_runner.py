"""The harness itself: tolerance checks, shared training folders, toy mapping, missing inputs, record reuse."""
import json

import pytest

from benchmarks import runner, toy
from benchmarks.registry import BenchmarkRow, paper, row, rows
from stego import records
from stego.backbones import build_backbone, spec_of
from stego.config import load_config
from stego.projection import FIXED
from stego.errors import MissingFileError, StegoError
from tests.fixtures import write_cocostuff

RUN_ROWS = [r for r in rows() if not r.cited]


def toy_row(**tolerance):
    return BenchmarkRow("table9", "toy row", "stego", paper(48.3, 24.5, None, None), "cocostuff27_vits8_paper",
               tolerance=tolerance)


def test_compare_checks_each_printed_number_against_its_tolerance():
    r = toy_row(cluster_acc=5.0, cluster_miou=3.0, linear_acc=2.0)
    out = runner.compare(r, {"cluster_acc": 53.3, "cluster_miou": 21.4, "linear_acc": 10.0, "linear_miou": 1.0})
    assert sorted(out) == ["cluster_acc", "cluster_miou"]  # the paper prints no linear numbers for this row
    assert out["cluster_acc"]["within"] is True and out["cluster_acc"]["diff"] == pytest.approx(5.0)
    assert out["cluster_miou"]["within"] is False and out["cluster_miou"]["diff"] == pytest.approx(-3.1)
    assert runner.failures(out) == ["cluster_miou: measured 21.4, paper 24.5 (diff -3.1, tolerance ±3.0)"]
    toy_out = runner.compare(r, {"cluster_acc": 0.0, "cluster_miou": 0.0, "linear_acc": 0, "linear_miou": 0},
                             checked=False)
    assert {c["within"] for c in toy_out.values()} == {None}


def test_interval_verdicts_place_the_whole_interval_against_the_tolerance_band():
    # paper 48.3 ± 3.0: the band is [45.3, 51.3]
    assert runner.ci_verdict([45.3, 51.3], 48.3, 3.0) == "within"
    assert runner.ci_verdict([46.0, 52.0], 48.3, 3.0) == "undecided"  # crosses the upper bound
    assert runner.ci_verdict([40.0, 60.0], 48.3, 3.0) == "undecided"  # holds the whole band
    assert runner.ci_verdict([51.4, 53.0], 48.3, 3.0) == "outside"
    assert runner.ci_verdict([40.0, 45.2], 48.3, 3.0) == "outside"


def test_compare_records_each_numbers_interval_and_its_verdict():
    intervals = {"cluster_crf": {"miou": {"lower": 0.20, "upper": 0.26}, "accuracy": {"lower": 0.40, "upper": 0.43}},
                 "linear_crf": {"miou": {"lower": 0.3, "upper": 0.4}, "accuracy": {"lower": 0.7, "upper": 0.8}}}
    cis = runner.measured_intervals(intervals, {"cluster": "cluster_crf", "linear": "linear_crf"})
    want = {"cluster_acc": [40.0, 43.0], "cluster_miou": [20.0, 26.0], "linear_acc": [70.0, 80.0],
            "linear_miou": [30.0, 40.0]}
    assert sorted(cis) == sorted(want) and all(cis[k] == pytest.approx(want[k]) for k in want)
    r = toy_row(cluster_acc=5.0, cluster_miou=3.0)
    measured = {"cluster_acc": 42.0, "cluster_miou": 23.0, "linear_acc": 75.0, "linear_miou": 35.0}
    out = runner.compare(r, measured, intervals=cis)
    # acc: 42.0 and its whole interval lie below 48.3 - 5 = 43.3; mIoU: 23.0 within 24.5 ± 3, its interval [20, 26] not
    assert (out["cluster_acc"]["within"], out["cluster_acc"]["ci_verdict"]) == (False, "outside")
    assert (out["cluster_miou"]["within"], out["cluster_miou"]["ci_verdict"]) == (True, "undecided")
    assert out["cluster_miou"]["ci"] == pytest.approx([20.0, 26.0])
    with_linear = BenchmarkRow("table9", "row", "stego", paper(48.3, 24.5, 74.4, 38.3), "cocostuff27_vits8_paper")
    both = runner.compare(with_linear, measured, intervals=cis)
    assert (out["cluster_acc"]["protocol"], both["linear_miou"]["protocol"]) == ("hungarian", "identity")
    assert {c["ci_verdict"] for c in runner.compare(r, measured, checked=False, intervals=cis).values()} == {None}


def test_measured_numbers_are_percent_and_follow_the_crf_setting():
    metrics = {"cluster": {"accuracy": 0.5, "miou": 0.25}, "linear": {"accuracy": 0.75, "miou": 0.4},
               "cluster_crf": {"accuracy": 0.55, "miou": 0.3}, "linear_crf": {"accuracy": 0.8, "miou": 0.45}}
    assert runner.measured_from(metrics, crf=False) == pytest.approx(
        {"cluster_acc": 50.0, "cluster_miou": 25.0, "linear_acc": 75.0, "linear_miou": 40.0})
    assert runner.measured_from(metrics, crf=True) == pytest.approx(
        {"cluster_acc": 55.0, "cluster_miou": 30.0, "linear_acc": 80.0, "linear_miou": 45.0})


def folder(table, name, seed=0, scale="paper", tmp="res"):
    r = row(table, name)
    return runner.train_dir_for(tmp, runner.row_config(r, scale, seed, "toy-root" if scale == "toy" else None))


@pytest.mark.parametrize("scale", ["paper", "toy"])
def test_rows_that_differ_only_in_evaluation_share_one_training(scale):
    assert folder("table5", "full", scale=scale) == folder("table5", "no CRF", scale=scale)
    assert folder("table5", "full", scale=scale) == folder("table2", "ViT-S +CRF", scale=scale)
    assert folder("table1", "STEGO", scale=scale) == folder("table2", "ViT-B clamp+crop+SC", scale=scale)
    assert folder("table2", "ViT-S +5-crop", scale=scale) == folder("table5", "no pointwise (SC)", scale=scale)
    assert folder("table5", "full", scale=scale) != folder("table5", "no 5-crop", scale=scale)
    assert folder("table5", "full", scale=scale) != folder("table5", "full", seed=1, scale=scale)


@pytest.mark.parametrize("r", RUN_ROWS, ids=lambda r: f"{r.table}-{r.slug}")
def test_toy_config_keeps_the_rows_switches_and_takes_the_worlds_values(r):
    full = r.config()
    small = runner.row_config(r, "toy", 3, "toy-root")
    world = load_config(toy.WORLD)
    for section, keys in {"loss": ("zero_clamp", "pointwise", "stabilize"),
                          "data": ("crop", "crop_ratio", "num_neighbors"), "model": ("projection",),
                          "eval": ("crf",)}.items():
        for key in keys:
            assert getattr(getattr(small, section), key) == getattr(getattr(full, section), key), f"{section}.{key}"
    for term in ("self", "knn", "rand"):  # a term the row switches off stays off; the others weigh as the world's
        weight = getattr(small.loss, f"lambda_{term}")
        assert weight == (getattr(world.loss, f"lambda_{term}") if getattr(full.loss, f"lambda_{term}") else 0.0)
        assert getattr(small.loss, f"b_{term}") == getattr(world.loss, f"b_{term}")
    if full.model.projection in FIXED:  # a reduction keeps its place on the dimension scale (toy.toy_dim)
        channels = build_backbone(small.model.backbone, "random").dim
        assert small.model.dim == toy.toy_dim(full.model.dim, spec_of(full.model.backbone).dim, channels)
    else:
        assert small.model.dim == (world.model.dim if full.model.projection != "none" else full.model.dim)
    assert small.model.backbone == toy.BACKBONE_MAP[full.model.backbone]
    assert (small.data.dataset, small.data.root, small.train.seed, small.train.device) == ("synthetic", "toy-root",
                                                                                          3, "cpu")
    assert (small.data.res, small.eval.res) == (world.data.res, world.eval.res)


def test_missing_inputs_are_one_line_errors_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("STEGO_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("STEGO_OFFLINE", "1")
    empty = tmp_path / "empty"
    with pytest.raises(MissingFileError, match=str(empty / "cocostuff")) as err:
        runner.run_row(row("table5", "no 5-crop"), "paper", 0, tmp_path / "res", data_root=empty)
    assert "\n" not in str(err.value)
    write_cocostuff(tmp_path / "data")
    with pytest.raises(MissingFileError, match="cocostuff27_five_crop_0.5.*stego data fivecrop"):
        runner.run_row(row("table5", "full"), "paper", 0, tmp_path / "res", data_root=tmp_path / "data")
    with pytest.raises(MissingFileError, match="dino_deitsmall8_300ep_pretrain.pth"):  # whole images: weights next
        runner.run_row(row("table5", "no 5-crop"), "paper", 0, tmp_path / "res", data_root=tmp_path / "data")
    with pytest.raises(MissingFileError, match=r"saved_models/cocostuff27_vit_base_5\.ckpt.*blob\.core"):
        runner.run_row(row("rerun", "CocoStuff-27 released ViT-B/8"), "paper", 0, tmp_path / "res",
                       data_root=tmp_path / "data", release_dir=tmp_path / "saved_models")
    assert not (tmp_path / "res").exists(), "nothing is written before the inputs are there"


def test_cited_rows_write_a_record_without_running(tmp_path):
    r = row("table4", "IIC")
    record = runner.run_row(r, "paper", 0, tmp_path)
    saved = json.loads(runner.record_path(tmp_path, r, 0).read_text())
    assert saved == json.loads(json.dumps(records.to_dict(record)))
    assert saved["cited"] and saved["measured_values"] is None and saved["paper"]["cluster_acc"] == 65.1
    assert saved["comparison"]["cluster_acc"]["within"] is None
    assert not (tmp_path / "runs").exists()


def test_rows_can_be_run_by_plain_names(tmp_path):
    record = runner.run_named("table1", "picie-plus-h", "paper", 2, str(tmp_path))
    assert (record.row, record.seed) == ("PiCIE+H", 2)
    assert runner.record_path(tmp_path, row("table1", "PiCIE+H"), 2).is_file()
    with pytest.raises(ValueError, match="no row"):
        runner.run_named("table1", "nonsense", "paper", 0, str(tmp_path))


def test_a_record_of_another_scale_is_an_error(tmp_path):
    r = row("table3", "PiCIE")
    runner.run_row(r, "paper", 0, tmp_path)
    with pytest.raises(StegoError, match="paper-scale record"):
        runner.run_row(r, "toy", 0, tmp_path)
    with pytest.raises(StegoError, match=r"run with overrides \[\], not \['data.features=cached'\]"):
        runner.run_row(r, "paper", 0, tmp_path, overrides=["data.features=cached"])


def test_table6_record_is_written(tmp_path):
    saved = json.loads(runner.write_table6(tmp_path).read_text())
    presets = {r["preset"]: r for r in saved["rows"]}
    assert presets["cityscapes27_release"]["lambda_rand"] == 0.9058762625226623
    assert presets["cocostuff27_paper"]["paper"]["b_knn"] == pytest.approx(0.2)


def test_a_paper_scale_row_runs_end_to_end_on_a_tiny_dataset_in_the_real_layout(tmp_path):
    """The paper-scale path (real reader, preset settings, records) on a 3-image CocoStuff and a tiny backbone."""
    write_cocostuff(tmp_path / "data")
    toy.register_toy_backbones()
    tiny = ("model.backbone=toy_vit", "model.weights=random", "model.dim=4", "data.crop=none", "data.res=32",
            "data.workers=0", "data.knn_k=3", "data.num_neighbors=2", "loss.feature_samples=3",
            "loss.neg_samples=2", "train.batch_size=2", "train.iterations=2", "train.device=cpu",
            "eval.res=32", "eval.crf=false", "eval.batch_size=2")
    r = BenchmarkRow("table9", "tiny cocostuff", "stego", paper(50.0), "cocostuff27_vits8_paper", overrides=tiny,
            tolerance={"cluster_acc": 100.0})
    record = runner.run_row(r, "paper", 0, tmp_path / "res", data_root=tmp_path / "data",
                            overrides=("eval.batch_size=1",))
    assert record.config["data"]["root"] == str(tmp_path / "data") and record.metrics["images"] == 2
    assert record.config["eval"]["batch_size"] == 1 and record.run_overrides == ["eval.batch_size=1"]
    assert record.comparison["cluster_acc"]["within"] is True and record.checkpoint_selection == "last"
    assert (tmp_path / "res" / "table9" / "tiny-cocostuff" / "seed0" / "record.json").is_file()


def test_selection_on_validation_trains_apart_and_says_so(tmp_path, data_root, results_dir, scale, run_overrides):
    if scale != "toy":
        pytest.skip("a toy-scale harness test")
    root = data_root
    r = row("table3", "STEGO")
    last = runner.run_row(r, "toy", 0, results_dir, data_root=root, overrides=run_overrides)  # the session's record
    best = runner.run_row(r, "toy", 0, tmp_path / "b", data_root=root, select_on_val=True, overrides=run_overrides)
    assert last.checkpoint_selection == "last" and best.checkpoint.endswith("best.pt")
    assert best.checkpoint_selection == "best validation cluster mIoU"
    assert best.config["train"]["select_on_val"] and best.config["train"]["val_every"] == toy.VAL_EVERY
    assert runner.train_dir_for(tmp_path, runner.row_config(r, "toy", 0, root)) != \
        runner.train_dir_for(tmp_path, runner.row_config(r, "toy", 0, root, select_on_val=True))


def test_the_harness_command_lists_runs_and_exports_rows(tmp_path, capsys, results_dir, data_root, scale,
                                                         run_overrides):
    from benchmarks.cli import main
    from stego.sweep import load_jobs

    if scale != "toy":
        pytest.skip("a toy-scale harness test")
    assert main(["ls", "--table", "table5"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 1 + len(rows("table5")) and "no random loss" in listed[-1] and "39.8 (±5)" in listed[-1]
    results = results_dir  # the session's: the row's record is reused once any test ran it
    runner.run_row(row("table3", "STEGO"), "toy", 0, results, data_root=data_root, overrides=run_overrides)
    sets = [arg for o in run_overrides for arg in ("--set", o)]
    assert main(["run", "--table", "table3", "--row", "STEGO", "--scale", "toy", "--results-dir", str(results),
                 *sets]) == 0
    printed = capsys.readouterr().out
    assert "table3 / STEGO seed 0: cluster_acc" in printed and "(paper 73.2)" in printed
    saved = records.read(runner.record_path(results, row("table3", "STEGO"), 0), "benchmark")
    assert saved.scale == "toy" and saved.metrics["images"] > 0
    jobs_file = tmp_path / "jobs.yaml"
    assert main(["sweep", "--table", "table2", "--scale", "toy", "--results-dir", str(results),
                 "--out", str(jobs_file), *sets]) == 0
    jobs = load_jobs(jobs_file)
    assert jobs and all(job.entry == "benchmarks.jobs:run_rows" for job in jobs)
    assert main(["run", "--table", "table3", "--row", "nope", "--scale", "toy"]) == 2
