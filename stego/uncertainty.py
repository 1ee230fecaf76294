"""How sure each number of an eval record is, from its per-image counts (stego.stats) and the refitted cluster
probes (stego.refits): a bootstrap interval for every metric of every probe, the cluster numbers under the other
matching protocols, and the spread of the cluster probe over seeded restarts.

Every number says which matching protocol produced it: the cluster probes are scored after one-to-one Hungarian
matching on the test set (the paper's protocol, the one the benchmarks compare), the linear probes by identity.
"""
import dataclasses

import numpy as np

from .config import EvalConfig
from .counts import ImageCounts
from .stats import PROBE_PROTOCOL, bootstrap_ci, overclustering_curve, score_protocol

METRICS = ("miou", "accuracy")
CLUSTER_VARIANTS = ("majority", "heldout_hungarian")
"""The protocols the cluster probes are also scored under, beside the paper's Hungarian."""


def probe_kind(probe: str) -> str:
    """'cluster' or 'linear', for a metrics entry such as 'cluster_crf'."""
    return "cluster" if probe.startswith("cluster") else "linear"


def protocol_of(probe: str) -> str:
    """The matching protocol a probe's metrics entry is scored under."""
    return PROBE_PROTOCOL[probe_kind(probe)]


def intervals(counts: dict, settings: EvalConfig) -> dict:
    """{probe: {metric: BootstrapCI as a dict}}: the percentile bootstrap over images, eval.bootstrap_resamples
    resamples from eval.bootstrap_seed, the cluster probes' Hungarian matching refitted on every resample."""
    if not settings.bootstrap_resamples:
        return {}
    return {probe: {metric: dataclasses.asdict(bootstrap_ci(c, metric, probe_kind(probe),
                                                            settings.bootstrap_resamples, settings.bootstrap_seed))
                    for metric in METRICS}
            for probe, c in counts.items()}


def _scores(scored) -> dict:
    return {"miou": scored.miou, "accuracy": scored.accuracy}


def protocols(counts: dict, overclustering: dict, seed: int) -> dict:
    """The cluster probes' numbers under each protocol, {probe: {protocol: {miou, accuracy}}}, and the
    over-clustering curve of the refits with K clusters (majority mapping, without CRF)."""
    out = {}
    for probe, c in counts.items():
        if probe_kind(probe) != "cluster":
            continue
        out[probe] = {"hungarian": _scores(score_protocol(c, "hungarian"))}
        for protocol in CLUSTER_VARIANTS:
            if protocol == "heldout_hungarian" and c.n_images < 2:
                continue
            out[probe][protocol] = _scores(score_protocol(c, protocol, seed))
    if overclustering:
        curve = overclustering_curve(overclustering.items())
        out["overclustering"] = {"protocol": "majority", "probe": "cluster", "ks": curve.ks, "miou": curve.miou,
                                 "accuracy": curve.accuracy}
    return out


def spread(values) -> dict:
    """Median, minimum and maximum of the restarts' scores (fractions), and how many there were."""
    values = np.asarray(values, dtype=np.float64)
    return {"n": int(values.size), "median": float(np.median(values)), "min": float(values.min()),
            "max": float(values.max())}


def cluster_spread(restarts: list, seeds: list, skipped: str | None = None) -> dict | None:
    """Scores of the restarted cluster probes (without CRF, Hungarian): each restart's, and median and range; or
    why they were skipped."""
    if skipped:
        return {"skipped": skipped}
    if not restarts:
        return None
    scored = [score_protocol(confusion, "hungarian") for confusion in restarts]
    values = {metric: [getattr(s, metric) for s in scored] for metric in METRICS}
    return {"probe": "cluster", "protocol": "hungarian", "seeds": list(seeds), **values,
            "summary": {metric: spread(v) for metric, v in values.items()}}


def counts_json(counts: dict) -> dict:
    """Per-image counts by probe as plain JSON."""
    return {probe: c.to_json() for probe, c in counts.items()}


def counts_from_json(data: dict) -> dict:
    """The inverse of counts_json."""
    return {probe: ImageCounts.from_json(c) for probe, c in data.items()}
