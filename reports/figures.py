"""The reports' figures, drawn from what records and their analysis files hold (no model): same-label
precision-recall (paper Fig. 3), confusion matrices (Figs. 6, 11, 12), KNN label co-occurrence (Fig. 10),
code-correlation histograms (Fig. 14), five-crop self-match (Fig. 15), training curves and qualitative examples."""
import json
import os
from pathlib import Path
from urllib.parse import quote

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from stego.analysis import cluster_to_class, read_example_png
from stego.build import class_names as config_class_names
from stego.config import from_dict
from stego.errors import MissingFileError
from stego.figures import qualitative_grid, save_figure, training_curves

from .tables import PROBE_NAMES

HIST_CURVES = 6
"""Training iterations drawn per code-correlation histogram panel (evenly spaced, first and last included)."""
EXAMPLE_COLUMNS = ("image", "truth", "cluster", "cluster_crf", "linear", "linear_crf")


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


def overclustering_figure(curves: dict, path: Path) -> None:
    """mIoU against the number of clusters K of each row's refitted cluster probes, many-to-one (majority) mapped:
    the over-clustering curves, K from the number of classes to three times it. curves: label -> record section."""
    fig, ax = plt.subplots(figsize=(5.6, 3.6), layout="constrained")
    for label, curve in curves.items():
        ax.plot(curve["ks"], 100 * _floats(curve["miou"]), marker="o", ms=3, label=label)
    ax.set(xlabel="clusters K", ylabel="mIoU (majority mapping, %)", title="over-clustering")
    ax.legend(fontsize=6, loc="best")
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
                row[column] = read_example_png(file)
        rows.append(row)
    n = max([n_classes] + [int(v.max()) + 1 for r in rows for k, v in r.items() if k != "image"])
    qualitative_grid(rows, n, path, columns=EXAMPLE_COLUMNS)


def load_analysis(run):
    """(analysis dict, its folder) from the record's "analysis" section, or (None, None) without one."""
    section = run.record.analysis
    if not section:
        return None, None
    path = run.path.parent / section["data"]
    if not path.is_file():
        raise MissingFileError(f"{run.path}: its analysis file {path} is missing; re-run the evaluation of this "
                               "run, or copy the analysis folder beside the record")
    return json.loads(path.read_text()), path.parent


def class_names(run, analysis, n: int) -> list:
    """Class names from the analysis, else from the run's config (its dataset reader), else numbers."""
    names = (analysis or {}).get("class_names")
    if names and len(names) == n:
        return list(names)
    return config_class_names(from_dict(run.config, str(run.path)), n) if run.config else [str(i) for i in range(n)]


def _code_hist(run, analysis, folder):
    """Code-correlation histograms: the analysis copy, else the benchmark's train_dir."""
    if analysis and analysis.get("code_corr_hist"):
        return json.loads((folder / analysis["code_corr_hist"]).read_text())
    train_dir = getattr(run.record, "train_dir", None)
    path = run.path.parent / train_dir / "code_corr_hist.json" if train_dir else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def _fmt3(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def run_figures(run, fig_dir: Path, page_dir: Path) -> list[str]:
    """Markdown lines with the figures of one run (written into fig_dir)."""
    analysis, folder = load_analysis(run)
    lines = []

    def image(name, alt):
        return f"![{alt}]({quote(Path(os.path.relpath(fig_dir / name, page_dir)).as_posix())})"

    probes = [run.measured_probe("cluster"), run.measured_probe("linear")]
    probes = [p for p in probes if "confusion" in (run.metrics.get(p) or {})]
    n_classes = len(run.metrics[probes[0]]["confusion"][0]) if probes else 0
    names = class_names(run, analysis, n_classes)
    if analysis and analysis.get("pr"):
        pr = analysis["pr"]
        pr_figure(pr, fig_dir / "pr.png")
        ap = {k: _fmt3(pr[k]["ap"]) for k in ("features", "code")}
        lines += [f"**Same label from cosine (Fig. 3).** AP features {ap['features']}, code {ap['code']}; "
                  f"{pr['pairs']} pixel pairs, {100 * pr['prevalence']:.1f}% same label.", "",
                  image("pr.png", "same-label precision-recall"), ""]
    if probes:
        confusion_figure(run.metrics, probes, names, fig_dir / "confusion.png", PROBE_NAMES)
        lines += [f"**Confusion matrices (Figs. 6, 11, 12)** of {', '.join(PROBE_NAMES.get(p, p) for p in probes)}, "
                  "rows normalised over truth.", "", image("confusion.png", "confusion matrices"), ""]
    for key, title in (("knn_cooccurrence", "KNN label co-occurrence (Fig. 10)"),
                       ("five_crop_self_match", "Five-crop self-match (Fig. 15)")):
        part = (analysis or {}).get(key)
        if not part:
            continue
        if "skipped" in part:
            lines += [f"**{title}:** not computed ({part['skipped']}).", ""]
            continue
        if key == "knn_cooccurrence":
            cooccurrence_figure(part, names, fig_dir / f"{key}.png")
            summary = (f"anchor-weighted diagonal {_fmt3(part['diagonal'])} vs chance {_fmt3(part['chance'])}, "
                       f"{part['queries']} query images")
        else:
            self_match_figure(part, fig_dir / f"{key}.png")
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
