"""Tables of a report, built with pandas: the runs become one tidy frame (a row per run and number), seeds are
grouped (mean ± sample std, n − 1), and one pivot per table is written as markdown and as CSV beside it. Verdicts
(within the paper's tolerance or not) are the ones the runner recorded, never recomputed here."""
import math
from pathlib import Path

import pandas as pd

from stego.io import atomic_write
from stego.records import TABLE_METRICS

KEY_NAMES = {"cluster_acc": "Cluster Acc", "cluster_miou": "Cluster mIoU", "linear_acc": "Linear Acc",
             "linear_miou": "Linear mIoU"}
PROBES = ("cluster", "cluster_crf", "linear", "linear_crf")
PROBE_NAMES = {"cluster": "Cluster", "cluster_crf": "Cluster+CRF", "linear": "Linear", "linear_crf": "Linear+CRF"}
STATS = {"accuracy": "Acc", "miou": "mIoU"}


def _number(value):
    """A finite float or None (NaN, None and missing values are absent)."""
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def probe_value(run, probe: str, stat: str):
    """A metric of one probe in percent (None when absent)."""
    value = _number((run.metrics.get(probe) or {}).get(stat))
    return None if value is None else 100 * value


def measured(run, key: str):
    """The run's number (percent) for a table column such as cluster_miou: the one its record gives."""
    if run.benchmark:
        return _number((run.record.measured_values or {}).get(key))
    probe, _, what = key.partition("_")
    return probe_value(run, run.measured_probe(probe), "accuracy" if what == "acc" else "miou")


def tidy(rows, many_scales: bool) -> pd.DataFrame:
    """One line per (row, run, table column): paper number, measured number, the recorded verdict."""
    lines = []
    for position, row in enumerate(rows):
        for run in row.runs:
            comparison = run.record.comparison if run.benchmark else {}
            paper = run.record.paper if run.benchmark else {}
            for key in TABLE_METRICS:
                lines.append({"position": position, "row": row.label(many_scales), "seed": run.seed, "key": key,
                              "paper": _number(paper.get(key)), "measured": measured(run, key),
                              "within": (comparison.get(key) or {}).get("within")})
    return pd.DataFrame(lines, columns=["position", "row", "seed", "key", "paper", "measured", "within"])


def fmt(mean, std=None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    return f"{mean:.1f}" if std is None or math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def _delta(delta) -> str:
    return "—" if delta is None or math.isnan(delta) else f"{round(delta, 1) or 0.0:+.1f}"


def _verdict(within: pd.Series) -> str:
    """✓ when every recorded verdict is within, ✗ when none is, 'k/n ✓' otherwise; '' without verdicts."""
    known = [w for w in within if w is not None and not (isinstance(w, float) and math.isnan(w))]
    if not known:
        return ""
    hits = sum(bool(w) for w in known)
    return " ✓" if hits == len(known) else " ✗" if not hits else f" {hits}/{len(known)} ✓"


def results_table(rows, many_scales: bool) -> pd.DataFrame:
    """Paper | measured | Δ per table column, one line per row, with the recorded verdicts."""
    frame = tidy(rows, many_scales)
    keys = [k for k in TABLE_METRICS
            if frame.loc[frame.key == k, ["paper", "measured"]].notna().to_numpy().any()]
    out = []
    for (position, row), group in frame.groupby(["position", "row"], sort=True):
        seeds = group.drop_duplicates("seed").seed
        line = {"Row": row, "Seeds": ", ".join(str(s) for s in seeds)}
        for key in keys:
            cells = group[group.key == key]
            values = cells.measured.dropna()
            paper = cells.paper.dropna()
            paper = float(paper.iloc[0]) if len(paper) else None
            mean = float(values.mean()) if len(values) else None
            std = float(values.std(ddof=1)) if len(values) > 1 else None
            delta = None if paper is None or mean is None else mean - paper
            line[f"{KEY_NAMES[key]} paper"] = fmt(paper)
            line[f"{KEY_NAMES[key]} measured"] = fmt(mean, std)
            line[f"{KEY_NAMES[key]} Δ"] = _delta(delta) + _verdict(cells.within)
        out.append(line)
    return pd.DataFrame(out)


def probes_table(rows, many_scales: bool) -> pd.DataFrame:
    """Accuracy and mIoU of every probe a row measured (with and without CRF), mean ± std over seeds; rows
    without metrics (cited) are left out."""
    probes = [p for p in PROBES if any(p in run.metrics for row in rows for run in row.runs)]
    out = []
    for row in rows:
        if not any(run.metrics for run in row.runs):
            continue
        line = {"Row": row.label(many_scales)}
        for probe in probes:
            for stat, name in STATS.items():
                values = pd.Series([probe_value(run, probe, stat) for run in row.runs], dtype="float64").dropna()
                std = float(values.std(ddof=1)) if len(values) > 1 else None
                line[f"{PROBE_NAMES[probe]} {name}"] = fmt(float(values.mean()) if len(values) else None, std)
        out.append(line)
    return pd.DataFrame(out)


def markdown(frame: pd.DataFrame) -> list[str]:
    """A frame of display strings as a markdown table."""
    cells = [[str(c).replace("|", "\\|") for c in frame.columns]]
    cells += [[str(v) for v in line] for line in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(frame.columns)]
    return lines + ["| " + " | ".join(line) + " |" for line in cells[1:]]


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """The table as CSV beside its markdown (same cells, so the same records give the same bytes)."""
    with atomic_write(path, "w", durable=False) as f:
        frame.to_csv(f, index=False, lineterminator="\n")


def mean_std(values) -> tuple:
    """(mean, sample standard deviation with n − 1) of the values present; std None below two values."""
    series = pd.Series([v for v in values if v is not None], dtype="float64")
    if series.empty:
        return None, None
    return float(series.mean()), float(series.std(ddof=1)) if len(series) > 1 else None
