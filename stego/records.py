"""Every record the suite writes, one schema each with a format version; all writers and readers go through here.

| kind | written by | what |
|---|---|---|
| train_summary | stego.train | iterations done, best validation, time, world size, precision |
| eval | stego.evaluate | a checkpoint's metrics on a split (per probe; with/without CRF), how sure they are, analysis |
| image_counts | stego.evaluate | the per-image confusion counts of an eval record's probes (its sidecar) |
| benchmark | benchmarks.runner | one paper-table row and seed: the paper's numbers, the measured ones, the verdicts |
| hyperparameters | benchmarks.runner | paper Table 6 rendered from the presets |
| demo | stego.demo | the demo's three results and step times |

Records are JSON objects with `kind` and `format`; a reader refuses another kind, a newer format, or missing
fields, naming the file and what to do. `provenance()` is the one place that says which code produced a record.
"""
import dataclasses
import platform
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import StegoError
from .io import atomic_save_json, read_json

TABLE_METRICS = ("cluster_acc", "cluster_miou", "linear_acc", "linear_miou")
"""The four numbers a paper-table row holds (percent): cluster then linear probe, accuracy then mIoU."""


def slug(text: str) -> str:
    """A path-safe lower-case id, for record and report folders alike: 'ViT-S +clamp' -> 'vit-s-plus-clamp'."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower().replace("+", " plus ")).strip("-") or "x"


def git_commit() -> str:
    """The commit of the working tree this code runs from, or 'unknown'."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict:
    """Versions of the suite and what it runs on, and the device."""
    import numpy
    import timm
    import torch

    from . import __version__

    return {"stego": __version__, "torch": torch.__version__, "timm": timm.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "cuda": torch.version.cuda if torch.cuda.is_available() else None,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"}


def provenance() -> dict:
    """The `versions` and `git_commit` fields every record carries."""
    return {"versions": versions(), "git_commit": git_commit()}


@dataclass
class TrainSummary:
    KIND = "train_summary"
    FORMAT = 1
    iterations: int
    seconds: float
    best: dict
    """{"miou": best validation cluster mIoU or None, "iteration": where}."""
    select_on_val: bool
    world_size: int
    effective_batch: int
    precision: str | None = None
    """train.precision of the run (None in summaries written before the setting existed)."""


@dataclass
class EvalRecord:
    KIND = "eval"
    FORMAT = 2
    """2: image_counts, intervals, protocols, cluster_spread and each probe's protocol added."""
    name: str
    config: dict
    checkpoint: str
    split: str
    metrics: dict
    """Per probe ('cluster', 'linear', with '_crf' after DenseCRF): miou, accuracy, iou, match, confusion and the
    matching protocol ('hungarian' or 'identity'); plus 'images' and 'seconds' (network, crf)."""
    seconds: float
    seed: int
    versions: dict
    git_commit: str
    image_counts: str | None = None
    """The ImageCountsRecord sidecar (stego.runs.counts_file), relative to the record."""
    intervals: dict | None = None
    """{probe: {"miou" | "accuracy": stego.stats.BootstrapCI as a dict}} (stego.uncertainty.intervals)."""
    protocols: dict | None = None
    """{cluster probe: {protocol: {miou, accuracy}}, "overclustering": {ks, miou, accuracy}} (fractions)."""
    cluster_spread: dict | None = None
    """The cluster probe refitted from seeded restarts: seeds, miou, accuracy, and their median and range."""
    analysis: dict | None = None
    """{"data": <analysis folder>/analysis.json relative to the record, "ap_features", "ap_code"}."""
    sweep: dict | None = None
    """For a record a sweep job wrote: {"job": id, "attempts": [...]} (stego.sweep)."""


@dataclass
class ImageCountsRecord:
    KIND = "image_counts"
    FORMAT = 1
    split: str
    images: int
    probes: dict
    """{probe: stego.counts.ImageCounts.to_json()}: each image's confusion entries, rows prediction, columns truth."""


@dataclass
class BenchmarkRecord:
    KIND = "benchmark"
    FORMAT = 2
    """2: toy_note, intervals, protocols, cluster_spread, image_counts; comparison entries gain ci, ci_verdict and
    protocol."""
    row_kind: str
    table: str
    row: str
    slug: str
    row_order: int | None
    cited: bool
    paper: dict
    tolerance: dict
    source: str
    note: str
    known_gap: str
    paper_selected_on_val: bool | None
    preset: str | None
    ablation: str | None
    overrides: list
    backbone: str | None
    release_checkpoint: str | None
    seed: int
    scale: str
    run_overrides: list
    toy_note: str = ""
    """Why the row's switch cannot matter at toy scale, where it cannot (the registry row's)."""
    measured: dict | None = None
    """Which metrics entry gives each probe's table number: {"cluster": "cluster_crf", "linear": ...}."""
    measured_values: dict | None = None
    """The four table numbers in percent (cluster_acc, cluster_miou, linear_acc, linear_miou)."""
    comparison: dict = field(default_factory=dict)
    """Per metric the paper reports: paper, measured, diff, tolerance, within (None unless paper scale), the
    measured number's bootstrap interval `ci` [lower, upper], `ci_verdict` (benchmarks.runner.ci_verdict) and the
    matching `protocol` behind the number."""
    checkpoint_selection: str | None = None
    checkpoint: str | None = None
    config: dict | None = None
    train_dir: str | None = None
    train_config: str | None = None
    eval_record: str | None = None
    metrics: dict | None = None
    intervals: dict | None = None
    protocols: dict | None = None
    cluster_spread: dict | None = None
    """The eval record's sections of these names (records.EvalRecord)."""
    image_counts: str | None = None
    """The eval record's per-image counts sidecar, relative to this record."""
    analysis: dict | None = None
    seconds: float = 0.0
    versions: dict = field(default_factory=dict)
    git_commit: str = "unknown"
    created: str = ""


@dataclass
class HyperparameterRecord:
    KIND = "hyperparameters"
    FORMAT = 1
    table: str
    paper: dict
    """Paper Table 6 by dataset (rounded as printed)."""
    rows: list
    """One dict per preset: its loss weights, shifts and training settings."""
    versions: dict
    git_commit: str


@dataclass
class DemoRecord:
    KIND = "demo"
    FORMAT = 1
    config: dict
    scenes: dict
    seed: int
    results: dict
    """'stego', 'untrained', 'kmeans': metrics sections of stego.evaluate."""
    steps_seconds: dict
    seconds: float
    versions: dict
    git_commit: str


@dataclass
class TuningRecord:
    """What `stego tune-shifts` found: the shifts closest to the target correlations and every round's trace."""

    KIND = "tuning"
    FORMAT = 1
    preset: str
    config: dict
    """The config the search started from."""
    targets: dict
    """Target mean code correlation per term (None: shift kept) and the tolerance."""
    iterations: int
    window: float
    converged: bool
    best_round: int
    shifts: dict
    correlations: dict
    lambdas: dict
    trace: list
    """One entry per round: round, shifts, correlations (means of the log's last `window`), met."""
    tuned_preset: str
    versions: dict
    git_commit: str


SCHEMAS = {cls.KIND: cls for cls in (TrainSummary, EvalRecord, ImageCountsRecord, BenchmarkRecord, HyperparameterRecord,
                                     DemoRecord, TuningRecord)}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def to_dict(record) -> dict:
    """The JSON object of a record: its fields plus kind and format."""
    return {"kind": record.KIND, "format": record.FORMAT, **dataclasses.asdict(record)}


def write(record, path) -> None:
    """Write a record atomically as JSON (indented; an ImageCountsRecord on one line: it is long lists of ints)."""
    atomic_save_json(to_dict(record), path, compact=isinstance(record, ImageCountsRecord))


def from_dict(data, source: str = "record", kind: str | None = None):
    """A record object from its JSON object, checked against its schema."""
    if not isinstance(data, dict) or data.get("kind") not in SCHEMAS:
        kind = data.get("kind") if isinstance(data, dict) else None
        raise StegoError(f"{source}: not a record of this suite (kind {kind!r}; known: {', '.join(SCHEMAS)})")
    cls = SCHEMAS[data["kind"]]
    if kind is not None and cls.KIND != kind:
        raise StegoError(f"{source}: a {cls.KIND} record where a {kind} record was expected")
    version = data.get("format", 1)
    version = 1 if version == "stego-benchmark/1" else version  # the benchmark records' first format string
    if not isinstance(version, int) or version > cls.FORMAT:
        raise StegoError(f"{source}: {cls.KIND} record format {version!r}, newer than this suite reads "
                         f"({cls.FORMAT}); update the suite or re-run what wrote it")
    names = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(data))
    if missing:
        raise StegoError(f"{source}: {cls.KIND} record lacks {', '.join(missing)}; re-run what wrote it or delete "
                         f"the file")
    return cls(**{k: v for k, v in data.items() if k in names})


def read(path, kind: str | None = None):
    """The record in `path` (of `kind`, when given)."""
    return from_dict(read_json(path, "delete it and re-run what wrote it"), str(path), kind)
