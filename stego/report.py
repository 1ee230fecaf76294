"""Markdown reports with figures, built from run records alone (`stego report RESULTS_DIR`).

Records are the JSON files runs write. Benchmark records (kind "benchmark": table, row, seed, scale, cited,
paper, tolerance, metrics, config, train_dir, versions, git_commit) make one report per paper table; plain
evaluation records (kind "eval", from `stego eval`) make one "Evaluation runs" report. Figures come from the
confusion matrices in the records and from the side files their "analysis" section names (stego.analysis).
The same records give byte-identical markdown and PNGs: no clocks, sorted orders, fixed figure sizes, and
no software stamp in the PNGs.
"""
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
import yaml
from PIL import Image

from .analysis import read_label_png
from .config import MACHINE_KEYS
from .errors import MissingFileError, StegoError
from .figures import (confusion_figure, cooccurrence_figure, histogram_figure, pr_figure, qualitative_grid,
                      self_match_figure, training_curves)
from .io import atomic_write, writable_folder

log = logging.getLogger(__name__)

PAPER_KEYS = ("cluster_acc", "cluster_miou", "linear_acc", "linear_miou")
KEY_NAMES = {"cluster_acc": "Cluster Acc", "cluster_miou": "Cluster mIoU", "linear_acc": "Linear Acc",
             "linear_miou": "Linear mIoU"}
PROBES = ("cluster", "cluster_crf", "linear", "linear_crf")
PROBE_NAMES = {"cluster": "Cluster", "cluster_crf": "Cluster+CRF", "linear": "Linear", "linear_crf": "Linear+CRF"}
EVAL_TABLE = "Evaluation runs"
EXAMPLE_COLUMNS = ("image", "truth", "cluster", "cluster_crf", "linear", "linear_crf")


@dataclass
class Run:
    """One record and what the report needs from it."""

    path: Path
    record: dict
    table: str
    row: str
    seed: int
    scale: str | None = None
    cited: bool = False
    paper: dict = field(default_factory=dict)
    tolerance: dict | float | None = None
    order: float = math.inf

    @property
    def metrics(self) -> dict:
        return self.record.get("metrics") or {}

    @property
    def config(self) -> dict:
        return self.record.get("config") or {}


def slug(text: str) -> str:
    """A file-name-safe lower-case form of a table or row name."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"


def _read_json(path: Path):
    """A JSON file's content; a broken record file is an error, other broken JSON files are skipped."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        if "record" in path.name:
            raise StegoError(f"{path}: not a readable JSON record ({type(err).__name__}: {err}); delete it and "
                             "re-run that run") from None
        log.warning("skipping %s: not readable JSON", path)
        return None


def _benchmark_run(path: Path, record: dict) -> Run:
    missing = [key for key in ("table", "row", "seed", "metrics") if key not in record]
    if missing or not isinstance(record.get("seed"), int):
        raise StegoError(f"{path}: benchmark record lacks {', '.join(missing) or 'an integer seed'}; "
                         "re-run its benchmark row or delete the file")
    return Run(path, record, str(record["table"]), str(record["row"]), record["seed"], record.get("scale"),
               bool(record.get("cited")), dict(record.get("paper") or {}), record.get("tolerance"),
               math.inf if record.get("row_order") is None else float(record["row_order"]))


def _inside(path: Path, folders) -> bool:
    return any(path == d or d in path.parents for d in folders)


def load_runs(results_dir, exclude=None) -> list[Run]:
    """Every benchmark and eval record under `results_dir` (searched recursively; `exclude` is skipped), sorted.

    Eval records that a benchmark record names (eval_record) or that lie in its folder (or below it, or in its
    train_dir) are that benchmark's raw form and are not listed again.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise MissingFileError(f"{results_dir}: no such folder; pass the folder the runs wrote their records to")
    exclude = Path(exclude).resolve() if exclude is not None else None
    benchmarks, evals = [], []
    for path in sorted(results_dir.rglob("*.json")):
        resolved = path.resolve()
        if exclude is not None and _inside(resolved, [exclude]):
            continue
        if any(part.endswith("_analysis") for part in path.relative_to(results_dir).parts[:-1]):
            continue
        record = _read_json(path)
        if not isinstance(record, dict) or record.get("kind") not in ("benchmark", "eval"):
            continue
        if record["kind"] == "benchmark":
            benchmarks.append(_benchmark_run(path, record))
        else:
            evals.append(Run(path, record, EVAL_TABLE, str(record.get("name") or path.parent.name),
                             int(record.get("seed") or 0)))
    owned, used_evals = set(), set()
    for run in benchmarks:
        owned.add(run.path.parent.resolve())
        if run.record.get("train_dir"):
            owned.add((run.path.parent / run.record["train_dir"]).resolve())
        if run.record.get("eval_record"):
            used_evals.add((run.path.parent / run.record["eval_record"]).resolve())
    evals = [run for run in evals
             if run.path.resolve() not in used_evals and not _inside(run.path.parent.resolve(), owned)]
    runs = benchmarks + evals
    return sorted(runs, key=lambda r: (r.table, r.order, r.row, r.scale or "", r.seed, str(r.path)))


def _number(value):
    """A finite float or None (NaN, None and missing values are absent)."""
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def measured_probe(run: Run, probe: str) -> str:
    """The metrics entry compared with the paper for probe "cluster" or "linear": the record's own
    `measured` choice if it names one, else the CRF variant when the run's config had eval.crf on."""
    chosen = (run.record.get("measured") or {}).get(probe)
    if chosen:
        return chosen
    crf = bool((run.config.get("eval") or {}).get("crf")) and f"{probe}_crf" in run.metrics
    return f"{probe}_crf" if crf else probe


def probe_value(run: Run, probe: str, field_name: str):
    """A metric of one probe in percent (None when absent)."""
    value = _number((run.metrics.get(probe) or {}).get(field_name))
    return None if value is None else 100 * value


def measured(run: Run, key: str):
    """The measured number (percent) for a paper key such as cluster_miou."""
    probe, _, what = key.partition("_")
    return probe_value(run, measured_probe(run, probe), "accuracy" if what == "acc" else "miou")


def mean_std(values) -> tuple:
    """(mean, sample standard deviation with n − 1) of the values present; std None below two values."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _fmt(mean, std=None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def _fmt_delta(delta) -> str:
    return "—" if delta is None else f"{round(delta, 1) or 0.0:+.1f}"


def _tolerance(tolerance, key):
    if isinstance(tolerance, dict):
        return _number(tolerance.get(key, tolerance.get("default")))
    return _number(tolerance)


def _link(target: Path, base: Path, text: str) -> str:
    return f"[{text}]({quote(Path(os.path.relpath(target, base)).as_posix())})"


@dataclass
class Row:
    """The runs of one table row at one scale with one config (one run per seed)."""

    name: str
    scale: str | None
    runs: list
    variant: str = ""
    """The config keys that set this row apart from others of its name, e.g. 'data.dataset=cityscapes27'."""

    @property
    def first(self) -> Run:
        return self.runs[0]


IGNORED_IN_GROUPS = (("train", "seed"), *MACHINE_KEYS)
"""What runs of one row may differ in: the seed, and settings that change no result."""


def _flat_config(run: Run) -> dict:
    """The run's config as {'section.key': value}, without the seed and machine settings."""
    flat = {}
    for section, values in sorted(run.config.items()):
        if isinstance(values, dict):
            flat.update({f"{section}.{k}": v for k, v in values.items() if (section, k) not in IGNORED_IN_GROUPS})
        else:
            flat[section] = values
    return flat


def _variant_label(config: dict, differing: list) -> str:
    shown = [f"{k}={config.get(k)}" for k in differing[:3]]
    return ", ".join(shown) + (f", +{len(differing) - 3} more" if len(differing) > 3 else "")


def group_rows(runs) -> list[Row]:
    """Runs of one row and scale are averaged over seeds only when their configs agree apart from the seed (and
    machine settings); runs that share a name but not a config become rows of their own, labelled by the keys
    that differ."""
    named = {}
    for run in runs:
        named.setdefault((run.row, run.scale), []).append(run)
    rows = []
    for (name, scale), group in named.items():
        configs = {}
        for run in group:
            configs.setdefault(json.dumps(_flat_config(run), sort_keys=True, default=str), []).append(run)
        flats = [json.loads(key) for key in configs]
        differing = sorted({k for f in flats for k in set().union(*flats) if any(g.get(k) != f.get(k) for g in flats)})
        for key, members in configs.items():
            label = _variant_label(json.loads(key), differing) if len(configs) > 1 else ""
            rows.append(Row(name, scale, sorted(members, key=lambda r: (r.seed, str(r.path))), label))
    return sorted(rows, key=lambda r: (min(x.order for x in r.runs), r.name, r.scale or "", r.variant))


def _row_label(row: Row, many_scales: bool) -> str:
    label = row.name + (f" [{row.variant}]" if row.variant else "")
    label = label.replace("|", "\\|") + (" †" if row.first.cited else "")
    return f"{label} ({row.scale or '—'})" if many_scales else label


def results_table(rows, many_scales: bool) -> list[str]:
    """Paper | measured | Δ per metric, one line per row; ✓/✗ for paper-scale rows that have a tolerance."""
    keys = [k for k in PAPER_KEYS if any(_number(r.first.paper.get(k)) is not None or
                                          any(measured(run, k) is not None for run in r.runs) for r in rows)]
    head = ["Row", "Seeds"] + [f"{KEY_NAMES[k]} {col}" for k in keys for col in ("paper", "measured", "Δ")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [_row_label(row, many_scales), ", ".join(str(r.seed) for r in row.runs)]
        for key in keys:
            paper = _number(row.first.paper.get(key))
            mean, std = mean_std([measured(run, key) for run in row.runs])
            delta = None if paper is None or mean is None else mean - paper
            mark = ""
            tol = _tolerance(row.first.tolerance, key)
            if delta is not None and tol is not None and row.scale == "paper":
                mark = " ✓" if abs(delta) <= tol + 1e-9 else " ✗"
            cells += [_fmt(paper), _fmt(mean, std), _fmt_delta(delta) + mark]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def probes_table(rows, many_scales: bool) -> list[str]:
    """Accuracy and mIoU of every probe a row measured (with and without CRF), mean ± std over seeds; rows
    without metrics (cited) are left out."""
    probes = [p for p in PROBES if any(p in run.metrics for row in rows for run in row.runs)]
    head = ["Row"] + [f"{PROBE_NAMES[p]} {m}" for p in probes for m in ("Acc", "mIoU")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if not any(run.metrics for run in row.runs):
            continue
        cells = [_row_label(row, many_scales)]
        for probe in probes:
            for name in ("accuracy", "miou"):
                cells.append(_fmt(*mean_std([probe_value(run, probe, name) for run in row.runs])))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def row_notes(rows, many_scales: bool) -> list[str]:
    """The registry's note, source (when not the paper itself) and known gap of each row that has any."""
    lines = []
    for row in rows:
        record = row.first.record
        parts = [str(record["note"])] if record.get("note") else []
        if record.get("source") and record["source"] != "paper" and not row.first.cited:
            parts.append(f"source: {record['source']}")
        if record.get("known_gap"):
            parts.append(f"known gap: {record['known_gap']}")
        if parts:
            lines.append(f"- **{_row_label(row, many_scales)}**: {'; '.join(parts)}")
    return ["## Notes", "", *lines, ""] if lines else []


def environment(runs) -> list[str]:
    """Versions, devices and git commits of the runs (each distinct value with its number of runs)."""
    values = {}
    for run in runs:
        for key, value in sorted((run.record.get("versions") or {}).items()):
            values.setdefault(key, []).append(str(value))
        values.setdefault("git commit", []).append(str(run.record.get("git_commit") or "unknown"))
    lines = ["| | |", "|---|---|"]
    for key in sorted(values):
        distinct = sorted(set(values[key]))
        text = distinct[0] if len(distinct) == 1 else "; ".join(f"{v} ({values[key].count(v)} runs)" for v in distinct)
        lines.append(f"| {key} | {text.replace('|', '/')} |")
    return lines


def examples_figure(examples: list, folder: Path, n_classes: int, path: Path) -> None:
    """Image, truth and predictions of the saved examples, via stego.figures.qualitative_grid."""
    rows = []
    for entry in examples:
        row = {}
        for column in EXAMPLE_COLUMNS:
            if column not in entry:
                continue
            file = folder / entry[column]
            if not file.is_file():
                raise MissingFileError(f"{file}: example image named in {folder / 'analysis.json'} is missing; "
                                       "re-run the evaluation to write it again")
            if column == "image":
                with Image.open(file) as im:
                    row[column] = np.asarray(im.convert("RGB"))
            else:
                row[column] = read_label_png(file)
        rows.append(row)
    n = max([n_classes] + [int(v.max()) + 1 for r in rows for k, v in r.items() if k != "image"])
    qualitative_grid(rows, n, path, columns=EXAMPLE_COLUMNS)


def load_analysis(run: Run):
    """(analysis dict, its folder) from the record's "analysis" section, or (None, None) without one."""
    section = run.record.get("analysis")
    if not section:
        return None, None
    path = run.path.parent / section["data"]
    if not path.is_file():
        raise MissingFileError(f"{run.path}: its analysis file {path} is missing; re-run the evaluation of this "
                               "run, or copy the analysis folder beside the record")
    return json.loads(path.read_text()), path.parent


def class_names(run: Run, analysis, n: int) -> list:
    """Class names from the analysis, else from the dataset reader named in the config, else numbers."""
    names = (analysis or {}).get("class_names")
    if not names:
        from .data.datasets import DATASETS

        reader = DATASETS.get((run.config.get("data") or {}).get("dataset"))
        names = getattr(reader, "class_names", None)
    return list(names) if names and len(names) == n else [str(i) for i in range(n)]


def _code_hist(run: Run, analysis, folder):
    """Code-correlation histograms: the analysis copy, else the benchmark's train_dir."""
    if analysis and analysis.get("code_corr_hist"):
        return json.loads((folder / analysis["code_corr_hist"]).read_text())
    train_dir = run.record.get("train_dir")
    path = run.path.parent / train_dir / "code_corr_hist.json" if train_dir else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def run_figures(run: Run, fig_dir: Path, page_dir: Path) -> list[str]:
    """Markdown lines with the figures of one run (written into fig_dir)."""
    analysis, folder = load_analysis(run)
    lines = []

    def image(name, alt):
        return f"![{alt}]({quote(Path(os.path.relpath(fig_dir / name, page_dir)).as_posix())})"

    probes = [measured_probe(run, "cluster"), measured_probe(run, "linear")]
    probes = [p for p in probes if "confusion" in (run.metrics.get(p) or {})]
    n_classes = len(run.metrics[probes[0]]["confusion"][0]) if probes else 0
    names = class_names(run, analysis, n_classes)
    if analysis and analysis.get("pr"):
        pr = analysis["pr"]
        pr_figure(pr, fig_dir / "pr.png")
        ap = {k: "—" if pr[k]["ap"] is None else f"{pr[k]['ap']:.3f}" for k in ("features", "code")}
        lines += [f"**Same label from cosine (Fig. 3).** AP features {ap['features']}, code {ap['code']}; "
                  f"{pr['pairs']} pixel pairs, {100 * pr['prevalence']:.1f}% same label.", "",
                  image("pr.png", "same-label precision-recall"), ""]
    if probes:
        confusion_figure(run.metrics, probes, names, fig_dir / "confusion.png", PROBE_NAMES)
        lines += [f"**Confusion matrices (Figs. 6, 11, 12)** of {', '.join(PROBE_NAMES.get(p, p) for p in probes)}, "
                  "rows normalised over truth.", "", image("confusion.png", "confusion matrices"), ""]
    for key, title, draw in (("knn_cooccurrence", "KNN label co-occurrence (Fig. 10)", cooccurrence_figure),
                             ("five_crop_self_match", "Five-crop self-match (Fig. 15)", self_match_figure)):
        part = (analysis or {}).get(key)
        if not part:
            continue
        if "skipped" in part:
            lines += [f"**{title}:** not computed ({part['skipped']}).", ""]
            continue
        if key == "knn_cooccurrence":
            draw(part, names, fig_dir / f"{key}.png")
            summary = (f"anchor-weighted diagonal {_fmt3(part['diagonal'])} vs chance {_fmt3(part['chance'])}, "
                       f"{part['queries']} query images")
        else:
            draw(part, fig_dir / f"{key}.png")
            summary = f"mean {part['mean']:.2f} own-image crops among ranks 1–{part['k']} over {part['n']} crops"
        lines += [f"**{title}:** {summary}.", "", image(f"{key}.png", title), ""]
    histograms = _code_hist(run, analysis, folder)
    if histograms:
        histogram_figure(histograms, fig_dir / "code_corr_hist.png")
        lines += ["**Code correlations over training (Fig. 14).**", "", image("code_corr_hist.png", "histograms"), ""]
    if analysis and analysis.get("train_log"):
        training_curves(folder / analysis["train_log"], fig_dir / "training.png")
        lines += ["**Training balance:** loss terms and mean code correlations.", "",
                  image("training.png", "training curves"), ""]
    if analysis and analysis.get("examples"):
        examples_figure(analysis["examples"], folder, n_classes, fig_dir / "examples.png")
        lines += ["**Qualitative examples** (first validation images; clusters shown in their matched class "
                  "colours).", "", image("examples.png", "qualitative examples"), ""]
    return lines


def _fmt3(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def _seconds(run: Run):
    """Evaluation time (network + CRF) from the metrics; None for a run without them."""
    seconds = run.metrics.get("seconds")
    if isinstance(seconds, dict):
        return sum(v for v in seconds.values() if isinstance(v, (int, float)))
    return _number(seconds)


def table_report(table: str, runs, out_dir: Path) -> Path:
    """Write `<out>/<table slug>.md`, its figures and run configs under `<out>/<table slug>/`; returns the page."""
    page = out_dir / f"{slug(table)}.md"
    rows = group_rows(runs)
    scales = sorted({r.scale or "—" for r in runs})
    many = len(scales) > 1
    lines = [f"# {table}", "",
             f"Built by `stego report RESULTS_DIR` from {len(runs)} record(s) of {len(rows)} row(s); scale: {', '.join(scales)}.",
             "Values are percentages. Paper numbers as printed; measured = mean ± sample standard deviation (n − 1) "
             "over seeds; Δ = measured − paper. Measured is the DenseCRF-refined probe when the run's config had "
             "`eval.crf` on (or what the record's `measured` field names), else the plain probe.", "",
             "## Results", "", *results_table(rows, many), ""]
    notes = []
    if any(r.first.cited for r in rows):
        notes.append("† cited: a method this suite does not re-run; the paper's number is carried.")
    if any(r.scale == "paper" and r.first.tolerance is not None for r in rows):
        notes.append("✓ / ✗: |Δ| within / beyond the row's tolerance (paper-scale runs only).")
    lines += [" ".join(notes), ""] if notes else []
    lines += row_notes(rows, many)
    lines += ["## All probes", "", *probes_table(rows, many), "", "## Environment", "", *environment(runs), "",
              "## Runs", "", "| Row | Seed | Scale | Checkpoint | Images | Eval seconds | Commit | Record | Config |",
              "|---|---|---|---|---|---|---|---|---|"]
    used, run_dirs = set(), {}
    for row in rows:
        for run in row.runs:
            name = f"{slug(row.name + ' ' + row.variant)}{'-' + slug(row.scale) if row.scale else ''}/seed{run.seed}"
            candidate, k = name, 2
            while candidate in used:
                candidate, k = f"{name}-{k}", k + 1
            used.add(candidate)
            run_dir = out_dir / slug(table) / candidate
            run_dirs[id(run)] = run_dir
            config_link = "—"
            if run.config:
                with atomic_write(run_dir / "config.yaml", "w", durable=False) as f:
                    yaml.safe_dump(run.config, f, sort_keys=True)
                config_link = _link(run_dir / "config.yaml", out_dir, "config.yaml")
            for key, text in (("train_config", "training"), ("eval_record", "eval record")):
                target = run.path.parent / run.record[key] if run.record.get(key) else None
                if target is not None and target.is_file():
                    config_link += " · " + _link(target.resolve(), out_dir.resolve(), text)
            seconds = _seconds(run)
            lines.append(f"| {_row_label(row, many)} | {run.seed} | {run.scale or '—'} | "
                         f"{run.record.get('checkpoint_selection') or '—'} | "
                         f"{run.metrics.get('images', '—')} | {'—' if seconds is None else f'{seconds:.1f}'} | "
                         f"{str(run.record.get('git_commit') or 'unknown')[:10]} | "
                         f"{_link(run.path.resolve(), out_dir.resolve(), run.path.name)} | {config_link} |")
    lines += ["", "## Figures", ""]
    for row in rows:
        run = row.first
        figures = run_figures(run, run_dirs[id(run)], out_dir) if run.metrics else []
        if figures:
            lines += [f"### {_row_label(row, many)} — seed {run.seed}", "", *figures]
    with atomic_write(page, "w", durable=False) as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")
    return page


def build_reports(results_dir, out_dir=None) -> list[Path]:
    """One markdown report per table of the records under `results_dir`, plus `index.md`; returns the pages
    written, index first. `out_dir` defaults to RESULTS_DIR/report."""
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir / "report"
    if results_dir.is_dir():  # before reading anything (load_runs names a missing results folder)
        writable_folder(out_dir, "--out")
    runs = load_runs(results_dir, exclude=out_dir)
    if not runs:
        raise StegoError(f"{results_dir}: no run records found (JSON files of kind 'benchmark' or 'eval'); "
                         "run `stego eval --checkpoint CKPT` or the benchmarks first, or point at the folder holding their records")
    tables = {}
    for run in runs:
        tables.setdefault(run.table, []).append(run)
    pages = [table_report(table, tables[table], out_dir) for table in sorted(tables)]
    source = Path(os.path.relpath(results_dir.resolve(), out_dir.resolve())).as_posix()
    lines = ["# Reports", "", f"Built by `stego report RESULTS_DIR` from the records under `{source}` (relative to this folder).",
             "", "| Table | Scale | Rows | Runs |", "|---|---|---|---|"]
    for table, page in zip(sorted(tables), pages):
        runs_of = tables[table]
        scales = ", ".join(sorted({r.scale or "—" for r in runs_of}))
        lines.append(f"| [{table}]({quote(page.name)}) | {scales} | {len({(r.row, r.scale) for r in runs_of})} | "
                     f"{len(runs_of)} |")
    index = out_dir / "index.md"
    with atomic_write(index, "w", durable=False) as f:
        f.write("\n".join(lines) + "\n")
    log.info("wrote %d report(s) to %s", len(pages), out_dir)
    return [index] + pages
