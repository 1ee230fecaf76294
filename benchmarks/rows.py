"""A benchmark row as data (`BenchmarkRow`) and the constructors the tables are written with.

Row kinds: 'stego' (train the head, evaluate), 'baseline' (raw backbone features, probes only, optionally reduced
by PCA or a random projection: baselines/raw_features.py), 'release' (evaluate an authors' released checkpoint)
and 'cited' (a method the suite does not re-run; its numbers are carried and marked as cited).
"""
from dataclasses import dataclass, field

from stego.config import Config, load_config
from stego.records import TABLE_METRICS, slug
from stego.errors import StegoError

KINDS = ("stego", "baseline", "release", "cited")

TOL_RETRAINED = {"cluster_acc": 5.0, "cluster_miou": 3.0, "linear_acc": 2.0, "linear_miou": 2.5}
"""A head trained here from a preset, last iteration, one seed, against a paper run selected on validation."""
TOL_RAW = {"cluster_acc": 5.0, "cluster_miou": 3.0, "linear_acc": 3.0, "linear_miou": 3.0}
"""Probes fitted on raw features: no head, but the same k-means and linear-probe variance."""
TOL_RELEASE = {"cluster_acc": 1.0, "cluster_miou": 1.0, "linear_acc": 1.0, "linear_miou": 1.0}
"""Re-evaluating the authors' own checkpoint: only evaluation-side differences (bf16, decoding, CRF build)."""

RELEASE_SOURCE = "Koenig et al. 2023 (CVPRW) and user reports, re-evaluating the released checkpoints"
RERUN_SOURCE = "Koenig et al. 2023 (CVPRW), raw-DINO baseline re-run"


def paper(cluster_acc=None, cluster_miou=None, linear_acc=None, linear_miou=None) -> dict:
    """Published numbers by metric (percent); None where the table gives none."""
    return {"cluster_acc": cluster_acc, "cluster_miou": cluster_miou, "linear_acc": linear_acc,
            "linear_miou": linear_miou}


@dataclass(frozen=True)
class BenchmarkRow:
    """One row of a paper table: how to produce it and what the paper printed."""

    table: str
    name: str
    kind: str
    paper: dict
    preset: str | None = None
    ablation: str | None = None
    overrides: tuple = ()
    backbone: str | None = None
    """Baselines: the backbone whose raw features are probed."""
    reduce: str = "none"
    """Baselines: 'none' (raw features), or 'pca' / 'random' to `dim` first (stego.projection)."""
    dim: int | None = None
    """Baselines with a reduction: its dimension (None: the preset's code dimension)."""
    checkpoint: str | None = None
    """Release rows: the released checkpoint's file name."""
    tolerance: dict = field(default_factory=dict)
    """Allowed |measured − paper| per metric, percentage points (None: not asserted)."""
    selected_on_val: bool | None = None
    """Whether the published number came from a checkpoint selected on validation (None: unknown / n.a.)."""
    source: str = "paper"
    note: str = ""
    known_gap: str = ""
    """A documented reason the published number is not expected to reproduce (the GPU check is then xfail)."""
    toy_note: str = ""
    """Why the row's switch cannot matter at toy scale (benchmarks/toy.py), where it cannot."""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise StegoError(f"{self.table}/{self.name}: kind must be one of {KINDS}, got {self.kind!r}")
        if set(self.paper) != set(TABLE_METRICS):
            raise StegoError(f"{self.table}/{self.name}: paper numbers need exactly the keys {TABLE_METRICS}")

    @property
    def slug(self) -> str:
        return slug(self.name)

    @property
    def cited(self) -> bool:
        return self.kind == "cited"

    def tolerance_for(self, metric: str) -> float | None:
        """The tolerance of a metric the paper reports (None when the paper has no number for it)."""
        return None if self.paper[metric] is None else self.tolerance.get(metric)

    def config(self) -> Config:
        """The full-scale run config of this row (release rows: data and evaluation settings only)."""
        if self.cited:
            raise StegoError(f"{self.table}/{self.name} is a cited row: the suite does not run it")
        if self.kind == "baseline":
            from baselines.raw_features import baseline_config

            return baseline_config(self.preset, self.backbone, self.overrides, self.reduce, self.dim)
        return load_config(self.preset, list(self.overrides), self.ablation)


def cited(table: str, name: str, numbers: dict, note: str = "") -> BenchmarkRow:
    return BenchmarkRow(table, name, "cited", numbers, source="paper (cited from the original publication)", note=note)


def stego(table: str, name: str, preset: str, numbers: dict, ablation: str | None = None, overrides=(),
          note: str = "", toy_note: str = "") -> BenchmarkRow:
    return BenchmarkRow(table, name, "stego", numbers, preset, ablation, tuple(overrides), tolerance=TOL_RETRAINED,
                        selected_on_val=True, note=note, toy_note=toy_note)


def baseline(table: str, name: str, preset: str, backbone: str, numbers: dict, overrides=(), source="paper",
             note: str = "", known_gap: str = "", reduce: str = "none", dim: int | None = None) -> BenchmarkRow:
    return BenchmarkRow(table, name, "baseline", numbers, preset, None, tuple(overrides), backbone, reduce, dim,
                        tolerance=TOL_RAW, source=source, note=note, known_gap=known_gap)


def release(table: str, name: str, preset: str, checkpoint: str, numbers: dict, note: str = "") -> BenchmarkRow:
    return BenchmarkRow(table, name, "release", numbers, preset, checkpoint=checkpoint, tolerance=TOL_RELEASE,
               selected_on_val=True, source=RELEASE_SOURCE, note=note)
