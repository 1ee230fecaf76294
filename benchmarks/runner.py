"""Run one benchmark row for one seed and write its record: the job function of local runs and SLURM sweeps.

    run_row(row, scale, seed, results_dir) -> results_dir/<table>/<row-slug>/seed<k>/record.json

A row whose record exists is not run again (re-run sweeps skip done rows). Rows whose configs train the same
thing (they differ only in evaluation settings, e.g. with and without CRF) share one training folder,
results_dir/runs/<dataset>-<backbone>-<hash>-seed<k>/, and an evaluation that already has what they need;
a file lock serialises jobs that reach the same folder at once. A missing dataset, weight file or released
checkpoint is a one-line `MissingFileError` before any compute is spent.
"""
import hashlib
import json
import logging
import os
import time
from pathlib import Path

from stego import build, records
from stego.records import TABLE_METRICS
from stego.backbones import resolve_weight_file
from stego.checkpoint import load_checkpoint
from stego.config import Config, from_dict, with_overrides
from stego.download.places import release_dir as default_release_dir
from stego.errors import MissingFileError, StegoError
from stego.evaluate import run_eval, validator
from stego.io import waiting_lock
from stego.released import released_path
from stego.runs import RunDir
from stego.stats import PROBE_PROTOCOL
from stego.train import train

from . import toy
from .registry import REGISTRY, TABLE6_PAPER, row as find_row, table6
from .rows import BenchmarkRow

log = logging.getLogger(__name__)

SCALES = ("toy", "paper")
"""toy: the synthetic world on CPU (benchmarks/toy.py); paper: the real datasets and weights at the paper's sizes."""
VAL_EVERY = 500
"""Validation interval of paper-scale runs that select their checkpoint on validation (the authors' practice)."""


def record_path(results_dir, row: BenchmarkRow, seed: int) -> Path:
    """results_dir/<table>/<row slug>/seed<k>/record.json."""
    return RunDir(Path(results_dir) / row.table / row.slug / f"seed{seed}").record


def row_config(row: BenchmarkRow, scale: str, seed: int, data_root=None, select_on_val: bool = False,
               overrides=()) -> Config:
    """The config a row runs with at `scale` ('paper': the row's preset; 'toy': its synthetic-world twin).

    overrides (section.key=value, applied last at either scale) adapt a run to the machine, e.g.
    eval.crf_workers=12, or switch how it runs, e.g. data.features=cached (train and evaluate from stored features).
    """
    if scale not in SCALES:
        raise StegoError(f"scale must be one of {SCALES}, got {scale!r}")
    cfg = row.config()
    cfg.train.seed = seed
    if scale == "toy":
        cfg = toy.toy_config(cfg, data_root, select_on_val)
        return with_overrides(cfg, list(overrides)) if overrides else cfg
    if data_root is not None:
        cfg.data.root = str(data_root)
    if select_on_val:
        cfg.train.select_on_val = True
        cfg.train.val_every = cfg.train.val_every or VAL_EVERY
    return with_overrides(cfg, list(overrides)) if overrides else cfg


def release_file(row: BenchmarkRow, release_dir=None) -> Path:
    """The row's released checkpoint in `release_dir` (default: $STEGO_RELEASE_DIR, else ./saved_models)."""
    return Path(release_dir or default_release_dir()) / row.checkpoint


def check_inputs(row: BenchmarkRow, cfg: Config, scale: str, release_dir=None) -> None:
    """Raise MissingFileError (what is missing, where to get it) unless every input of the row is on disk."""
    if row.kind == "release" and scale == "paper":
        released_path(release_file(row, release_dir))
        build.val_dataset(cfg)
        return
    build.val_dataset(cfg)  # first: a missing dataset is named before its missing five-crops
    build.train_dataset(cfg)
    weights = cfg.model.weights
    if weights is None:
        resolve_weight_file(cfg.model.backbone)
    elif weights != "random" and not Path(weights).is_file():
        raise MissingFileError(f"backbone weight file {weights} (model.weights) does not exist; fix the path")


def _digest(values) -> str:
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:10]


def train_dir_for(results_dir, cfg: Config) -> Path:
    """Where a config trains: keyed by everything but its name, evaluation and machine settings."""
    values = {k: v for k, v in cfg.identity().items() if k not in ("name", "eval")}
    return (Path(results_dir) / "runs" /
            f"{cfg.data.dataset}-{cfg.model.backbone}-{_digest(values)}-seed{cfg.train.seed}")


def ensure_trained(cfg: Config, train_dir: Path) -> Path:
    """The checkpoint to evaluate in `train_dir`: reused when finished, resumed when interrupted, else trained."""
    run = RunDir(train_dir)
    if run.finished(cfg.train.iterations):
        return run.evaluated(cfg.train.select_on_val)
    resume = run.checkpoint.exists()
    if resume:  # continue with the config it started with (it may carry another row's name and eval settings)
        cfg = from_dict(load_checkpoint(run.checkpoint)["config"], source=str(run.checkpoint))
    return train(cfg, train_dir, resume=resume, validate=validator(cfg))


def eval_path(folder: Path, cfg: Config, crf: bool) -> Path:
    """Evaluation record of `cfg`'s evaluation settings in `folder` ('-crf' when it holds CRF metrics too)."""
    settings = {k: v for k, v in cfg.to_dict()["eval"].items() if k not in ("crf", "crf_workers", "crf_timeout")}
    return folder / f"eval-{_digest(settings)}{'-crf' if crf else ''}.json"


def ensure_evaluated(cfg: Config, checkpoint: Path, folder: Path,
                     trusted: bool = False) -> tuple[Path, records.EvalRecord]:
    """(path, eval record) of `checkpoint` under cfg's evaluation settings; an existing CRF evaluation also
    serves a row without CRF (it holds the metrics before CRF as well)."""
    with_crf = eval_path(folder, cfg, True)
    candidates = [with_crf] if cfg.eval.crf else [eval_path(folder, cfg, False), with_crf]
    for path in candidates:
        if path.exists():
            return path, records.read(path, "eval")
    path = candidates[0]
    return path, run_eval(cfg, checkpoint, path, trusted=trusted, crf=cfg.eval.crf)


def measured_from(metrics: dict, crf: bool) -> dict:
    """The four table numbers (percent) from an eval record's metrics, after CRF when `crf`."""
    cluster, linear = ("cluster_crf", "linear_crf") if crf else ("cluster", "linear")
    return {"cluster_acc": 100 * metrics[cluster]["accuracy"], "cluster_miou": 100 * metrics[cluster]["miou"],
            "linear_acc": 100 * metrics[linear]["accuracy"], "linear_miou": 100 * metrics[linear]["miou"]}


def measured_intervals(intervals: dict | None, probes: dict) -> dict:
    """The bootstrap interval [lower, upper] (percent) of each table number, from an eval record's intervals and the
    probes that give the numbers ({"cluster": "cluster_crf", ...}); absent without intervals."""
    out = {}
    for metric in TABLE_METRICS:
        probe, _, what = metric.partition("_")
        ci = ((intervals or {}).get(probes[probe]) or {}).get("accuracy" if what == "acc" else "miou")
        if ci is not None:
            out[metric] = [100 * ci["lower"], 100 * ci["upper"]]
    return out


def ci_verdict(ci, paper: float, tolerance: float) -> str:
    """'within' when the whole interval lies inside paper ± tolerance, 'outside' when it lies wholly beyond it,
    'undecided' when it crosses a bound: the validation images alone could put the number on either side."""
    lower, upper = ci
    if lower >= paper - tolerance - 1e-9 and upper <= paper + tolerance + 1e-9:
        return "within"
    if upper < paper - tolerance or lower > paper + tolerance:
        return "outside"
    return "undecided"


def compare(row: BenchmarkRow, measured: dict | None, checked: bool = True, intervals: dict | None = None) -> dict:
    """Per metric the paper reports: paper, measured, difference, tolerance and whether it lies within; the
    measured number's interval (`intervals`: measured_intervals) and where it lies against the tolerance (both
    verdicts None when not `checked`: toy runs are not comparable with the paper); the matching protocol behind it
    (the paper's: Hungarian for the cluster probe, identity for the linear)."""
    out = {}
    for metric in TABLE_METRICS:
        if row.paper[metric] is None:
            continue
        value = None if measured is None else measured[metric]
        tol = row.tolerance_for(metric)
        diff = None if value is None else value - row.paper[metric]
        within = None if diff is None or tol is None or not checked else abs(diff) <= tol + 1e-9
        ci = (intervals or {}).get(metric)
        by_ci = None if ci is None or tol is None or not checked else ci_verdict(ci, row.paper[metric], tol)
        out[metric] = {"paper": row.paper[metric], "measured": value, "diff": diff, "tolerance": tol,
                       "within": within, "ci": ci, "ci_verdict": by_ci,
                       "protocol": PROBE_PROTOCOL[metric.partition("_")[0]]}
    return out


def row_order(row: BenchmarkRow) -> int | None:
    """The row's position in its paper table (None for a row outside the registry)."""
    return next((i for i, r in enumerate(REGISTRY.get(row.table, ())) if r.name == row.name), None)


def _relative(path: Path, start: Path) -> str:
    """`path` relative to `start` (records stay valid when the results folder moves)."""
    return os.path.relpath(Path(path).resolve(), Path(start).resolve())


def _analysis(evaluation: records.EvalRecord, eval_file: Path, record_dir: Path) -> dict | None:
    """The eval record's analysis section with its file path made relative to the benchmark record's folder."""
    section = evaluation.analysis
    if not section or "data" not in section:
        return section
    return {**section, "data": _relative(eval_file.parent / section["data"], record_dir)}


def failures(comparison: dict) -> list[str]:
    """One line per measured number of a record's `comparison` that lies outside its tolerance."""
    return [f"{m}: measured {c['measured']:.1f}, paper {c['paper']:.1f} (diff {c['diff']:+.1f}, tolerance "
            f"±{c['tolerance']:.1f})" for m, c in comparison.items() if c["within"] is False]


def _row_fields(row: BenchmarkRow) -> dict:
    return {"row_kind": row.kind, "table": row.table, "row": row.name, "slug": row.slug,
            "row_order": row_order(row), "cited": row.cited,
            "paper": row.paper, "tolerance": {m: row.tolerance_for(m) for m in TABLE_METRICS}, "source": row.source,
            "note": row.note, "known_gap": row.known_gap, "toy_note": row.toy_note,
            "paper_selected_on_val": row.selected_on_val,
            "preset": row.preset, "ablation": row.ablation, "overrides": list(row.overrides),
            "backbone": row.backbone, "release_checkpoint": row.checkpoint}


def _existing(path: Path, scale: str, overrides) -> records.BenchmarkRecord | None:
    """The record already at `path`, if it was run at `scale` with `overrides`; one run otherwise is an error (a
    results folder holds one way of running each row)."""
    if not path.exists():
        return None
    record = records.read(path, "benchmark")
    if record.scale != scale:
        raise StegoError(f"{path} holds a {record.scale}-scale record, not {scale}: use another results "
                         f"folder (--results-dir / $STEGO_RESULTS) for {scale}-scale runs")
    if list(record.run_overrides) != list(overrides):
        raise StegoError(f"{path} was run with overrides {list(record.run_overrides)}, not {list(overrides)}: use "
                         f"another results folder (--results-dir / $STEGO_RESULTS) for runs with other overrides")
    return record


def run_row(row: BenchmarkRow, scale: str, seed: int, results_dir, data_root=None, release_dir=None,
            select_on_val: bool = False, trusted: bool = False, overrides=()) -> records.BenchmarkRecord:
    """Run (or reuse) one row at `scale` ('toy' or 'paper') for one seed and return its benchmark record.

    data_root: the datasets' root at paper scale (default: the preset's data.root); at toy scale the synthetic
    world's folder (default: made under results_dir/toy-data). release_dir: folder of the released checkpoints
    (default $STEGO_RELEASE_DIR or ./saved_models). select_on_val: keep the checkpoint with the best validation
    cluster mIoU, as the authors did, instead of the last. trusted: passed to the released-checkpoint loader.
    overrides: section.key=value applied to the row's config at either scale (machine settings such as
    eval.crf_workers, or data.features=cached; an override that changes training makes its own training folder).
    """
    path = record_path(results_dir, row, seed)
    existing = _existing(path, scale, overrides)
    if existing is not None:
        log.info("%s / %s seed %d: record exists, reused (%s)", row.table, row.name, seed, path)
        return existing
    started = time.perf_counter()
    record_dir = path.parent
    record = records.BenchmarkRecord(**_row_fields(row), seed=seed, scale=scale, run_overrides=list(overrides))
    if not row.cited:
        if scale == "toy" and data_root is None:
            data_root = toy.make_toy_data(Path(results_dir) / "toy-data")
        cfg = row_config(row, scale, seed, data_root, select_on_val, overrides)
        check_inputs(row, cfg, scale, release_dir)
        if row.kind == "release" and scale == "paper":
            checkpoint = release_file(row, release_dir)
            folder = Path(results_dir) / "runs" / f"release-{checkpoint.stem}"
            with waiting_lock(folder / ".lock"):
                eval_file, evaluation = ensure_evaluated(cfg, checkpoint, folder, trusted)
            record.checkpoint_selection = "released"
            record.checkpoint = str(checkpoint.resolve())
        else:
            folder = train_dir_for(results_dir, cfg)
            with waiting_lock(folder / ".lock"):
                checkpoint = ensure_trained(cfg, folder)
                eval_file, evaluation = ensure_evaluated(cfg, checkpoint, folder, trusted)
            last = checkpoint == RunDir(folder).checkpoint
            record.checkpoint_selection = "last" if last else "best validation cluster mIoU"
            record.checkpoint = _relative(checkpoint, record_dir)
            record.train_dir = _relative(folder, record_dir)
            record.train_config = _relative(RunDir(folder).config, record_dir)
        probes = ("cluster_crf", "linear_crf") if cfg.eval.crf else ("cluster", "linear")
        record.config, record.eval_record = cfg.to_dict(), _relative(eval_file, record_dir)
        record.metrics, record.analysis = evaluation.metrics, _analysis(evaluation, eval_file, record_dir)
        record.intervals, record.protocols = evaluation.intervals, evaluation.protocols
        record.cluster_spread = evaluation.cluster_spread
        if evaluation.image_counts:
            record.image_counts = _relative(eval_file.parent / evaluation.image_counts, record_dir)
        record.measured = dict(zip(("cluster", "linear"), probes))
        record.measured_values = measured_from(evaluation.metrics, cfg.eval.crf)
    intervals = measured_intervals(record.intervals, record.measured) if record.measured else None
    record.comparison = compare(row, record.measured_values, checked=scale == "paper", intervals=intervals)
    prov = records.provenance()
    record.seconds, record.versions, record.git_commit = time.perf_counter() - started, prov["versions"], \
        prov["git_commit"]
    record.created = records.now()
    records.write(record, path)
    log.info("%s / %s seed %d: record written to %s", row.table, row.name, seed, path)
    return record


def run_named(table: str, row_name: str, scale: str, seed: int, results_dir: str,
              **options) -> records.BenchmarkRecord:
    """`run_row` addressed by plain data (table, row name or slug), for job specs such as a sweep's
    `entry: "benchmarks.runner:run_named"` with `args`; options as for run_row."""
    return run_row(find_row(table, row_name), scale, seed, results_dir, **options)


def write_table6(results_dir) -> Path:
    """Table 6 rendered from the presets, as results_dir/table6/record.json (for the reports)."""
    path = RunDir(Path(results_dir) / "table6").record
    records.write(records.HyperparameterRecord(table="table6", paper=TABLE6_PAPER, rows=table6(),
                                               **records.provenance()), path)
    return path
