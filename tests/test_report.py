"""Reports from records alone: paper | measured | Δ, mean ± std over seeds, links, figures, identical rebuilds."""
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image
from scipy import stats as scipy_stats

from stego.cli import main
from stego import records
from stego.errors import StegoError
from reports import build_reports
from reports.runs import load_records
from reports.tables import mean_std
from benchmarks.registry import table6
from benchmarks.runner import write_table6

CONFUSION = [[50, 2, 3], [4, 40, 6], [1, 8, 30]]


def probe(acc, miou, match=(0, 1, 2)):
    return {"accuracy": acc, "miou": miou, "iou": [miou] * 3, "match": list(match), "confusion": CONFUSION}


def metrics(acc, miou, crf=None):
    out = {"cluster": probe(acc, miou, (2, 0, 1)), "linear": probe(acc + 0.1, miou + 0.1), "images": 12,
           "seconds": {"network": 1.5, "crf": 0.5}}
    if crf is not None:
        out["cluster_crf"] = probe(*crf, (2, 0, 1))
        out["linear_crf"] = probe(crf[0] + 0.1, crf[1] + 0.1)
    return out


def benchmark(table, row, seed, scale, m, paper, cited=False, tolerance=None, crf=False, order=0):
    """A benchmark record as the runner writes it (through stego.records), with its recorded verdicts."""
    paper = {"cluster_acc": None, "cluster_miou": None, "linear_acc": None, "linear_miou": None, **paper}
    tolerance = tolerance or {}
    probes = ("cluster_crf", "linear_crf") if crf else ("cluster", "linear")
    values = None if m is None else {
        "cluster_acc": 100 * m[probes[0]]["accuracy"], "cluster_miou": 100 * m[probes[0]]["miou"],
        "linear_acc": 100 * m[probes[1]]["accuracy"], "linear_miou": 100 * m[probes[1]]["miou"]}
    comparison = {}
    for key, number in paper.items():
        if number is None:
            continue
        tol = tolerance.get(key, tolerance.get("default"))
        measured = None if values is None else values[key]
        diff = None if measured is None else measured - number
        within = None if diff is None or tol is None or scale != "paper" else abs(diff) <= tol + 1e-9
        comparison[key] = {"paper": number, "measured": measured, "diff": diff, "tolerance": tol, "within": within}
    record = records.BenchmarkRecord(
        row_kind="cited" if cited else "stego", table=table, row=row, slug=records.slug(row), row_order=order,
        cited=cited, paper=paper, tolerance={k: tolerance.get(k, tolerance.get("default")) for k in paper},
        source="paper", note="", known_gap="", paper_selected_on_val=None, preset=None, ablation=None, overrides=[],
        backbone=None, release_checkpoint=None, seed=seed, scale=scale, run_overrides=[],
        measured=None if m is None else dict(zip(("cluster", "linear"), probes)), measured_values=values,
        comparison=comparison, metrics=m, train_dir="train", versions={"torch": "2.14.1", "device": "cpu"},
        git_commit="abc123def4567",
        config={"name": row, "data": {"dataset": "potsdam3"}, "eval": {"crf": crf}})
    return records.to_dict(record)


def evaluation(name, seed, m, **extra):
    """An eval record as stego.evaluate writes it."""
    record = records.EvalRecord(name=name, config=extra.pop("config", {}), checkpoint="ck.pt", split="val",
                                metrics=m, seconds=1.0, seed=seed, versions={}, git_commit="abc", **extra)
    return records.to_dict(record)


def write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def write_analysis(folder: Path) -> dict:
    """Side files as stego.analysis writes them, for one run."""
    out = folder / "eval_analysis"
    (out / "examples").mkdir(parents=True)
    rng = np.random.default_rng(0)
    examples = []
    for k in range(2):
        entry = {"image": f"examples/{k:03d}_image.png"}
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(out / entry["image"])
        for name in ("truth", "cluster", "linear"):
            entry[name] = f"examples/{k:03d}_{name}.png"
            Image.fromarray(rng.integers(0, 4, (16, 16), dtype=np.uint8)).save(out / entry[name])
        examples.append(entry)
    hist = [{"iteration": it, "bins": 4, "self": [0, 1, 2, 5], "knn": [1, 2, 3, 1], "rand": [3, 3, 1, 0]}
            for it in (30, 10, 20)]
    (out / "code_corr_hist.json").write_text(json.dumps(hist))
    (out / "train_log.csv").write_text(
        "iteration,loss,loss_self,loss_knn,loss_rand,corr_self,corr_knn,corr_rand,linear_loss,cluster_loss,seconds\n"
        "1,0.5,0.1,0.2,0.3,0.9,0.4,0.1,1.0,-0.5,0.1\n2,0.4,0.1,0.2,0.2,0.9,0.3,0.05,0.9,-0.6,0.2\n")
    analysis = {
        "format": 1, "n_classes": 3, "class_names": ["roads", "buildings", "trees"],
        "pr": {"prevalence": 0.4, "pairs": 1000,
               "features": {"ap": 0.55, "precision": [1.0, 0.6, 0.4], "recall": [0.1, 0.5, 1.0]},
               "code": {"ap": 0.75, "precision": [1.0, 0.8, 0.4], "recall": [0.2, 0.7, 1.0]}},
        "examples": examples,
        "knn_cooccurrence": {"matrix": [[0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [None, None, None]],
                             "anchor_mass": [1.0, 2.0, 0.0], "queries": 10, "ranks": [1, 2, 3, 4, 5, 6, 7],
                             "anchor": "pixels", "partner": "pixels", "diagonal": 0.7, "chance": 0.4},
        "five_crop_self_match": {"k": 7, "crops": 5, "n": 50, "histogram": [10, 20, 10, 5, 5],
                                 "per_rank": [0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.0], "mean": 1.5, "chance_per_rank": 0.08},
        "train_log": "train_log.csv", "code_corr_hist": "code_corr_hist.json"}
    (out / "analysis.json").write_text(json.dumps(analysis))
    return {"data": "eval_analysis/analysis.json", "ap_features": 0.55, "ap_code": 0.75}


@pytest.fixture()
def results(tmp_path):
    res = tmp_path / "RESULTS"
    t9 = "Table 9 (test)"
    stego = {"cluster_acc": 50.0, "cluster_miou": 20.0}
    for seed, (acc, miou) in enumerate([(0.52, 0.19), (0.54, 0.20)]):
        rec = benchmark(t9, "STEGO", seed, "paper", metrics(acc, miou), stego, tolerance={"default": 2.0}, order=1)
        folder = res / "table-9" / "stego" / f"seed{seed}"
        # Eval records are a benchmark's raw form, not reports of their own: one named by the record (elsewhere,
        # with the analysis beside it, as the runner writes them), one beside the record.
        raw = evaluation("STEGO", seed, rec["metrics"])
        if seed == 0:
            shared = res / "runs" / "release-x"
            section = write_analysis(shared)
            rec["analysis"] = {**section, "data": os.path.relpath(shared / section["data"], folder)}
            rec["eval_record"] = os.path.relpath(write(shared / "eval.json", raw), folder)
            rec.update(train_dir=None, checkpoint_selection="released", note="a note", known_gap="a known gap")
        else:
            write(folder / "eval.json", raw)
        write(folder / "record.json", rec)
    write(res / "table-9" / "iic" / "seed0" / "record.json",
          benchmark(t9, "IIC", 0, "paper", None, {"cluster_acc": 21.8, "cluster_miou": 6.7}, cited=True, order=2))
    write(res / "table-8" / "crf-row" / "seed0" / "record.json",
          benchmark("Table 8", "CRF row", 0, "toy", metrics(0.30, 0.10, crf=(0.40, 0.15)),
                    {"cluster_acc": 35.0, "linear_acc": 60.0}, tolerance={"default": 50.0}, crf=True))
    (res / "notes.json").write_text("{not json")  # a broken file that is not a record is skipped
    return res


def line_of(page: str, row: str) -> list[str]:
    line = next(line for line in page.splitlines() if line.startswith(f"| {row} "))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_mean_std_is_the_sample_standard_deviation():
    values = [52.0, 54.0, 57.5]
    assert mean_std(values) == pytest.approx((statistics.mean(values), statistics.stdev(values)))
    assert mean_std([3.0, None]) == (3.0, None)
    assert mean_std([None]) == (None, None)


def test_report_cells_paper_measured_delta_and_marks(results, tmp_path):
    pages = build_reports(results, tmp_path / "out")
    assert [p.name for p in pages] == ["index.md", "table-8.md", "table-9-test.md"]
    assert (tmp_path / "out" / "table-9-test" / "results.csv").read_text().splitlines()[1].startswith("STEGO,")
    page = (tmp_path / "out" / "table-9-test.md").read_text()
    cells = line_of(page, "STEGO")
    # Row, Seeds, then paper | measured | Δ for cluster acc, cluster mIoU, linear acc, linear mIoU.
    assert cells[:2] == ["STEGO", "0, 1"]
    # std of 52, 54 is √2, the t interval mean ± t_{0.975, 1}·s/√2; the verdicts are the records': seed 0 (|Δ| 2)
    # within tolerance 2, seed 1 (|Δ| 4) not
    t = scipy_stats.t.ppf(0.975, 1)
    assert cells[2:5] == ["50.0", f"53.0 ± 1.4, t [{53 - t:.1f}, {53 + t:.1f}]", "+3.0 1/2 ✓"]
    assert cells[5:8] == ["20.0", f"19.5 ± 0.7, t [{19.5 - t * 0.5:.1f}, {19.5 + t * 0.5:.1f}]", "-0.5 ✓"]
    assert cells[8:11] == ["—", f"63.0 ± 1.4, t [{63 - t:.1f}, {63 + t:.1f}]", "—"]
    iic = line_of(page, "IIC †")
    assert iic[2:5] == ["21.8", "—", "—"] and "† cited: a method this suite does not re-run" in page
    assert page.index("| STEGO") < page.index("| IIC †")  # the records' row_order, not the alphabet
    toy = (tmp_path / "out" / "table-8.md").read_text()
    crf = line_of(toy, "CRF row")
    # eval.crf was on: the CRF probes are the measured ones; toy scale gets no ✓/✗ even with a tolerance.
    assert crf[2:5] == ["35.0", "40.0", "+5.0"]
    assert crf[8:11] == ["60.0", "50.0", "-10.0"]
    assert "- **STEGO**: a note; known gap: a known gap" in page
    assert "| STEGO | 0 | paper | — | released | 12 | 2.0 | abc123def4 |" in page  # no train.precision recorded
    assert "| CRF row | 30.0 | 10.0 | 40.0 | 15.0 | 40.0 | 20.0 | 50.0 | 25.0 |" in toy
    assert "evaluation-runs.md" not in "".join(p.name for p in pages)
    index = (tmp_path / "out" / "index.md").read_text()
    assert "[Table 9 (test)](table-9-test.md) | paper | 2 | 3 |" in index


def test_links_resolve_and_figures_exist(results, tmp_path):
    out = tmp_path / "out"
    build_reports(results, out)
    page = (out / "table-9-test.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", page)
    assert links
    for link in links:
        assert (out / unquote(link)).exists(), link
    records = [unquote(link) for link in links if link.endswith("record.json")]
    assert sorted(Path(os.path.normpath(out / r)) for r in records) == sorted(
        p for p in results.rglob("record.json") if "table-9" in str(p))
    figures = {p.name for p in (out / "table-9-test" / "stego-paper" / "seed0").iterdir()}
    assert {"pr.png", "confusion.png", "knn_cooccurrence.png", "five_crop_self_match.png", "code_corr_hist.png",
            "training.png", "examples.png", "config.yaml"} <= figures
    for name in figures - {"config.yaml"}:
        with Image.open(out / "table-9-test" / "stego-paper" / "seed0" / name) as im:
            assert im.format == "PNG" and im.width > 100
    assert "AP features 0.550, code 0.750" in page
    assert "git commit | abc123def4567" in page


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rebuild_in_a_new_process_is_byte_identical(results, tmp_path):
    out = tmp_path / "out"
    build_reports(results, out)
    first = snapshot(out)
    env = dict(os.environ, PYTHONHASHSEED="123", PYTHONPATH=str(Path(__file__).parents[1]))
    done = subprocess.run([sys.executable, "-m", "stego.cli", "report", str(results), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert snapshot(out) == first
    assert any(name.endswith(".png") for name in first)


def test_bad_records_are_one_line_errors(tmp_path):
    assert main(["report", str(tmp_path)]) == 2  # no records at all
    rec = benchmark("T", "row", 0, "toy", metrics(0.5, 0.2), {})
    del rec["row"]
    write(tmp_path / "a" / "record.json", rec)
    with pytest.raises(StegoError, match=r"a/record.json: benchmark record lacks row"):
        load_records(tmp_path)
    (tmp_path / "a" / "record.json").write_text('{"kind": "bench')
    with pytest.raises(StegoError, match=r"record.json: not a readable JSON record"):
        load_records(tmp_path)
    rec = benchmark("T", "row", 0, "toy", metrics(0.5, 0.2), {})
    rec["analysis"] = {"data": "gone/analysis.json"}
    write(tmp_path / "a" / "record.json", rec)
    with pytest.raises(StegoError, match="gone/analysis.json is missing"):
        build_reports(tmp_path, tmp_path / "out")


def _eval_record(name, seed, dataset, backbone, miou):
    return evaluation(name, seed, metrics(0.5, miou), config={
        "name": name, "data": {"dataset": dataset, "workers": seed}, "model": {"backbone": backbone},
        "train": {"seed": seed}, "eval": {"crf": False}})


def test_runs_that_share_a_name_are_grouped_only_when_their_configs_agree(tmp_path):
    """Seeds of one config are one row (mean ± std); other datasets or backbones under the same name are rows of
    their own, labelled by the keys that differ; machine settings (data.workers) do not split a row."""
    res = tmp_path / "res"
    for k, (seed, dataset, backbone, miou) in enumerate([(0, "cocostuff27", "dino_vitb8", 0.20),
                                                         (1, "cocostuff27", "dino_vitb8", 0.22),
                                                         (0, "cityscapes27", "dino_vitb8", 0.50),
                                                         (0, "cocostuff27", "dino_vits8", 0.60)]):
        write(res / f"run{k}" / "record.json", _eval_record("stego", seed, dataset, backbone, miou))
    page = build_reports(res, tmp_path / "out")[1].read_text()
    coco_b8 = line_of(page, "stego [data.dataset=cocostuff27, model.backbone=dino_vitb8]")
    t = scipy_stats.t.ppf(0.975, 1)  # two seeds: s = √2, half width t·s/√2
    assert coco_b8[1] == "0, 1" and coco_b8[6] == f"21.0 ± 1.4, t [{21 - t:.1f}, {21 + t:.1f}]"  # row, seeds, ...
    assert line_of(page, "stego [data.dataset=cityscapes27, model.backbone=dino_vitb8]")[1] == "0"
    assert line_of(page, "stego [data.dataset=cocostuff27, model.backbone=dino_vits8]")[6] == "60.0"
    assert not any(line.startswith("| stego | ") for line in page.splitlines())


def _brute_paired(a: np.ndarray, b: np.ndarray, hungarian: bool, n: int, seed: int) -> tuple:
    """Percentile interval of mIoU(b) − mIoU(a) over images resampled as stego.stats documents, from per-image
    confusions [images, pred, classes], by plain loops and scipy's assignment."""
    from scipy.optimize import linear_sum_assignment

    def miou(conf):
        mapping = list(range(conf.shape[0]))
        if hungarian:
            rows, cols = linear_sum_assignment(conf, maximize=True)
            mapping = [-1] * conf.shape[0]
            for r, c in zip(rows, cols):
                mapping[r] = c
        ious = []
        for k in range(conf.shape[1]):
            tp = sum(conf[p, k] for p in range(conf.shape[0]) if mapping[p] == k)
            predicted = sum(conf[p].sum() for p in range(conf.shape[0]) if mapping[p] == k)
            union = predicted + conf[:, k].sum() - tp
            if union:
                ious.append(tp / union)
        return sum(ious) / len(ious)

    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        idx = rng.integers(0, len(a), size=len(a))
        diffs.append(miou(b[idx].sum(0)) - miou(a[idx].sum(0)))
    return 100 * (miou(b.sum(0)) - miou(a.sum(0))), *(100 * np.percentile(diffs, [2.5, 97.5]))


def test_ablation_section_pairs_each_row_with_the_reference_by_its_counts(tmp_path):
    from stego.counts import ImageCounts

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 3, size=(10, 30))
    noisy = lambda p: np.where(rng.random(truth.shape) < p, rng.integers(0, 3, size=truth.shape), (truth + 1) % 3)
    dense = {}
    res = tmp_path / "res"
    for name, noise, order in (("full", 0.2, 0), ("no CRF", 0.5, 5)):
        pred = noisy(noise)
        per_image = np.zeros((10, 3, 3), dtype=np.int64)
        for i in range(10):
            np.add.at(per_image[i], (pred[i], truth[i]), 1)
        dense[name] = per_image
        counts = ImageCounts.from_dense(per_image)
        folder = res / "table5" / records.slug(name) / "seed0"
        write(folder / "record_counts.json", records.to_dict(records.ImageCountsRecord(
            split="val", images=10, probes={"cluster": counts.to_json(), "linear": counts.to_json()})))
        paper = {"cluster_acc": 48.3, "cluster_miou": 24.5} if name == "full" else \
            {"cluster_acc": 47.7, "cluster_miou": 24.0}
        rec = benchmark("table5", name, 0, "toy", metrics(0.5, 0.3), paper, order=order)
        rec.update(image_counts="record_counts.json",
                   config={**rec["config"], "eval": {"crf": False, "bootstrap_resamples": 50, "bootstrap_seed": 2}})
        if name == "full":  # what an eval record says about its numbers, as stego.uncertainty writes it
            ci = {"miou": {"lower": 0.25, "upper": 0.35}, "accuracy": {"lower": 0.45, "upper": 0.55}}
            summary = {"miou": {"n": 3, "median": 0.28, "min": 0.2, "max": 0.31},
                       "accuracy": {"n": 3, "median": 0.5, "min": 0.4, "max": 0.52}}
            rec.update(intervals={"cluster": ci, "linear": ci}, cluster_spread={"summary": summary},
                       protocols={"cluster": {"hungarian": {"miou": 0.3, "accuracy": 0.5},
                                              "majority": {"miou": 0.33, "accuracy": 0.56},
                                              "heldout_hungarian": {"miou": 0.29, "accuracy": 0.49}},
                                  "overclustering": {"ks": [3, 5], "miou": [0.3, 0.4], "accuracy": [0.5, 0.6]}})
        write(folder / "record.json", rec)
    out = tmp_path / "out"
    build_reports(res, out)
    page = (out / "table5.md").read_text()
    assert "## Ablations against 'full'" in page and (out / "table5" / "forest.png").is_file()
    section = page.split("## Ablations")[1].split("## All probes")[0]
    cells = line_of(section, "no CRF")  # Row, Scale, Seed, then one cell per table number
    point, lower, upper = _brute_paired(dense["full"], dense["no CRF"], True, 50, 2)
    assert f"{point:+.1f} [{lower:+.1f}, {upper:+.1f}]; paper -0.5;" in cells[4], cells
    assert point < 0 and ("agrees" in cells[4]) == (upper < 0)  # more noise: lower mIoU, the paper's sign
    assert not any(line.startswith("| full |") for line in section.splitlines())
    assert line_of(page, "full")[5:7] == ["24.5", "30.0 [25.0, 35.0]"]  # one seed: the recorded interval
    protocols = line_of(page.split("## Cluster probe: matching protocols")[1], "full")
    assert protocols[3:] == ["30.0 / 50.0", "33.0 / 56.0", "29.0 / 49.0", "3: 30.0, 5: 40.0"]
    restarts = line_of(page.split("## Cluster probe: restarts")[1], "full")
    assert restarts[2:] == ["3", "50.0", "50.0 [40.0, 52.0]", "30.0", "28.0 [20.0, 31.0]"]  # Acc, then mIoU
    assert (out / "table5" / "overclustering.png").is_file()


def test_table6_reaches_a_report(tmp_path):
    write_table6(tmp_path / "res")
    pages = build_reports(tmp_path / "res", tmp_path / "out")
    page = (tmp_path / "out" / "table6.md").read_text()
    assert pages[-1].name == "table6.md" and "[Table 6: hyperparameters](table6.md)" in pages[0].read_text()
    for row in table6():
        assert f"| {row['preset']} | {row['follows']} | {row['dataset']} |" in page
    assert "| cocostuff27 | 0.15 | 1.00 | 0.10 | 1.00 | 0.20 | 0.12 |" in page
    assert ("| cityscapes27_release | release | cityscapes27 | dino_vitb8 | 100 | 0.9058762625226623 | "
            "0.577453483136995 | 1.0 | 0.31361241889448443 | 0.1754346515479633 | 0.45828472207 |") in page
    csv = (tmp_path / "out" / "table6" / "presets.csv").read_text().splitlines()
    assert len(csv) == len(table6()) + 1
