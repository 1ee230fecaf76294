"""The one-command GPU check kept from rotting: its --tiny run on the CPU end to end (the same code as on a GPU,
at toy sizes), and its projection arithmetic and target logic against hand-worked values."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.registry import PAPER_TABLES
from stego.config import PRECISIONS

from . import gpu_check
from .gpu_check import FULL, TARGETS, check_targets, project, train_runs

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_check_runs_on_cpu(tmp_path):
    out = tmp_path / "check.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "benchmarks.perf.gpu_check", "--device", "cpu", "--tiny",
                           "--threads", "1", "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| stage | configuration | achieved | bound |" in done.stdout and "Projected wall time" in done.stdout
    report = json.loads(out.read_text())
    assert report["tiny"] and report["device_type"] == "cpu" and report["seconds"] < 60
    assert report["errors"] == 0, [r for r in report["results"] if "error" in r]
    results = report["results"]
    assert {r["stage"] for r in results} == {"train", "eval", "embed", "knn", "crf"}
    assert {(r["arch"], r["kind"]) for r in results if r["stage"] == "train"} == {
        (arch, kind) for arch in gpu_check.BACKBONES for kind in ("stego", "raw")}
    assert any(r["stage"] == "train" and r["precision"] == "bf16" for r in results)
    assert {(r["stage"], r["precision"]) for r in results if r["stage"] in ("eval", "embed")} == {
        ("eval", "fp32"), ("embed", "fp32")}
    assert all(r["agreement_with_fp32"] == 1.0 for r in results if r["stage"] == "eval")
    for r in results:
        assert r["rate"] > 0 and r["bound"] > 0, r
    assert [p["table"] for p in report["projections"]] == list(PAPER_TABLES)
    assert all(p["total_s"] > 0 for p in report["projections"])
    assert [t["status"] for t in report["targets"]] == ["not checked (not an H100)"]


def fake_results(sizes=FULL):
    """Round rates for every measurement the projections read: fp32 ones as given, bf16 ones twice as fast."""
    speed = {"fp32": 1, "bf16": 2}
    results = [{"stage": "train", "arch": arch, "precision": mode, "kind": kind, "rate": rate * speed[mode]}
               for arch, rate in (("vit_s8", 40.0), ("vit_b8", 20.0), ("r50", 50.0))
               for kind, rate in (("stego", rate), ("raw", 2 * rate)) for mode in PRECISIONS]
    results += [{"stage": "eval", "arch": arch, "precision": mode, "rate": rate * speed[mode]}
                for arch, rate in (("vit_s8", 300.0), ("vit_b8", 100.0), ("r50", 1000.0)) for mode in PRECISIONS]
    results += [{"stage": "embed", "arch": arch, "precision": mode, "rate": rate * speed[mode]}
                for arch, rate in (("vit_s8", 3000.0), ("vit_b8", 1000.0), ("r50", 5000.0)) for mode in PRECISIONS]
    results += [{"stage": "knn", "n": 250_000, "seconds": 10.0, "rate": 25_000.0},
                {"stage": "crf", "rate": 5.0}]
    return results


def test_projection_of_table4_by_hand():
    """Table 4 is one STEGO row: potsdam3_release, ViT-S/8, batch 16, 5000 iterations, whole images, CRF; projected
    in fp32 (the default precision) unless told otherwise."""
    (p,) = [p for p in project(fake_results(), FULL) if p["table"] == "table4"]
    assert p["train_s"] == pytest.approx(5000 / 40.0 * 16 / 32)  # 62.5 s
    assert p["knn_s"] == pytest.approx(4545 / 3000.0 + 10.0 * (4545 / 250_000) ** 2)
    assert p["eval_s"] == pytest.approx(855 / 300.0)
    assert p["crf_s"] == pytest.approx(2 * 855 / 5.0)  # cluster and linear refined: 342 s
    assert p["total_s"] == pytest.approx(p["train_s"] + p["knn_s"] + p["eval_s"] + p["crf_s"])
    (fast,) = [p for p in project(fake_results(), FULL, "bf16") if p["table"] == "table4"]
    assert fast["train_s"] == pytest.approx(p["train_s"] / 2) and fast["eval_s"] == pytest.approx(p["eval_s"] / 2)


def test_projection_shares_trainings_as_the_runner_does():
    """Table 2: ViT-S +SC and +CRF train once (they differ in CRF only), so do the two ViT-B rows; five distinct
    trainings, KNN tables for ViT-S/8 whole images and five-crops and ViT-B/8 five-crops, two evaluations with
    CRF. Release rows only evaluate; cited rows cost nothing."""
    by_table = {p["table"]: p for p in project(fake_results(), FULL)}
    t2 = by_table["table2"]
    assert (t2["trainings"], t2["knn_tables"], t2["evaluations"], t2["with_crf"]) == (5, 3, 5, 2)
    rerun = by_table["rerun"]
    assert (rerun["trainings"], rerun["knn_tables"], rerun["evaluations"]) == (3, 0, 6)
    # the three raw baselines train probes only, at the 'raw' rate: 7000 iterations each at batch 32, 5000 at 16
    assert rerun["train_s"] == pytest.approx(2 * 7000 / 40.0 + 5000 / 80.0 * 16 / 32)


def test_targets_are_checked_only_on_their_card(monkeypatch):
    (target,) = TARGETS
    row = {k: target[k] for k in ("stage", "arch", "precision", "kind")}
    assert check_targets([dict(row, rate=25.0)], torch.device("cpu"))[0]["status"].startswith("not checked")
    monkeypatch.setattr(gpu_check, "device_name", lambda device: "NVIDIA H100 80GB HBM3")
    assert check_targets([dict(row, rate=25.0)], torch.device("cpu"))[0]["status"] == "pass"
    assert check_targets([dict(row, rate=19.0)], torch.device("cpu"))[0]["status"] == "fail"
    assert check_targets([], torch.device("cpu"))[0]["status"] == "fail"


def test_cuda_measures_every_training_in_both_precisions():
    runs = train_runs(torch.device("cuda"))
    assert sorted(runs) == sorted((arch, mode, kind) for arch in gpu_check.BACKBONES for mode in PRECISIONS
                                  for kind in ("stego", "raw"))
    cpu = train_runs(torch.device("cpu"))
    assert ("vit_s8", "bf16", "stego") in cpu and {mode for _, mode, _ in cpu} == set(PRECISIONS)


def test_a_failed_measurement_is_a_row_not_a_crash():
    results = []

    def out_of_memory():
        raise RuntimeError("CUDA out of memory")

    gpu_check.attempt(results, "train", "ViT-B/8 fp32 stego", out_of_memory)
    gpu_check.attempt(results, "knn", "n=10", lambda: {"stage": "knn", "config": "n=10", "rate": 5.0, "unit": "q/s",
                                                       "bound": 10.0})
    assert results[0] == {"stage": "train", "config": "ViT-B/8 fp32 stego",
                          "error": "RuntimeError: CUDA out of memory"}
    table = gpu_check.rate_table(results, [])
    assert "failed: RuntimeError: CUDA out of memory" in table and "| 50% |" in table
    with pytest.raises(KeyError):  # the projections need every rate: run() reports them as not projected
        project(results, FULL)
