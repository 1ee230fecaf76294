"""Tables of a report, built with pandas: the runs become one tidy frame (a row per run and number), seeds are
grouped (mean ± sample std, n − 1, with a Student t interval), one seed shows its recorded bootstrap interval over
images, and one pivot per table is written as markdown and as CSV beside it. Verdicts (within the paper's
tolerance or not, by the number and by its interval) are the ones the runner recorded, never recomputed here."""
import math
from pathlib import Path

import pandas as pd

from stego.io import atomic_write
from stego.records import TABLE_METRICS
from stego.stats import t_interval

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


def probe_interval(run, probe: str, stat: str):
    """(lower, upper) in percent of the record's bootstrap interval of one probe's metric, or None."""
    ci = ((getattr(run.record, "intervals", None) or {}).get(probe) or {}).get(stat) or {}
    lower, upper = _number(ci.get("lower")), _number(ci.get("upper"))
    return None if lower is None or upper is None else (100 * lower, 100 * upper)


def _column(key: str) -> tuple[str, str]:
    """('cluster' | 'linear', 'accuracy' | 'miou') of a table column such as cluster_acc."""
    probe, _, what = key.partition("_")
    return probe, "accuracy" if what == "acc" else "miou"


def measured(run, key: str):
    """The run's number (percent) for a table column such as cluster_miou: the one its record gives."""
    if run.benchmark:
        return _number((run.record.measured_values or {}).get(key))
    probe, stat = _column(key)
    return probe_value(run, run.measured_probe(probe), stat)


def tidy(rows, many_scales: bool) -> pd.DataFrame:
    """One line per (row, run, table column): paper number, measured number and its interval, the recorded
    verdicts."""
    lines = []
    for position, row in enumerate(rows):
        for run in row.runs:
            comparison = run.record.comparison if run.benchmark else {}
            paper = run.record.paper if run.benchmark else {}
            for key in TABLE_METRICS:
                probe, stat = _column(key)
                ci = probe_interval(run, run.measured_probe(probe), stat) or (None, None)
                recorded = comparison.get(key) or {}
                lines.append({"position": position, "row": row.label(many_scales), "seed": run.seed, "key": key,
                              "paper": _number(paper.get(key)), "measured": measured(run, key), "lower": ci[0],
                              "upper": ci[1], "within": recorded.get("within"),
                              "ci_verdict": recorded.get("ci_verdict")})
    return pd.DataFrame(lines, columns=["position", "row", "seed", "key", "paper", "measured", "lower", "upper",
                                        "within", "ci_verdict"])


def fmt(mean, std=None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    return f"{mean:.1f}" if std is None or math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def fmt_interval(value, interval) -> str:
    """'77.7 [73.4, 82.4]': a number with its interval (just the number without one)."""
    text = fmt(value)
    if text == "—" or interval is None or any(v is None or math.isnan(v) for v in interval):
        return text
    return f"{text} [{interval[0]:.1f}, {interval[1]:.1f}]"


def fmt_seeds(values) -> str:
    """One seed: the value; several: mean ± sample std and the 95% Student t interval over seeds."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if len(values) < 2:
        return fmt(values[0] if values else None)
    t = t_interval(values)
    return f"{t.mean:.1f} ± {t.std:.1f}, t [{t.lower:.1f}, {t.upper:.1f}]"


def _delta(delta) -> str:
    return "—" if delta is None or math.isnan(delta) else f"{round(delta, 1) or 0.0:+.1f}"


def _known(values: pd.Series) -> list:
    return [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def _verdict(within: pd.Series) -> str:
    """✓ when every recorded verdict is within, ✗ when none is, 'k/n ✓' otherwise; '' without verdicts."""
    known = _known(within)
    if not known:
        return ""
    hits = sum(bool(w) for w in known)
    return " ✓" if hits == len(known) else " ✗" if not hits else f" {hits}/{len(known)} ✓"


def _ci_verdict(verdicts: pd.Series) -> str:
    """The recorded interval verdicts: ' (CI within)' when all seeds agree, else each with its share of seeds."""
    known = _known(verdicts)
    if not known:
        return ""
    if len(set(known)) == 1:
        return f" (CI {known[0]})"
    return " (CI " + ", ".join(f"{v} {known.count(v)}/{len(known)}" for v in sorted(set(known))) + ")"


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
            delta = None if paper is None or mean is None else mean - paper
            single = len(cells) == 1 and mean is not None
            shown = fmt_interval(mean, (cells.lower.iloc[0], cells.upper.iloc[0])) if single else fmt_seeds(values)
            line[f"{KEY_NAMES[key]} paper"] = fmt(paper)
            line[f"{KEY_NAMES[key]} measured"] = shown
            line[f"{KEY_NAMES[key]} Δ"] = _delta(delta) + _verdict(cells.within) + _ci_verdict(cells.ci_verdict)
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
                values = [probe_value(run, probe, stat) for run in row.runs]
                line[f"{PROBE_NAMES[probe]} {name}"] = fmt_interval(values[0], probe_interval(row.first, probe, stat)) \
                    if len(values) == 1 else fmt_seeds(values)
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


PROTOCOL_NAMES = {"hungarian": "Hungarian (paper)", "majority": "Majority", "heldout_hungarian": "Held-out Hungarian"}


def _pct(value) -> str:
    value = _number(value)
    return fmt(None if value is None else 100 * value)


def protocols_table(rows, many_scales: bool) -> pd.DataFrame:
    """The measured cluster probe's mIoU / accuracy under each matching protocol, and the over-clustering curve
    (K: mIoU, majority mapping, without CRF), from each row's lowest seed; rows without protocols are left out."""
    out = []
    for row in rows:
        run = row.first
        scored = getattr(run.record, "protocols", None) or {}
        probe = run.measured_probe("cluster")
        if probe not in scored:
            continue
        line = {"Row": row.label(many_scales), "Seed": run.seed, "Probe": PROBE_NAMES.get(probe, probe)}
        for protocol, name in PROTOCOL_NAMES.items():
            values = scored[probe].get(protocol) or {}
            line[f"{name} mIoU / Acc"] = f"{_pct(values.get('miou'))} / {_pct(values.get('accuracy'))}"
        curve = scored.get("overclustering")
        line["Over-clustering K: mIoU"] = ", ".join(f"{k}: {_pct(v)}" for k, v in zip(curve["ks"], curve["miou"])) \
            if curve else "—"
        out.append(line)
    return pd.DataFrame(out)


def spread_table(rows, many_scales: bool) -> pd.DataFrame:
    """The cluster probe refitted from seeded restarts (without CRF, Hungarian): median and range of its mIoU and
    accuracy beside the trained probe's, from each row's lowest seed; rows without restarts are left out."""
    out = []
    for row in rows:
        run = row.first
        spread = getattr(run.record, "cluster_spread", None)
        if not spread:
            continue
        line = {"Row": row.label(many_scales), "Seed": run.seed,
                "Restarts": f"skipped: {spread['skipped']}" if "skipped" in spread else spread["summary"]["miou"]["n"]}
        for stat, name in STATS.items():
            summary = spread.get("summary", {}).get(stat) or {"median": None, "min": None, "max": None}
            line[f"Trained {name}"] = fmt(probe_value(run, "cluster", stat))
            line[f"Restarts {name}: median [min, max]"] = (f"{_pct(summary['median'])} [{_pct(summary['min'])}, "
                                                           f"{_pct(summary['max'])}]")
        out.append(line)
    return pd.DataFrame(out)
