"""Paper-table rows as sweep jobs for `stego sweep submit`, so tables run as SLURM job arrays.

    python -m benchmarks sweep --table table2 --seeds 3 --results-dir results > table2_jobs.yaml
    stego sweep submit table2_jobs.yaml --dir sweeps/table2 --partition gpu --gpus 1 --cpus 10 --time 2:00:00

Each job calls `run_rows` below (its `entry`), which runs `runner.run_row` for its rows: the job writes the rows'
benchmark records, results_dir/<table>/<row-slug>/seed<k>/record.json, exactly as the pytest harness does, and
`pytest benchmarks --run-gpu --results-dir results` or `stego report results` then reuse them. Rows that train
the same thing (they differ only in evaluation settings) become one job, so no job waits on another's training,
and its CRF rows run first, so their evaluation (which holds the metrics before CRF too) serves the others.
Cited rows need no compute: their records are written when the jobs are exported. `stego` never imports this
module; a job names it, and the job process imports it (submit from the repository root).
"""
import logging
import os
from pathlib import Path

from stego.errors import StegoError
from stego.sweep import Job

from . import registry, runner, toy

log = logging.getLogger(__name__)

ENTRY = "benchmarks.jobs:run_rows"


def _train_folder(r, cfg, scale: str, results_dir: Path) -> Path:
    """Where the row trains (or, for a released checkpoint, is evaluated): rows sharing it share a job."""
    if r.kind == "release" and scale == "paper":
        return results_dir / "runs" / f"release-{Path(r.checkpoint).stem}"
    return runner.train_dir_for(results_dir, cfg)


def row_jobs(tables, seeds, scale: str = "paper", results_dir="results", data_root=None, release_dir=None,
             select_on_val: bool = False, trusted: bool = False, only=None, check: bool = True,
             overrides=()) -> list[Job]:
    """Sweep jobs for the non-cited rows of `tables` (or the rows named in `only`) × `seeds`.

    Writes the cited rows' records now. check: fail now, with the fix, when a dataset, weight file or released
    checkpoint is missing (instead of in every job). overrides: config overrides for runner.run_row (machine
    settings such as eval.crf_workers=12, or data.features=cached). Paths in the jobs are absolute.
    """
    results_dir = Path(results_dir).resolve()
    if scale == "toy" and data_root is None:
        data_root = toy.make_toy_data(results_dir / "toy-data")
    data_root = str(Path(data_root).resolve()) if data_root is not None else None
    selected = [r for t in tables for r in registry.rows(t) if not only or r.slug in only or r.name in only]
    if only and not selected:
        raise StegoError(f"no row of {', '.join(tables)} is named {', '.join(only)}")
    options = {"scale": scale, "results_dir": str(results_dir), "data_root": data_root,
               "release_dir": str(Path(release_dir).resolve()) if release_dir else None,
               "select_on_val": select_on_val, "trusted": trusted, "overrides": list(overrides)}
    jobs, cited = [], []
    for seed in seeds:
        groups: dict[Path, list] = {}
        for r in selected:
            if r.cited:
                cited.append((r, seed))
                continue
            cfg = runner.row_config(r, scale, seed, data_root, select_on_val, overrides)
            if check:
                runner.check_inputs(r, cfg, scale, release_dir)
            groups.setdefault(_train_folder(r, cfg, scale, results_dir), []).append((r, cfg))
        for members in groups.values():  # CRF rows first: their evaluation also serves the rows without CRF
            group = [r for r, cfg in sorted(members, key=lambda member: not member[1].eval.crf)]
            names = "+".join(f"{r.table}/{r.slug}" for r in group)
            jobs.append(Job(f"{names}/seed{seed}", [str(runner.record_path(results_dir, r, seed)) for r in group],
                            entry=ENTRY, args={"rows": [[r.table, r.slug] for r in group], "seed": seed, **options}))
    for r, seed in cited:
        runner.run_row(r, scale, seed, results_dir, overrides=overrides)
    return jobs


def run_rows(rows: list, seed: int, scale: str, results_dir: str, data_root=None, release_dir=None,
             select_on_val: bool = False, trusted: bool = False, overrides=()) -> list[str]:
    """The job function of table rows: run_row for each (table, slug); returns the record paths."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise StegoError("table rows train at the paper's batch size in one process: submit table sweeps with "
                         "--gpus 1 (one task per job)")
    paths = []
    for table, slug in rows:
        r = registry.row(table, slug)
        runner.run_row(r, scale, seed, results_dir, data_root=data_root, release_dir=release_dir,
                       select_on_val=select_on_val, trusted=trusted, overrides=overrides)
        paths.append(str(runner.record_path(results_dir, r, seed)))
    return paths
