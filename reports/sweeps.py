"""The dimension-sweep figure: cluster mIoU of the PCA and random-projection baselines against their dimension,
the raw features as a line, STEGO marked at its code dimension; one panel per preset (dataset). Drawn from the
records' configs (model.projection, model.dim) and measured numbers alone."""
from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from stego.figures import save_figure

from .tables import KEY_NAMES, measured

CURVES = {"pca": ("PCA", "o-"), "random": ("random projection", "s--")}


def sweep_points(rows, key: str = "cluster_miou") -> dict:
    """{preset: {'pca' | 'random': [(dim, mean)], 'raw': mean, 'stego': (dim, mean)}} from a table's rows (means
    over seeds; cited rows and rows without a number are left out)."""
    out = defaultdict(lambda: {"pca": [], "random": []})
    for row in rows:
        run = row.first
        values = [v for v in (measured(r, key) for r in row.runs) if v is not None]
        model = run.config.get("model") or {}
        if run.cited or not values or not run.benchmark or "projection" not in model:
            continue
        mean = float(np.mean(values))
        panel = out[run.record.preset]
        if model["projection"] in CURVES:
            panel[model["projection"]].append((model["dim"], mean))
        elif model["projection"] == "none":
            panel["raw"] = mean
        else:
            panel["stego"] = (model["dim"], mean)
    for panel in out.values():
        for kind in CURVES:
            panel[kind].sort()
    return dict(out)


def dimension_figure(rows, path: Path, key: str = "cluster_miou") -> bool:
    """Draw the sweep of `rows` to `path`; False (nothing drawn) when no row has a reduced-feature number."""
    points = sweep_points(rows, key)
    panels = [p for p in points if any(points[p][k] for k in CURVES)]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, preset in zip(axes[0], panels):
        panel = points[preset]
        for kind, (label, style) in CURVES.items():
            if panel[kind]:
                dims, values = zip(*panel[kind])
                ax.plot(dims, values, style, label=label, markersize=4)
        if "raw" in panel:
            ax.axhline(panel["raw"], color="grey", linestyle=":", label="raw features")
        if "stego" in panel:
            ax.plot(*panel["stego"], "r*", markersize=13, label="STEGO")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("dimension")
        ax.set_ylabel(f"{KEY_NAMES[key]} (%)")
        ax.set_title(preset, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    save_figure(fig, path)
    return True
