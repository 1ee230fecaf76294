"""Ablation rows against their table's reference row, as a table and a forest plot: each table number's paired
difference with its 95% bootstrap interval over the validation images (benchmarks.compare, seeded: the same
records give the same intervals), the paper's difference, and whether the measured interval has the paper's sign."""
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from benchmarks.compare import ablation_differences
from benchmarks.registry import REFERENCE
from stego.figures import save_figure

from .tables import KEY_NAMES

SIGN = {"agrees": "agrees", "opposite": "opposite", "inconclusive": "CI holds 0", None: "no paper sign"}


def _cell(d) -> str:
    paper = "—" if d.paper is None else f"{d.paper:+.1f}"
    return f"{d.point:+.1f} [{d.lower:+.1f}, {d.upper:+.1f}]; paper {paper}; {SIGN[d.agreement]}"


def differences_table(differences) -> pd.DataFrame:
    """One line per (row, scale, seed): measured difference [95% CI]; the paper's; the sign verdict, per number."""
    lines, index = [], {}
    for d in differences:
        key = (d.row, d.scale, d.seed)
        if key not in index:
            index[key] = len(lines)
            lines.append({"Row": d.row, "Scale": d.scale, "Seed": d.seed})
        lines[index[key]][f"{KEY_NAMES[d.metric]} Δ"] = _cell(d)
    return pd.DataFrame(lines).fillna("—")


def forest_figure(differences, path: Path) -> None:
    """A panel per table number: each row's difference from the reference with its 95% interval (one marker per
    seed and scale), the paper's difference as a red diamond, zero as a grey line."""
    metrics = [m for m in KEY_NAMES if any(d.metric == m for d in differences)]
    rows = list(dict.fromkeys(d.row for d in differences))
    runs = list(dict.fromkeys((d.scale, d.seed) for d in differences))
    offsets = np.linspace(-0.2, 0.2, len(runs)) if len(runs) > 1 else [0.0]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics) + 1.6, 0.45 * len(rows) + 1.4),
                             sharey=True, squeeze=False, layout="constrained")
    colours = plt.get_cmap("tab10")(np.arange(len(runs)) % 10)
    for ax, metric in zip(axes[0], metrics):
        for d in (d for d in differences if d.metric == metric):
            k = runs.index((d.scale, d.seed))
            y = rows.index(d.row) + offsets[k]
            ax.errorbar(d.point, y, xerr=[[d.point - d.lower], [d.upper - d.point]], fmt="o", ms=4, capsize=2,
                        color=colours[k], label=f"{d.scale} seed {d.seed}")
            if d.paper is not None:
                ax.plot(d.paper, rows.index(d.row), "D", mfc="none", mec="tab:red", ms=6, label="paper")
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_title(f"{KEY_NAMES[metric]} Δ", fontsize=9)
        ax.set_xlabel("row − reference (points)", fontsize=8)
    axes[0][0].set_yticks(range(len(rows)), rows, fontsize=8)
    axes[0][0].invert_yaxis()
    handles, labels = axes[0][-1].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axes[0][-1].legend(unique.values(), unique.keys(), fontsize=7, loc="best")
    save_figure(fig, path)


def ablation_section(runs, folder: Path, image_link) -> tuple[list[str], pd.DataFrame | None]:
    """(markdown lines, table) of the page's ablations; nothing for a table without a reference row."""
    differences = ablation_differences([(run.path, run.record) for run in runs if run.benchmark])
    if not differences:
        return [], None
    table = differences_table(differences)
    forest_figure(differences, folder / "forest.png")
    reference = REFERENCE[differences[0].table]
    first = differences[0]
    lines = [f"## Ablations against '{reference}'", "",
             f"Each row minus '{reference}', paired on the same validation images: Δ = measured(row) − "
             f"measured('{reference}') in points, [95% percentile bootstrap interval over images, "
             f"{first.n_resamples} resamples from seed {first.seed_bootstrap}, the cluster probes' Hungarian matching "
             "refitted in each]. 'agrees': the interval excludes 0 on the paper's side; 'opposite': on the other "
             "side; 'CI holds 0': no sign can be read. The interval covers which images were drawn, not the "
             "training seed or the cluster probe's init (see the restarts below).", ""]
    return lines + [image_link(folder / "forest.png", "forest plot of the ablations"), ""], table
