"""A run folder: the name of every file a training run and its evaluation write, in one place, and the rule for
which checkpoint a finished run evaluates."""
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    """The files of one run under `path` (see each property); nothing is created by naming them."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        """The resolved config the run trains with (YAML)."""
        return self.path / "config.yaml"

    @property
    def log(self) -> Path:
        """train_log.csv: every loss term and mean code correlation, one row per train.log_every iterations."""
        return self.path / "train_log.csv"

    @property
    def histograms(self) -> Path:
        """Code-correlation histograms over training (paper Fig. 14)."""
        return self.path / "code_corr_hist.json"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard event files (train.tensorboard)."""
        return self.path / "tensorboard"

    @property
    def checkpoint(self) -> Path:
        """The latest checkpoint (periodic, at a stop request, and at the end)."""
        return self.path / "checkpoint.pt"

    @property
    def best(self) -> Path:
        """The checkpoint of the best validation cluster mIoU (train.select_on_val)."""
        return self.path / "best.pt"

    @property
    def summary(self) -> Path:
        """Written when training ends: iterations done, best validation, time."""
        return self.path / "train_summary.json"

    @property
    def record(self) -> Path:
        """The evaluation record of the run (`stego eval`, sweeps)."""
        return self.path / "record.json"

    def finished(self, iterations: int) -> bool:
        """True when training ended at `iterations` (its summary says so)."""
        try:
            return json.loads(self.summary.read_text()).get("iterations") == iterations
        except (OSError, ValueError):
            return False

    def evaluated(self, select_on_val: bool) -> Path:
        """The checkpoint a finished run evaluates: best.pt when the run selects on validation and has one, else
        the last (docs/protocol.md §11)."""
        return self.best if select_on_val and self.best.exists() else self.checkpoint


def analysis_dir(record: Path) -> Path:
    """The folder of side files (figures' data, examples) beside an evaluation record: <stem>_analysis/."""
    record = Path(record)
    return record.parent / f"{record.stem}_analysis"


def counts_file(record: Path) -> Path:
    """The per-image confusion counts of an evaluation record (stego.counts.ImageCounts by probe): <stem>_counts.json
    beside it, a sidecar so that the record itself stays small."""
    record = Path(record)
    return record.parent / f"{record.stem}{COUNTS_SUFFIX}"


COUNTS_SUFFIX = "_counts.json"
"""What ends the name of a counts sidecar: readers of records skip them without parsing (they are long)."""
