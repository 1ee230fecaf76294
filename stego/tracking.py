"""Where training reports its numbers: one small interface (`Tracker`) and three sinks.

- files (always): train_log.csv, one row per train.log_every iterations (every loss term, the mean self / KNN /
  random code correlations: the balance read-out of the paper's A.11), and code_corr_hist.json, histograms of the
  sampled code correlations (paper Fig. 14). A resumed run first drops what was written after its checkpoint.
- TensorBoard (train.tensorboard): the same scalars and histograms under the run's tensorboard/ folder; a resume
  purges the steps after its checkpoint.
- Weights & Biases (train.wandb names a project; `pip install wandb`): the same scalars, in the run folder's
  wandb/ (WANDB_MODE=offline keeps it on disk).
Only rank 0 tracks; the others get a tracker that writes nothing.
"""
import csv
import json
import logging
import secrets

import numpy as np
import torch

from .errors import StegoError
from .io import atomic_save_json, atomic_write
from .runs import RunDir

log = logging.getLogger(__name__)

LOG_FIELDS = ["iteration", "attempt_start", "loss", "loss_self", "loss_knn", "loss_rand", "corr_self", "corr_knn",
              "corr_rand", "linear_loss", "cluster_loss", "seconds"]
HIST_BINS = 40


def log_row(it: int, attempt_start: int, out, linear_loss, cluster_loss, seconds: float) -> dict:
    """One train_log.csv row; attempt_start is the iteration the writing attempt (first run or resume) began at."""
    row = {"iteration": it, "attempt_start": attempt_start, "linear_loss": linear_loss.item(),
           "cluster_loss": cluster_loss.item(), "seconds": round(seconds, 3)}
    if out is not None:
        row.update(loss=out.total.item(), loss_self=out.self_loss.item(), loss_knn=out.knn_loss.item(),
                   loss_rand=out.rand_loss.item(), corr_self=out.corr_self.item(), corr_knn=out.corr_knn.item(),
                   corr_rand=out.corr_rand.item())
    return row


def correlation_histograms(iteration: int, code_corr: torch.Tensor) -> dict:
    """Counts of the sampled code correlations of each term in HIST_BINS bins over [-1, 1] (paper Fig. 14)."""
    groups = {"self": code_corr[0], "knn": code_corr[1], "rand": code_corr[2:]}
    return {"iteration": iteration, "bins": HIST_BINS,
            **{name: torch.histc(c.float().cpu().clamp(-1, 1), HIST_BINS, -1, 1).long().tolist()
               for name, c in groups.items()}}


def _scalars(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("iteration", "attempt_start")}


class FileSink:
    """train_log.csv and code_corr_hist.json of the run folder, cut back to the resumed checkpoint first."""

    def __init__(self, run: RunDir, start: int):
        self.hist_path = run.histograms
        self.histograms = []
        if self.hist_path.exists():
            self.histograms = [h for h in json.loads(self.hist_path.read_text()) if h["iteration"] <= start]
        if run.log.exists():
            with open(run.log, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= start]
            with atomic_write(run.log, "w") as f:
                writer = csv.DictWriter(f, LOG_FIELDS)
                writer.writeheader()
                writer.writerows(rows)
        self.file = open(run.log, "a", newline="")
        self.writer = csv.DictWriter(self.file, LOG_FIELDS)
        if run.log.stat().st_size == 0:
            self.writer.writeheader()

    def scalars(self, row: dict) -> None:
        self.writer.writerow(row)
        self.file.flush()

    def histogram(self, hist: dict) -> None:
        self.histograms.append(hist)
        atomic_save_json(self.histograms, self.hist_path)

    def close(self) -> None:
        self.file.close()


class TensorBoardSink:
    """Scalars and histograms as TensorBoard events; steps after the resumed checkpoint are purged."""

    def __init__(self, run: RunDir, start: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run.tensorboard), purge_step=start + 1 if start else None)  # keep <= start

    def scalars(self, row: dict) -> None:
        for name, value in _scalars(row).items():
            self.writer.add_scalar(f"train/{name}", value, row["iteration"])

    def histogram(self, hist: dict) -> None:
        edges = np.linspace(-1, 1, hist["bins"] + 1)
        for name in ("self", "knn", "rand"):
            counts = np.asarray(hist[name], dtype=np.float64)
            if counts.sum():
                centres = (edges[:-1] + edges[1:]) / 2
                mean = float((counts * centres).sum() / counts.sum())
                self.writer.add_histogram_raw(
                    f"code_corr/{name}", min=-1.0, max=1.0, num=int(counts.sum()), sum=mean * counts.sum(),
                    sum_squares=float((counts * centres ** 2).sum()), bucket_limits=edges[1:].tolist(),
                    bucket_counts=counts.tolist(), global_step=hist["iteration"])

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """Scalars to a Weights & Biases run of `project`, resumed under the same id when the training resumes."""

    def __init__(self, run: RunDir, project: str, name: str, config: dict):
        try:
            import wandb
        except ImportError:
            raise StegoError(f"train.wandb={project!r} needs the wandb package: pip install wandb (or 'stego[wandb]'), "
                             f"or unset train.wandb") from None
        id_file = run.path / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id)
        self.wandb = wandb
        self.run = wandb.init(project=project, name=name, id=run_id, resume="allow", dir=str(run.path),
                              config=config)

    def scalars(self, row: dict) -> None:
        self.run.log({f"train/{k}": v for k, v in _scalars(row).items()}, step=row["iteration"])

    def histogram(self, hist: dict) -> None:
        edges = np.linspace(-1, 1, hist["bins"] + 1)
        self.run.log({f"code_corr/{name}": self.wandb.Histogram(np_histogram=(np.asarray(hist[name]), edges))
                      for name in ("self", "knn", "rand")}, step=hist["iteration"])

    def close(self) -> None:
        self.run.finish()


class Tracker:
    """Sends each log row and histogram to every sink; use as a context manager (sinks close on exit)."""

    def __init__(self, sinks: list):
        self.sinks = sinks

    def scalars(self, row: dict) -> None:
        for sink in self.sinks:
            sink.scalars(row)

    def histogram(self, hist: dict) -> None:
        for sink in self.sinks:
            sink.histogram(hist)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for sink in self.sinks:
            sink.close()


def tracker(run: RunDir, cfg, start: int, rank: int) -> Tracker:
    """The sinks the config asks for (rank 0 only), each resumed at iteration `start`."""
    if rank != 0:
        return Tracker([])
    sinks = [FileSink(run, start)]
    if cfg.train.tensorboard:
        sinks.append(TensorBoardSink(run, start))
    if cfg.train.wandb:
        sinks.append(WandbSink(run, cfg.train.wandb, cfg.name, cfg.to_dict()))
    return Tracker(sinks)
