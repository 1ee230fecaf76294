"""Correspondence diagnostics, computed at evaluation time and stored as plain data so reports need no model.

- `same_label_pr`: precision–recall of "these two pixels share a label" predicted by the cosine of backbone
  features and by the cosine of codes (paper Fig. 3), with average precision.
- `knn_cooccurrence`: which classes an image's KNN partners hold, given the image's own classes (Fig. 10).
- `five_crop_self_match`: how many of a five-crop crop's neighbours come from its own source image (Fig. 15).
- `analyze_run`: runs them after an evaluation and writes the side files beside the run record:
  `<record stem>_analysis/analysis.json`, `examples/*.png` (image, truth and predictions of the first val
  images) and copies of the training log and code-correlation histograms, so a report reads files only.
"""
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

from .constants import IGNORE
from .data.transforms import unnormalize
from .errors import StegoError
from .inference import batch_code, crf_refine, probe_log_probs
from .io import atomic_save_json, atomic_write, save_png
from .runs import RunDir, analysis_dir
from .runtime import autocast, worker_count

log = logging.getLogger(__name__)

ANALYSIS_FORMAT = 1
PR_IMAGES = 16
"""Validation images whose feature-resolution pixels feed the precision–recall pairs."""
PR_PAIRS = 100_000
CURVE_POINTS = 101
"""Points kept of each precision–recall curve (the AP is computed on the exact curve)."""
EXAMPLES = 4
"""Validation images saved as qualitative examples."""
KNN_QUERIES = 300
"""Training images (or crops) whose KNN partners the co-occurrence matrix reads; bounds label reads."""


def precision_recall(scores, truth) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact precision and recall of `scores >= t` for every distinct score t, highest t first (ties together)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    truth = np.asarray(truth, dtype=bool).ravel()
    if scores.shape != truth.shape or scores.size == 0:
        raise StegoError(f"precision_recall needs as many scores as truths (got {scores.size} and {truth.size})")
    order = np.argsort(-scores, kind="stable")
    scores, truth = scores[order], truth[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tp = np.cumsum(truth)[last].astype(np.float64)
    predicted = last + 1.0
    positives = tp[-1]
    recall = tp / positives if positives else np.full_like(tp, np.nan)
    return tp / predicted, recall, scores[last]


def average_precision(scores, truth) -> float:
    """Σ_k (R_k − R_{k−1}) P_k over the distinct thresholds (the step rule, no interpolation); NaN without
    positives."""
    precision, recall, _ = precision_recall(scores, truth)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def cell_labels(labels: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Labels [B, H, W] read at the centres of an h×w feature grid: pixel floor((i + ½)·H/h) → [B, h, w]."""
    big_h, big_w = labels.shape[-2:]
    rows = ((torch.arange(h, dtype=torch.float64) + 0.5) * big_h / h).floor().long()
    cols = ((torch.arange(w, dtype=torch.float64) + 0.5) * big_w / w).floor().long()
    return labels[:, rows][:, :, cols]


def _pair_cosines(points: torch.Tensor, first: torch.Tensor, second: torch.Tensor, chunk: int = 8192) -> np.ndarray:
    """Cosine of rows `first[k]` and `second[k]` of a [P, C] point table, in chunks (pairs × C never at once)."""
    unit = torch.nn.functional.normalize(points.double(), dim=1, eps=1e-10)
    out = [(unit[first[i:i + chunk]] * unit[second[i:i + chunk]]).sum(1) for i in range(0, len(first), chunk)]
    return torch.cat(out).numpy()


def _curve(precision, recall, points: int) -> dict:
    """At most `points` points of an exact curve, evenly spaced over its thresholds, rounded for JSON."""
    keep = np.unique(np.linspace(0, len(precision) - 1, min(points, len(precision))).round().astype(int))
    return {"precision": [_finite(p) for p in precision[keep]], "recall": [_finite(r) for r in recall[keep]]}


def same_label_pr(feats: torch.Tensor, code: torch.Tensor, labels: torch.Tensor, n_pairs: int = PR_PAIRS,
                  generator: torch.Generator | None = None, points: int = CURVE_POINTS) -> dict:
    """Precision–recall of "same label" from feature cosines and from code cosines over random pixel pairs.

    feats [B, C, h, w] and code [B, D, h, w] share a grid; labels [B, H, W] are read at the grid's cell centres.
    Both points of a pair are drawn uniformly from all labelled cells of all images (so most pairs span two
    images), never the same cell twice. Returns {"features": {ap, precision, recall}, "code": {...},
    "prevalence": share of same-label pairs, "pairs": n_pairs}.
    """
    b, _, h, w = feats.shape
    if code.shape[0] != b or code.shape[-2:] != (h, w) or labels.shape[0] != b:
        raise StegoError(f"same_label_pr: features {tuple(feats.shape)}, code {tuple(code.shape)} and labels "
                         f"{tuple(labels.shape)} must cover the same images and grid")
    cells = cell_labels(labels.cpu(), h, w).reshape(-1)
    valid = torch.nonzero(cells != IGNORE).squeeze(1)
    if len(valid) < 2:
        raise StegoError("same_label_pr: fewer than two labelled pixels in the analysed images; "
                         "check that the validation split has labels")
    first = torch.randint(len(valid), (n_pairs,), generator=generator)
    second = (first + torch.randint(1, len(valid), (n_pairs,), generator=generator)) % len(valid)
    truth = (cells[valid[first]] == cells[valid[second]]).numpy()
    result = {"prevalence": round(float(truth.mean()), 6), "pairs": int(n_pairs)}
    for name, maps in (("features", feats), ("code", code)):
        table = maps.detach().float().cpu().permute(0, 2, 3, 1).reshape(b * h * w, -1)[valid]
        scores = _pair_cosines(table, first, second)
        precision, recall, _ = precision_recall(scores, truth)
        result[name] = {"ap": _finite(average_precision(scores, truth)), **_curve(precision, recall, points)}
    return result


def _finite(x: float):
    """A float for JSON: rounded, None when NaN."""
    return None if np.isnan(x) else round(float(x), 6)


def _indices(table) -> np.ndarray:
    """Neighbour indices [N, k] of a KnnTable, tensor or array."""
    idx = table if isinstance(table, (torch.Tensor, np.ndarray, list)) else table.indices
    return idx.numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)


def knn_cooccurrence(table, histograms, ranks=range(1, 8), rows=None, anchor: str = "pixels",
                     partner: str = "pixels") -> dict:
    """Class co-occurrence between images and their KNN partners at `ranks` (paper Fig. 10).

    histograms [N, C]: labelled-pixel counts per class of every table row (rows never read may be zero: images
    without labelled pixels are left out). For each query image (all, or `rows`), its anchor weights are its
    pixel-class distribution (`anchor="pixels"`) or a one-hot of its dominant class (`"dominant"`); its partner
    profile is the mean over its labelled partners of their pixel-class distribution (`partner="pixels"`) or of
    which classes they contain at all (`"presence"`). matrix[a][b] = Σ_i w_i[a] · profile_i[b] / Σ_i w_i[a]:
    with "pixels" each row is the class distribution of partner pixels given an anchor pixel of class a (rows
    sum to 1); with "presence" it is how often a partner contains class b. Rows with no anchor mass are None.
    `chance` is the same read-out with each profile replaced by the mean profile of the query images
    themselves (what unrelated partners would give); `diagonal` is the anchor-weighted mean of matrix[a][a].
    """
    if anchor not in ("pixels", "dominant") or partner not in ("pixels", "presence"):
        raise StegoError(f"knn_cooccurrence: anchor must be pixels|dominant and partner pixels|presence, "
                         f"got {anchor!r}, {partner!r}")
    idx = _indices(table)
    hist = np.asarray(histograms, dtype=np.float64)
    ranks = [int(r) for r in ranks]
    if hist.ndim != 2 or hist.shape[0] != idx.shape[0]:
        raise StegoError(f"knn_cooccurrence: histograms {hist.shape} must have one row per table row ({idx.shape[0]})")
    if not ranks or min(ranks) < 1 or max(ranks) >= idx.shape[1]:
        raise StegoError(f"knn_cooccurrence: ranks must lie in 1..{idx.shape[1] - 1}, got {ranks}")
    rows = np.arange(idx.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    totals = hist.sum(1, keepdims=True)
    dist = np.divide(hist, totals, out=np.zeros_like(hist), where=totals > 0)
    profile_of = dist if partner == "pixels" else (hist > 0).astype(np.float64)
    labelled = totals[:, 0] > 0
    partners = idx[rows][:, ranks]
    n_labelled = labelled[partners].sum(1)
    profile = (profile_of[partners] * labelled[partners][..., None]).sum(1)
    profile = np.divide(profile, n_labelled[:, None], out=np.zeros_like(profile), where=n_labelled[:, None] > 0)
    used = labelled[rows] & (n_labelled > 0)
    weights = dist[rows] if anchor == "pixels" else np.eye(hist.shape[1])[hist[rows].argmax(1)]
    weights = weights * used[:, None]
    mass = weights.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = (weights.T @ profile) / mass[:, None]
    prior = profile_of[rows[labelled[rows]]].mean(0) if labelled[rows].any() else np.zeros(hist.shape[1])
    total = mass.sum()
    diagonal = float(np.nansum(np.diag(matrix) * mass) / total) if total else float("nan")
    chance = float((prior * mass).sum() / total) if total else float("nan")
    return {"matrix": [[_finite(v) for v in row] for row in matrix], "anchor_mass": [round(float(m), 6) for m in mass],
            "queries": int(used.sum()), "ranks": ranks, "anchor": anchor, "partner": partner,
            "diagonal": _finite(diagonal), "chance": _finite(chance)}


def five_crop_self_match(table, k: int = 7, crops: int = 5) -> dict:
    """For every crop (row 5i+c belongs to image i), how many of its neighbours at ranks 1..k are crops of the
    same image (paper Fig. 15): histogram of that count, share per rank, and the share chance would give."""
    idx = _indices(table)
    n = idx.shape[0]
    if n % crops or n < crops:
        raise StegoError(f"five_crop_self_match: the table has {n} rows, not a multiple of {crops}; "
                         "it was not mined over five-crops (data.crop=five)")
    if not 1 <= k < idx.shape[1]:
        raise StegoError(f"five_crop_self_match: k={k} must be in 1..{idx.shape[1] - 1}")
    same = (idx[:, 1:k + 1] // crops) == (np.arange(n) // crops)[:, None]
    count = same.sum(1)
    return {"k": k, "crops": crops, "n": n,
            "histogram": np.bincount(count, minlength=min(k, crops - 1) + 1).tolist(),
            "per_rank": [round(float(v), 6) for v in same.mean(0)],
            "mean": round(float(count.mean()), 6), "chance_per_rank": round((crops - 1) / (n - 1), 6)}


def label_histograms(dataset, items, n_classes: int, batch_size: int = 32, workers: int = 0) -> np.ndarray:
    """Labelled-pixel counts per class [len(items), n_classes] of dataset items (as the transform yields them)."""
    loader = DataLoader(Subset(dataset, list(items)), batch_size=batch_size, num_workers=workers)
    out = []
    for batch in loader:
        for label in batch["label"]:
            label = label[label != IGNORE]
            out.append(torch.bincount(label, minlength=n_classes)[:n_classes].numpy())
    return np.stack(out) if out else np.zeros((0, n_classes), dtype=np.int64)


def _label_png(label: np.ndarray) -> np.ndarray:
    """Label map (IGNORE = -1) stored as label + 1, 0 = ignore; uint8 when it fits, else uint16."""
    stored = label.astype(np.int64) + 1
    return stored.astype(np.uint8 if stored.max(initial=0) < 256 else np.uint16)


def read_example_png(path) -> np.ndarray:
    """A label map written by `analyze_run` (label + 1) back as int64 with IGNORE = -1."""
    with Image.open(path) as im:
        return np.asarray(im).astype(np.int64) - 1


def cluster_to_class(match, n_clusters: int, n_classes: int) -> np.ndarray:
    """Lookup cluster → class from a Hungarian `match` (class → cluster); unmatched clusters get n_classes, …"""
    lut = np.full(n_clusters, -1, dtype=np.int64)
    for cls, cluster in enumerate(match):
        if cluster >= 0:
            lut[cluster] = cls
    spare = np.flatnonzero(lut < 0)
    lut[spare] = n_classes + np.arange(len(spare))
    return lut


def _write_examples(model, backbone, dataset, metrics, out: Path, crf: bool, batch_size: int, precision: str) -> list:
    """Image, truth and predictions (cluster mapped to classes, linear, with CRF if on) of the first images."""
    n_clusters = model.cluster_probe.clusters.shape[0]

    def lut(probe):  # cluster → class under that probe's own Hungarian match
        return torch.from_numpy(cluster_to_class(metrics[probe]["match"], n_clusters, model.n_classes))
    device = next(model.parameters()).device
    examples = []
    loader = DataLoader(Subset(dataset, range(min(EXAMPLES, len(dataset)))), batch_size=batch_size)
    for batch in loader:
        images, labels = batch["img"], batch["label"]
        cluster_lp, linear_lp = probe_log_probs(model, batch_code(model, backbone, batch, labels.shape[-2:], precision,
                                                                  device))
        maps = {"truth": labels, "cluster": lut("cluster")[cluster_lp.argmax(1).cpu()],
                "linear": linear_lp.argmax(1).cpu()}
        if crf:
            maps["cluster_crf"] = lut("cluster_crf")[crf_refine(images, cluster_lp).argmax(1)]
            maps["linear_crf"] = crf_refine(images, linear_lp).argmax(1)
        rgb = (unnormalize(batch["img"]).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        for i in range(len(images)):
            k = len(examples)
            entry = {"image": f"examples/{k:03d}_image.png"}
            save_png(rgb[i], out / entry["image"])
            for name, values in maps.items():
                entry[name] = f"examples/{k:03d}_{name}.png"
                save_png(_label_png(values[i].numpy()), out / entry[name])
            examples.append(entry)
    return examples


@torch.no_grad()
def _pr_analysis(model, backbone, dataset, batch_size: int, precision: str) -> dict:
    """`same_label_pr` over the first PR_IMAGES validation images (head code without flip TTA)."""
    device = next(model.parameters()).device
    feats, codes, labels = [], [], []
    for batch in DataLoader(Subset(dataset, range(min(PR_IMAGES, len(dataset)))), batch_size=batch_size):
        if backbone is None:  # stored views (CachedViews): the image's own, not its flip's
            f = batch["feats"][:, 0].to(device)
        else:
            with autocast(device, precision):
                f = backbone(batch["img"].to(device)).float()
        feats.append(f.cpu())
        codes.append(model.head(f)[1].float().cpu())
        labels.append(batch["label"])
    return same_label_pr(torch.cat(feats), torch.cat(codes), torch.cat(labels),
                         generator=torch.Generator().manual_seed(0))


def _knn_analyses(cfg, n_classes: int) -> dict:
    """KNN co-occurrence and (five-crop) self-match from the training split's table; a missing table or data
    set is recorded as the reason they were skipped, not an error (the evaluation itself stands)."""
    from . import build
    from .data.knn import KnnTable, source_fingerprint, table_expect

    spec = build.knn_spec(cfg)
    path = spec.path
    ranks = range(1, cfg.data.num_neighbors + 1)
    try:
        dataset = build.train_dataset(cfg)
        expect = table_expect(spec.meta(), len(dataset), source_fingerprint(dataset))
        table = KnnTable.load(path, expect, cfg.data.num_neighbors + 1, cfg.data.root)
    except (StegoError, OSError) as err:
        reason = str(err).splitlines()[0]
        log.info("KNN analyses skipped: %s", reason)
        return {"knn_cooccurrence": {"skipped": reason}, "five_crop_self_match": {"skipped": reason}}
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(table.n, min(KNN_QUERIES, table.n), replace=False))
    needed = np.unique(np.r_[rows, table.indices.numpy()[rows][:, list(ranks)].ravel()])
    histograms = np.zeros((table.n, n_classes), dtype=np.float64)
    histograms[needed] = label_histograms(dataset, needed.tolist(), n_classes, workers=worker_count(cfg.data.workers))
    out = {"knn_cooccurrence": {**knn_cooccurrence(table, histograms, ranks, rows), "table": str(path)}}
    if cfg.data.crop == "five":
        out["five_crop_self_match"] = five_crop_self_match(table, k=max(ranks))
    else:
        out["five_crop_self_match"] = {"skipped": "the run trained on whole images (data.crop=none)"}
    return out


def analyze_run(model, backbone, dataset, cfg, metrics: dict, record_path, checkpoint=None, crf: bool = False) -> dict:
    """Compute the diagnostics of an evaluated model and write them beside `record_path`; returns the record's
    "analysis" section (paths relative to the record's folder, and the two average precisions). backbone None:
    `dataset` holds stored views with their images (stego.data.features.CachedViews)."""
    out = analysis_dir(record_path)
    model.eval()
    analysis = {"format": ANALYSIS_FORMAT, "n_classes": model.n_classes,
                "class_names": list(getattr(dataset, "class_names", None) or []) or None,
                "settings": {"pr_images": PR_IMAGES, "pr_pairs": PR_PAIRS, "examples": EXAMPLES,
                             "knn_queries": KNN_QUERIES},
                "pr": _pr_analysis(model, backbone, dataset, cfg.eval.batch_size, cfg.train.precision),
                "examples": _write_examples(model, backbone, dataset, metrics, out, crf, cfg.eval.batch_size,
                                            cfg.train.precision),
                **_knn_analyses(cfg, model.n_classes)}
    run = RunDir(Path(checkpoint).parent) if checkpoint is not None else None
    for key, source in (("train_log", run and run.log), ("code_corr_hist", run and run.histograms)):
        if source is not None and source.is_file():
            with atomic_write(out / source.name, "wb") as f, open(source, "rb") as src:
                shutil.copyfileobj(src, f)
        analysis[key] = source.name if source is not None and source.is_file() else None
    atomic_save_json(analysis, out / "analysis.json")
    log.info("analysis: same-label AP features %s, code %s → %s", analysis["pr"]["features"]["ap"],
             analysis["pr"]["code"]["ap"], out)
    return {"data": f"{out.name}/analysis.json", "ap_features": analysis["pr"]["features"]["ap"],
            "ap_code": analysis["pr"]["code"]["ap"]}
