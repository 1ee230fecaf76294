"""Pictures people would rather look at: label colours, overlays, qualitative grids, training balance curves, and the
reports' figures (PR curves, confusion matrices, KNN co-occurrence, code-correlation histograms, five-crop self-match)."""
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .analysis import cluster_to_class  # noqa: E402
from .io import atomic_write  # noqa: E402


def palette(n: int) -> np.ndarray:
    """n distinct RGB colours (uint8 [n, 3]) from matplotlib's qualitative maps; ignore is drawn black."""
    colours = np.concatenate([plt.get_cmap(name).colors for name in ("tab20", "tab20b", "tab20c")])
    reps = int(np.ceil(n / len(colours)))
    return (np.tile(colours, (reps, 1))[:n, :3] * 255).astype(np.uint8)


def colourize(label: np.ndarray, n: int) -> np.ndarray:
    """An integer label map [H, W] (negative = ignore) as an RGB image."""
    out = np.zeros((*label.shape, 3), dtype=np.uint8)
    valid = label >= 0
    out[valid] = palette(n)[label[valid]]
    return out


def overlay(image: np.ndarray, label: np.ndarray, n: int, alpha: float = 0.5) -> np.ndarray:
    """Label colours blended over an RGB uint8 image."""
    return (image * (1 - alpha) + colourize(label, n) * alpha).astype(np.uint8)


HIST_CURVES = 6
"""Training iterations drawn per code-correlation histogram panel (evenly spaced, first and last included)."""


def save_figure(fig, path) -> None:
    """Save a matplotlib figure as PNG (fixed dpi, no software stamp: the same figure gives the same bytes),
    atomically, and close it."""
    with atomic_write(path, "wb", durable=False) as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def qualitative_grid(rows: list[dict], n_classes: int, path, columns=("image", "truth", "cluster", "cluster_crf",
                                                                       "linear")) -> None:
    """One row per image; columns are RGB images or label maps (keys of each row dict), missing ones skipped."""
    columns = [c for c in columns if any(c in r for r in rows)]
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(1.8 * len(columns), 1.8 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        for j, col in enumerate(columns):
            ax = axes[i, j]
            value = row.get(col)
            if value is not None:
                ax.imshow(value if value.ndim == 3 else colourize(value, n_classes), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(col.replace("_", " + ").replace("crf", "CRF"), fontsize=9)
    save_figure(fig, path)


def training_curves(log_csv, path) -> None:
    """Loss terms and mean code correlations (self / KNN / random) over iterations: the balance read-out.

    Runs with nothing to distil (raw-feature baselines) log only the probe losses; their panels say so.
    """
    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    panels = ((ax1, "loss terms", ("loss", "loss_self", "loss_knn", "loss_rand", "linear_loss", "cluster_loss")),
              (ax2, "mean code correlation", ("corr_self", "corr_knn", "corr_rand")))
    for ax, title, keys in panels:
        for key in keys:
            points = [(int(r["iteration"]), float(r[key])) for r in rows if r.get(key)]
            if points:
                ax.plot(*zip(*points), label=key.replace("corr_", ""))
        if ax.get_lines():
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no correspondence loss in this run", ha="center", va="center", fontsize=8)
        ax.set_xlabel("iteration")
        ax.set_title(title)
    ax2.axhline(0, color="grey", lw=0.5)
    save_figure(fig, Path(path))


def _floats(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def pr_figure(pr: dict, path: Path) -> None:
    """Same-label precision–recall from feature and code cosines (paper Fig. 3)."""
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    for name in ("features", "code"):
        curve = pr[name]
        ap = f" (AP {curve['ap']:.3f})" if curve.get("ap") is not None else ""
        ax.plot(_floats(curve["recall"]), _floats(curve["precision"]), label=f"{name}{ap}")
    ax.axhline(pr["prevalence"], color="grey", ls="--", lw=0.8, label=f"chance ({pr['prevalence']:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="same label from cosine")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def _heatmap(ax, matrix: np.ndarray, xlabels, ylabels, title: str, vmax: float = 1.0) -> None:
    image = ax.imshow(matrix, vmin=0, vmax=vmax, cmap="viridis", interpolation="nearest")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    size = 8 if max(matrix.shape) <= 10 else 5
    ax.set_xticks(range(matrix.shape[1]), xlabels, rotation=90, fontsize=size)
    ax.set_yticks(range(matrix.shape[0]), ylabels, fontsize=size)
    ax.set_title(title, fontsize=9)
    if max(matrix.shape) <= 10:
        for (i, j), v in np.ndenumerate(matrix):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if v < 0.5 * vmax else "black")


def _row_normalised(matrix: np.ndarray) -> np.ndarray:
    total = matrix.sum(1, keepdims=True)
    return np.divide(matrix, total, out=np.full_like(matrix, np.nan), where=total > 0)


def confusion_figure(metrics: dict, probes, names, path: Path, titles: dict | None = None) -> None:
    """Confusion matrices (truth rows, prediction columns, each row normalised); clusters put in the order of
    the classes they were matched to, unmatched ones last (paper Figs. 6, 11, 12). titles: probe -> panel title."""
    titles = titles or {}
    probes = [p for p in probes if p in metrics]
    fig, axes = plt.subplots(1, len(probes), figsize=(5.2 * len(probes), 4.6), squeeze=False, layout="constrained")
    for ax, probe in zip(axes[0], probes):
        counts = np.asarray(metrics[probe]["confusion"], dtype=np.float64)
        n_pred, n_classes = counts.shape
        lut = cluster_to_class(metrics[probe]["match"], n_pred, n_classes) if probe.startswith("cluster") \
            else np.arange(n_pred)
        order = np.argsort(lut, kind="stable")
        xlabels = [names[c] if c < n_classes else f"extra {c - n_classes}" for c in lut[order]]
        _heatmap(ax, _row_normalised(counts[order].T), xlabels, names, titles.get(probe, probe))
        ax.set_xlabel("prediction", fontsize=8)
        ax.set_ylabel("truth", fontsize=8)
    save_figure(fig, path)


def cooccurrence_figure(knn: dict, names, path: Path) -> None:
    """KNN label co-occurrence: anchor class rows, partner class columns (paper Fig. 10)."""
    matrix = np.array([_floats(row) for row in knn["matrix"]])
    names = names if len(names) == len(matrix) else [str(i) for i in range(len(matrix))]
    fig, ax = plt.subplots(figsize=(5.2, 4.6), layout="constrained")
    ranks = knn["ranks"]
    title = f"KNN ranks {ranks[0]}–{ranks[-1]}, {knn['partner']}"
    peak = np.nanmax(matrix) if np.isfinite(matrix).any() else 1.0
    _heatmap(ax, matrix, names, names, title, vmax=max(float(peak), 1e-6))
    ax.set_xlabel("partner class", fontsize=8)
    ax.set_ylabel("anchor class", fontsize=8)
    save_figure(fig, path)


def histogram_figure(histograms: list, path: Path) -> None:
    """Sampled code correlations of the self, KNN and random terms at a few training iterations (Fig. 14)."""
    histograms = sorted(histograms, key=lambda h: h["iteration"])
    picks = sorted(set(np.linspace(0, len(histograms) - 1, min(HIST_CURVES, len(histograms))).round().astype(int)))
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(picks)))
    fig, axes = plt.subplots(1, 3, figsize=(10, 3), sharey=True)
    for ax, term, title in zip(axes, ("self", "knn", "rand"), ("self", "KNN", "random")):
        for colour, k in zip(colours, picks):
            h = histograms[k]
            counts = np.asarray(h[term], dtype=np.float64)
            edges = np.linspace(-1, 1, h["bins"] + 1)
            share = counts / counts.sum() if counts.sum() else counts
            ax.step((edges[:-1] + edges[1:]) / 2, share, where="mid", color=colour, label=f"it {h['iteration']}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("code correlation", fontsize=8)
    axes[0].set_ylabel("share of samples", fontsize=8)
    axes[-1].legend(fontsize=7)
    save_figure(fig, path)


def self_match_figure(match: dict, path: Path) -> None:
    """How many of each crop's KNN (ranks 1..k) are crops of its own image, and the share per rank (Fig. 15)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
    hist = np.asarray(match["histogram"], dtype=np.float64)
    ax1.bar(range(len(hist)), hist / hist.sum(), color="tab:blue")
    ax1.set(xlabel=f"own-image crops among ranks 1–{match['k']}", ylabel="share of crops",
            title=f"mean {match['mean']:.2f}")
    ranks = np.arange(1, len(match["per_rank"]) + 1)
    ax2.plot(ranks, match["per_rank"], marker="o", label="own image")
    if match.get("chance_per_rank") is not None:
        ax2.axhline(match["chance_per_rank"], color="grey", ls="--", lw=0.8, label="chance")
    ax2.set(xlabel="rank", ylabel="share from own image", ylim=(0, 1.02))
    ax2.legend(fontsize=7)
    save_figure(fig, path)
