"""Paired differences between benchmark rows evaluated on the same images: each ablation row of Tables 2 and 5
against its table's reference row (registry.REFERENCE), for every table number, as a percentile bootstrap of the
difference over images (stego.stats.paired_bootstrap) and whether it has the sign of the paper's difference.

Computed from the records' per-image counts, never from a model; seeded by the reference record's
eval.bootstrap_seed (eval.bootstrap_resamples resamples), so the same records always give the same intervals.
Reports render them; benchmarks/test_ablations.py asserts on them.
"""
from dataclasses import dataclass
from pathlib import Path

from stego import records
from stego.errors import MissingFileError
from stego.records import TABLE_METRICS
from stego.stats import agreement, paired_bootstrap
from stego.uncertainty import counts_from_json

from .registry import REFERENCE

LEVEL = 0.95


@dataclass
class Difference:
    """measured(row) − measured(reference) of one table number for one seed, percent, with its paired interval."""

    table: str
    row: str
    reference: str
    scale: str
    seed: int
    metric: str
    point: float
    lower: float
    upper: float
    paper: float | None
    """The paper's difference (None where the paper prints no number for either row)."""
    agreement: str | None
    """stats.agreement against the paper's difference: agrees, opposite, inconclusive (None: no paper sign)."""
    n_resamples: int
    seed_bootstrap: int


def _probe_metric(metric: str) -> tuple[str, str]:
    probe, _, what = metric.partition("_")
    return probe, "accuracy" if what == "acc" else "miou"


def measured_counts(record: records.BenchmarkRecord, path: Path) -> dict:
    """{'cluster': ImageCounts, 'linear': ImageCounts} of the probes that give the record's table numbers."""
    if not record.image_counts:
        raise MissingFileError(f"{path}: the record names no per-image counts (image_counts); re-run its row with "
                               "this version to write them")
    file = Path(path).parent / record.image_counts
    if not file.is_file():
        raise MissingFileError(f"{path}: its per-image counts {file} are missing; copy them beside the eval record "
                               "or re-run the row")
    counts = counts_from_json(records.read(file, "image_counts").probes)
    return {probe: counts[entry] for probe, entry in record.measured.items()}


def difference(reference: tuple, row: tuple, metric: str, reference_counts=None, row_counts=None) -> Difference:
    """The paired difference of `metric` (e.g. 'cluster_miou') between two (path, benchmark record) pairs
    evaluated on the same images; counts already read may be passed in."""
    (ref_path, ref), (row_path, rec) = reference, row
    probe, what = _probe_metric(metric)
    ref_counts = reference_counts or measured_counts(ref, ref_path)
    row_counts = row_counts or measured_counts(rec, row_path)
    settings = (ref.config or {}).get("eval", {})
    n, seed = settings.get("bootstrap_resamples") or 1000, settings.get("bootstrap_seed", 0)
    ci = paired_bootstrap(ref_counts[probe], row_counts[probe], what, probe, n, seed, LEVEL)
    paper = None
    if ref.paper.get(metric) is not None and rec.paper.get(metric) is not None:
        paper = rec.paper[metric] - ref.paper[metric]
    return Difference(rec.table, rec.row, ref.row, rec.scale, rec.seed, metric, 100 * ci.point, 100 * ci.lower,
                      100 * ci.upper, paper, agreement(ci, paper) if paper else None, n, seed)


def ablation_differences(runs) -> list[Difference]:
    """Every ablation row's differences from its table's reference row, seed by seed and scale by scale, for the
    table numbers both rows measured; `runs`: (path, benchmark record) pairs (others are ignored)."""
    out = []
    benchmark = [(Path(p), r) for p, r in runs if isinstance(r, records.BenchmarkRecord) and r.measured]
    for table, reference in REFERENCE.items():
        refs = {(r.scale, r.seed): (p, r) for p, r in benchmark if r.table == table and r.row == reference}
        rows = [(p, r) for p, r in benchmark if r.table == table and r.row != reference and (r.scale, r.seed) in refs]
        cache = {}
        for path, rec in sorted(rows, key=lambda pr: (pr[1].row_order or 0, pr[1].row, pr[1].scale, pr[1].seed)):
            ref = refs[(rec.scale, rec.seed)]
            if id(ref[1]) not in cache:
                cache[id(ref[1])] = measured_counts(ref[1], ref[0])
            counts = measured_counts(rec, path)
            out += [difference(ref, (path, rec), metric, cache[id(ref[1])], counts) for metric in TABLE_METRICS
                    if (rec.measured_values or {}).get(metric) is not None]
    return out
