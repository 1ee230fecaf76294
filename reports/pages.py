"""Markdown reports with figures, built from run records alone (`stego report RESULTS_DIR`).

One page per table of the benchmark records (paper | measured | Δ with the runner's verdicts), one for plain
evaluation records (`stego eval`), one for Table 6 (the presets' hyperparameters against the paper's), and an
index. Every table is also written as CSV beside its page. The same records give byte-identical pages and
PNGs: no clocks, sorted orders, fixed figure sizes, no software stamp in the PNGs.
"""
import logging
import os
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import yaml

from stego.errors import StegoError
from stego.io import atomic_write, writable_folder
from stego.records import slug

from .ablations import ablation_section
from .figures import overclustering_figure, run_figures
from .runs import group_rows, load_records
from .sweeps import dimension_figure
from .tables import _number, markdown, probes_table, protocols_table, results_table, spread_table, write_csv

log = logging.getLogger(__name__)

TABLE6_KEYS = ("lambda_rand", "lambda_knn", "lambda_self", "b_rand", "b_knn", "b_self")


def _link(target: Path, base: Path, text: str) -> str:
    return f"[{text}]({quote(Path(os.path.relpath(target, base)).as_posix())})"


def _table(frame: pd.DataFrame, csv_path: Path, page_dir: Path) -> list[str]:
    """A table as markdown lines, its CSV written beside and linked."""
    write_csv(frame, csv_path)
    return [*markdown(frame), "", _link(csv_path, page_dir, f"CSV: {csv_path.name}"), ""]


def row_notes(rows, many: bool) -> list[str]:
    """The registry's note, source (when not the paper itself) and known gap of each row that has any."""
    lines = []
    for row in rows:
        record = row.first.record
        if not row.first.benchmark:
            continue
        parts = [str(record.note)] if record.note else []
        if record.source and record.source != "paper" and not row.first.cited:
            parts.append(f"source: {record.source}")
        if record.known_gap:
            parts.append(f"known gap: {record.known_gap}")
        if record.toy_note and row.scale == "toy":
            parts.append(f"at toy scale: {record.toy_note}")
        if parts:
            lines.append(f"- **{row.label(many)}**: {'; '.join(parts)}")
    return ["## Notes", "", *lines, ""] if lines else []


def environment(runs) -> list[str]:
    """Versions, devices and git commits of the runs (each distinct value with its number of runs)."""
    values = {}
    for run in runs:
        for key, value in sorted((run.record.versions or {}).items()):
            values.setdefault(key, []).append(str(value))
        values.setdefault("git commit", []).append(str(run.record.git_commit or "unknown"))
    lines = ["| | |", "|---|---|"]
    for key in sorted(values):
        distinct = sorted(set(values[key]))
        text = distinct[0] if len(distinct) == 1 else "; ".join(f"{v} ({values[key].count(v)} runs)" for v in distinct)
        lines.append(f"| {key} | {text.replace('|', '/')} |")
    return lines


def _seconds(run):
    """Evaluation time (network + CRF) from the metrics; None for a run without them."""
    seconds = run.metrics.get("seconds")
    if isinstance(seconds, dict):
        return sum(v for v in seconds.values() if isinstance(v, (int, float)))
    return _number(seconds)


def _runs_table(rows, many: bool, table: str, out_dir: Path) -> tuple[list[str], dict]:
    """The table of runs (precision, checkpoint, images, time, commit, links) and each run's folder in the report;
    records from before train.precision existed show '—'."""
    lines = ["| Row | Seed | Scale | Precision | Checkpoint | Images | Eval seconds | Commit | Record | Config |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    used, run_dirs = set(), {}
    for row in rows:
        for run in row.runs:
            name = f"{slug(row.name + ' ' + row.variant)}{'-' + slug(row.scale) if row.scale else ''}/seed{run.seed}"
            candidate, k = name, 2
            while candidate in used:
                candidate, k = f"{name}-{k}", k + 1
            used.add(candidate)
            run_dir = run_dirs[id(run)] = out_dir / slug(table) / candidate
            config_link = "—"
            if run.config:
                with atomic_write(run_dir / "config.yaml", "w", durable=False) as f:
                    yaml.safe_dump(run.config, f, sort_keys=True)
                config_link = _link(run_dir / "config.yaml", out_dir, "config.yaml")
            for key, text in (("train_config", "training"), ("eval_record", "eval record")):
                value = getattr(run.record, key, None)
                target = run.path.parent / value if value else None
                if target is not None and target.is_file():
                    config_link += " · " + _link(target.resolve(), out_dir.resolve(), text)
            seconds = _seconds(run)
            selection = getattr(run.record, "checkpoint_selection", None) or "—"
            precision = (run.config.get("train") or {}).get("precision", "—")
            lines.append(f"| {row.label(many)} | {run.seed} | {run.scale or '—'} | {precision} | {selection} | "
                         f"{run.metrics.get('images', '—')} | {'—' if seconds is None else f'{seconds:.1f}'} | "
                         f"{str(run.record.git_commit or 'unknown')[:10]} | "
                         f"{_link(run.path.resolve(), out_dir.resolve(), run.path.name)} | {config_link} |")
    return lines, run_dirs


def _image(target: Path, base: Path, alt: str) -> str:
    return f"![{alt}]({quote(Path(os.path.relpath(target, base)).as_posix())})"


def _protocol_sections(rows, many: bool, folder: Path, out_dir: Path) -> list[str]:
    """The cluster probe under other matching protocols, its over-clustering curves and its restarts."""
    lines = []
    protocols = protocols_table(rows, many)
    if not protocols.empty:
        lines += ["## Cluster probe: matching protocols", "",
                  "The measured cluster probe scored by one-to-one Hungarian matching on the test set (the paper's "
                  "protocol, the only one compared with the paper), many-to-one majority mapping, and Hungarian "
                  "fitted on a seeded half of the validation images and scored on the other half; over-clustering: "
                  "the cluster probe refitted with K clusters on the training codes (no CRF), majority-mapped.", "",
                  *_table(protocols, folder / "protocols.csv", out_dir)]
        curves = {row.label(many): row.first.record.protocols["overclustering"] for row in rows
                  if "overclustering" in (getattr(row.first.record, "protocols", None) or {})}
        if curves:
            overclustering_figure(curves, folder / "overclustering.png")
            lines += [_image(folder / "overclustering.png", out_dir, "over-clustering curves"), ""]
    spread = spread_table(rows, many)
    if not spread.empty:
        lines += ["## Cluster probe: restarts", "",
                  "The cluster probe refitted from seeded restarts on the trained head's codes of the training "
                  "images, as training fits it (stego.refits), scored without CRF by Hungarian matching; trained: "
                  "the probe that training fitted, also without CRF. A wide range means the cluster number depends "
                  "on the probe's init as much as on the head (STEGO issue #39).", "",
                  *_table(spread, folder / "restarts.csv", out_dir)]
    return lines


def table_report(table: str, runs, out_dir: Path) -> Path:
    """Write `<out>/<table slug>.md` with its CSVs, figures and run configs under `<out>/<table slug>/`."""
    page, folder = out_dir / f"{slug(table)}.md", out_dir / slug(table)
    rows = group_rows(runs)
    scales = sorted({r.scale or "—" for r in runs})
    many = len(scales) > 1
    lines = [f"# {table}", "",
             f"Built by `stego report RESULTS_DIR` from {len(runs)} record(s) of {len(rows)} row(s); scale: "
             f"{', '.join(scales)}.",
             "Values are percentages. Paper numbers as printed; Δ = measured − paper. Measured is the probe the "
             "record names (the DenseCRF-refined one when the run's config had `eval.crf` on), else the plain probe. "
             "Protocol: cluster numbers after one-to-one Hungarian matching on the test set (the paper's), linear "
             "numbers by identity; other protocols below. One seed: the number [its 95% percentile bootstrap "
             "interval over the validation images, recorded at evaluation]; several seeds: mean ± sample standard "
             "deviation (n − 1), t [the 95% Student t interval over seeds].", "",
             "## Results", "", *_table(results_table(rows, many), folder / "results.csv", out_dir)]
    notes = []
    if any(r.first.cited for r in rows):
        notes.append("† cited: a method this suite does not re-run; the paper's number is carried.")
    if any(r.scale == "paper" for r in rows):
        notes.append("✓ / ✗: |Δ| within / beyond the row's tolerance, as the runner recorded it (paper scale only; "
                     "k/n ✓: k of n seeds within). (CI within / outside / undecided): where the number's bootstrap "
                     "interval lies against paper ± tolerance, as recorded (docs/benchmarks.md).")
    lines += [" ".join(notes), ""] if notes else []
    lines += row_notes(rows, many)
    ablation_lines, ablations = ablation_section(runs, folder, lambda target, alt: _image(target, out_dir, alt))
    if ablations is not None:
        lines += [*ablation_lines, *_table(ablations, folder / "ablations.csv", out_dir)]
    sweep = folder / "figures" / "dimension_sweep.png"
    if dimension_figure(rows, sweep):
        lines += ["## Dimension sweep", "", "Cluster mIoU of raw features reduced by PCA or a random projection, "
                  "against the dimension (log scale); the raw features' own score as a dotted line; STEGO at its code "
                  "dimension as a star.", "", _image(sweep, out_dir, "dimension sweep"), ""]
    lines += ["## All probes", "", *_table(probes_table(rows, many), folder / "probes.csv", out_dir)]
    lines += _protocol_sections(rows, many, folder, out_dir)
    lines += ["## Environment", "", *environment(runs), "", "## Runs", ""]
    run_lines, run_dirs = _runs_table(rows, many, table, out_dir)
    lines += [*run_lines, "", "## Figures", ""]
    for row in rows:
        run = row.first
        figures = run_figures(run, run_dirs[id(run)], out_dir) if run.metrics else []
        if figures:
            lines += [f"### {row.label(many)} — seed {run.seed}", "", *figures]
    with atomic_write(page, "w", durable=False) as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")
    return page


def table6_report(path: Path, record, out_dir: Path) -> Path:
    """Table 6: every preset's loss weights and shifts, each to its last digit, beside the paper's printed values
    (rounded to 2 decimals)."""
    page, lines = out_dir / "table6.md", []
    columns = ["Preset", "Follows", "Dataset", "Backbone", "Dim", *TABLE6_KEYS, "Centering", "Batch", "Iterations"]
    presets = pd.DataFrame([[r["preset"], r["follows"], r["dataset"], r["backbone"], r["dim"],
                             *[repr(r[k]) for k in TABLE6_KEYS], r["pointwise"], r["batch_size"], r["iterations"]]
                            for r in record.rows], columns=columns)
    paper = pd.DataFrame([[dataset, *[f"{values[k]:.2f}" for k in TABLE6_KEYS]]
                          for dataset, values in sorted(record.paper.items())], columns=["Dataset", *TABLE6_KEYS])
    lines = ["# Table 6: hyperparameters", "",
             f"Built by `stego report RESULTS_DIR` from {_link(path.resolve(), out_dir.resolve(), 'its record')}: the "
             "presets as the suite runs them (`*_release`: the released values to their last digit; `*_paper`: "
             "the paper's), and the paper's Table 6 as printed.", "",
             "## Presets", "", *_table(presets, out_dir / "table6" / "presets.csv", out_dir),
             "## Paper Table 6", "", *_table(paper, out_dir / "table6" / "paper.csv", out_dir)]
    with atomic_write(page, "w", durable=False) as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")
    return page


def build_reports(results_dir, out_dir=None) -> list[Path]:
    """One markdown report per table of the records under `results_dir`, plus `index.md`; returns the pages
    written, index first. `out_dir` defaults to RESULTS_DIR/report."""
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir / "report"
    if results_dir.is_dir():  # before reading anything (load_records names a missing results folder)
        writable_folder(out_dir, "--out")
    runs, hyperparameters = load_records(results_dir, exclude=out_dir)
    if not runs and not hyperparameters:
        raise StegoError(f"{results_dir}: no run records found (JSON files of kind 'benchmark' or 'eval'); run "
                         "`stego eval --checkpoint CKPT` or the benchmarks first, or point at the folder holding their "
                         "records")
    tables = {}
    for run in runs:
        tables.setdefault(run.table, []).append(run)
    pages = [table_report(table, tables[table], out_dir) for table in sorted(tables)]
    source = Path(os.path.relpath(results_dir.resolve(), out_dir.resolve())).as_posix()
    lines = ["# Reports", "", f"Built by `stego report RESULTS_DIR` from the records under `{source}` (relative to "
             "this folder).", "", "| Table | Scale | Rows | Runs |", "|---|---|---|---|"]
    for table, page in zip(sorted(tables), pages):
        runs_of = tables[table]
        scales = ", ".join(sorted({r.scale or "—" for r in runs_of}))
        lines.append(f"| [{table}]({quote(page.name)}) | {scales} | {len({(r.row, r.scale) for r in runs_of})} | "
                     f"{len(runs_of)} |")
    for path, record in hyperparameters[-1:]:
        pages.append(table6_report(path, record, out_dir))
        lines.append(f"| [Table 6: hyperparameters]({quote(pages[-1].name)}) | presets | {len(record.rows)} | — |")
    index = out_dir / "index.md"
    with atomic_write(index, "w", durable=False) as f:
        f.write("\n".join(lines) + "\n")
    log.info("wrote %d report(s) to %s", len(pages), out_dir)
    return [index] + pages
