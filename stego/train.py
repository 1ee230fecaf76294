"""The training loop: a plain PyTorch loop over KNN pairs, resumable to the same weights.

Every random draw of iteration i (batch order, KNN partner ranks, dropout masks, loss samples) is seeded from
(seed, i), so a run interrupted and resumed from a checkpoint takes exactly the steps of an uninterrupted one.
"""
import contextlib
import csv
import json
import logging
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from . import build
from .config import Config, from_dict, save_config
from .errors import StegoError
from .io import atomic_save_json, atomic_write, folder_lock
from .loss import CorrespondenceLoss
from .runtime import (agreed_stop, any_rank, autocast, average_gradients, distributed, iteration_seed, pick_device,
                      set_threads, worker_count)

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
HISTOGRAMS = "code_corr_hist.json"
HIST_BINS = 40
BEST = "best.pt"
LOG_FIELDS = ["iteration", "attempt_start", "loss", "loss_self", "loss_knn", "loss_rand", "corr_self", "corr_knn",
              "corr_rand", "linear_loss", "cluster_loss", "seconds"]
FORMAT = 1


class ResumableBatches(Sampler):
    """Batches of (index, epoch) from iteration `start` on; epoch e shuffles with a generator seeded by (seed, e)."""

    def __init__(self, n: int, batch: int, seed: int, start: int, stop: int, rank: int = 0, world: int = 1):
        self.per_epoch = n // (batch * world)
        if self.per_epoch == 0:
            raise StegoError(f"the training split has {n} items, fewer than one batch of {batch} × {world} "
                             f"processes: lower train.batch_size")
        self.n, self.batch, self.seed, self.start, self.stop, self.rank, self.world = n, batch, seed, start, stop, rank, world

    def __len__(self):
        return max(self.stop - self.start, 0)

    def __iter__(self):
        order, order_epoch = None, None
        for it in range(self.start, self.stop):
            epoch, step = divmod(it, self.per_epoch)
            if epoch != order_epoch:
                order = torch.randperm(self.n, generator=torch.Generator().manual_seed(iteration_seed(self.seed, -1 - epoch)))
                order_epoch = epoch
            first = (step * self.world + self.rank) * self.batch
            yield [(int(i), epoch) for i in order[first:first + self.batch]]


class ByEpoch(Dataset):
    """Items addressed by (index, epoch), so loader workers draw the KNN partners of the right epoch."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, key):
        index, epoch = key
        if hasattr(self.data, "set_epoch"):
            self.data.set_epoch(epoch)
        return self.data[index]


def train_step(batch, backbone, model, loss_fn, optimizers, device, generator, distil: bool):
    """One iteration: one backbone forward for anchors and partners, the three loss terms, both probes."""
    img = batch["img"].to(device, non_blocking=True)
    label = batch["label"].to(device, non_blocking=True)
    images = torch.cat([img, batch["img_pos"].to(device, non_blocking=True)]) if distil else img
    with autocast(device):
        feats = backbone(images)
    teacher, code = model(feats.float())
    b = img.shape[0]
    out = loss_fn(teacher[:b], teacher[b:], code[:b], code[b:], generator=generator) if distil else None
    detached = code[:b].detach()
    linear_loss = model.linear_probe.loss(detached, label)
    cluster_loss = model.cluster_probe.loss(detached)
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    total = linear_loss + cluster_loss + (out.total if distil else 0)
    total.backward()
    average_gradients(list(model.parameters()))
    for opt in optimizers:
        opt.step()
    return out, linear_loss, cluster_loss


def log_row(it: int, attempt_start: int, out, linear_loss, cluster_loss, seconds: float) -> dict:
    """One train_log.csv row; attempt_start is the iteration the writing attempt (first run or resume) began at."""
    row = {"iteration": it, "attempt_start": attempt_start, "linear_loss": linear_loss.item(),
           "cluster_loss": cluster_loss.item(), "seconds": round(seconds, 3)}
    if out is not None:
        row.update(loss=out.total.item(), loss_self=out.self_loss.item(), loss_knn=out.knn_loss.item(),
                   loss_rand=out.rand_loss.item(), corr_self=out.corr_self.item(), corr_knn=out.corr_knn.item(),
                   corr_rand=out.corr_rand.item())
    return row


def save_checkpoint(path: Path, model, optimizers, iteration: int, cfg: Config, extra: dict | None = None) -> None:
    state = {"format": FORMAT, "iteration": iteration, "model": model.state_dict(),
             "optimizers": [o.state_dict() for o in optimizers], "config": cfg.to_dict(),
             "n_classes": model.n_classes, "in_dim": model.head.in_dim, **(extra or {})}
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by `save_checkpoint` (plain tensors and containers: loads with weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise StegoError(f"checkpoint {path} not found: give the run folder's {CHECKPOINT} (or a released .ckpt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise StegoError(f"checkpoint {path} is unreadable ({type(err).__name__}); it may be truncated: "
                         f"resume from an earlier copy or retrain") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise StegoError(f"{path} is not a checkpoint of this suite (format {FORMAT}); for the authors' release "
                         f"files use `stego eval --checkpoint FILE.ckpt`")
    return state


def correlation_histograms(iteration: int, code_corr: torch.Tensor) -> dict:
    """Counts of the sampled code correlations of each term in HIST_BINS bins over [-1, 1] (paper Fig. 14)."""
    groups = {"self": code_corr[0], "knn": code_corr[1], "rand": code_corr[2:]}
    return {"iteration": iteration, "bins": HIST_BINS,
            **{name: torch.histc(c.float().cpu().clamp(-1, 1), HIST_BINS, -1, 1).long().tolist() for name, c in groups.items()}}


def _histograms_up_to(path: Path, iteration: int) -> list:
    """The histograms a resumed run keeps: those of iterations up to its checkpoint."""
    if not path.exists():
        return []
    with open(path) as f:
        return [h for h in json.load(f) if h["iteration"] <= iteration]


def _log_rows_up_to(path: Path, iteration: int) -> None:
    """Drop log rows past `iteration` (written after the checkpoint a resume starts from)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= iteration]
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _check_resumable(saved: Config, cfg: Config, iteration: int, checkpoint: Path) -> None:
    """A run resumes only with the config it was written with, except that train.iterations may grow (extending
    a run gives the weights of a run that was that long from the start: every draw is seeded by iteration)."""
    before, now = saved.identity(), cfg.identity()
    before["train"].pop("iterations")
    now["train"].pop("iterations")
    if before != now:
        diff = sorted(f"{s}.{k}" for s in before if isinstance(before[s], dict)
                      for k in before[s] if before[s][k] != now[s].get(k))
        raise StegoError(f"{checkpoint} was written with another config (differs in {', '.join(diff) or 'name'}); "
                         f"resume with the same preset and overrides (only train.iterations may grow), or use a new "
                         f"--out folder")
    if cfg.train.iterations < iteration:
        raise StegoError(f"{checkpoint} is at iteration {iteration}, past train.iterations={cfg.train.iterations}; "
                         f"give at least {iteration} to resume it")
    if cfg.train.iterations != saved.train.iterations:
        log.info("extending %s from %d to %d iterations", checkpoint.parent, saved.train.iterations,
                 cfg.train.iterations)


class TrainingStopped(Exception):
    """`train` stopped early on request (a signal): its checkpoint holds iteration `iteration`; resume continues."""

    def __init__(self, iteration: int, checkpoint: Path):
        super().__init__(f"training stopped on request at iteration {iteration}; {checkpoint} holds it: "
                         f"resume to continue")
        self.iteration = iteration
        self.checkpoint = checkpoint


def train(cfg: Config, out_dir, resume: bool = False, stop_at: int | None = None, validate=None,
          should_stop=None) -> Path:
    """Train the head and probes; writes config.yaml, train_log.csv and checkpoint.pt under `out_dir`.

    stop_at: end after this many iterations as if interrupted (tests; a later resume continues).
    validate: optional callable(model, backbone, should_stop) -> cluster mIoU, or None when `should_stop` cut it
    short; run every train.val_every iterations.
    should_stop: optional callable() -> bool read after each step (e.g. a `runtime.StopRequest` set by SLURM's
    end-of-time signal); when true on any rank, the step's checkpoint is saved and TrainingStopped is raised.
    A validation that is due or running then is owed: the checkpoint says so and resume runs it first.
    Returns the checkpoint to evaluate (best.pt with train.select_on_val, else checkpoint.pt).
    """
    rank, _ = distributed()
    with folder_lock(out_dir) if rank == 0 else contextlib.nullcontext():
        return _train(cfg, Path(out_dir), resume, stop_at, validate, should_stop)


def _train(cfg: Config, out: Path, resume: bool, stop_at, validate, should_stop) -> Path:
    """The body of `train`, with the run folder locked by rank 0."""
    rank, world = distributed()
    device = pick_device(cfg.train.device)
    t = cfg.train
    set_threads(t.threads)
    start = 0
    checkpoint = out / CHECKPOINT
    state = None
    if resume and checkpoint.exists():
        state = load_checkpoint(checkpoint)
        start = state["iteration"]
        _check_resumable(from_dict(state["config"], source=str(checkpoint)), cfg, start, checkpoint)
    elif checkpoint.exists():
        raise StegoError(f"{out} already holds a run ({CHECKPOINT}); pass --resume to continue it or choose another --out")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")

    torch.manual_seed(t.seed)  # a random-init backbone (tests, smoke runs) must be the same after a resume
    backbone = build.backbone_for(cfg).to(device)
    dataset = build.train_dataset(cfg)
    n_classes = dataset.n_classes
    if not n_classes:
        raise StegoError(f"{cfg.data.root}: the number of classes is unknown; write classes.txt or set data.n_classes")
    torch.manual_seed(t.seed)
    model = build.model_for(cfg, backbone.dim, n_classes).to(device)
    optimizers = [torch.optim.Adam(model.linear_probe.parameters(), lr=t.probe_lr),
                  torch.optim.Adam(model.cluster_probe.parameters(), lr=t.probe_lr)]
    # Nothing to distil (projection 'none', lr 0 or every λ 0: raw-feature baselines, the untrained-head
    # reference): the head keeps its initial weights and no KNN table or partner forward is needed.
    head_params = list(model.head.parameters())
    lambdas = (cfg.loss.lambda_self, cfg.loss.lambda_knn, cfg.loss.lambda_rand)
    distil = bool(head_params) and t.lr > 0 and any(lambdas)
    if head_params:
        optimizers.append(torch.optim.Adam(head_params, lr=t.lr))
    if distil:
        from .data.pairs import KnnPairs

        source = ByEpoch(KnnPairs(dataset, build.knn_table(cfg, backbone, dataset), cfg.data.num_neighbors, t.seed))
    else:
        source = ByEpoch(dataset)
    best = {"miou": None, "iteration": None}
    owed = False  # the checkpoint's iteration was due a validation that a stop request cut short
    if state is not None:
        model.load_state_dict(state["model"])
        for opt, saved in zip(optimizers, state["optimizers"]):
            opt.load_state_dict(saved)
        best = state.get("best", best)
        owed = bool(state.get("validation_owed", False)) and validate is not None
        log.info("resuming %s at iteration %d of %d", out, start, t.iterations)

    def validated(at: int) -> bool:
        """Validate the model of iteration `at` and keep the best; False when a stop request cut it short."""
        nonlocal best
        miou = validate(model, backbone, should_stop)
        model.train()
        if miou is None:
            return False
        log.info("iteration %d: validation cluster mIoU %.2f", at, 100 * miou)
        if best["miou"] is None or miou > best["miou"]:
            best = {"miou": miou, "iteration": at}
            if rank == 0 and t.select_on_val:
                save_checkpoint(out / BEST, model, optimizers, at, cfg, {"best": best})
        return True

    if owed:  # a stop request cut the checkpoint's validation short: run it before going on
        if any_rank(not validated(start), world, device):
            raise TrainingStopped(start, checkpoint)
        if rank == 0:
            save_checkpoint(checkpoint, model, optimizers, start, cfg, {"best": best})
    loss_fn = CorrespondenceLoss(cfg.loss)
    stop = min(t.iterations, stop_at) if stop_at is not None else t.iterations
    loader = DataLoader(source, batch_sampler=ResumableBatches(len(dataset), t.batch_size, t.seed, start, stop, rank, world),
                        num_workers=worker_count(cfg.data.workers), pin_memory=device.type == "cuda")
    log_path = out / "train_log.csv"
    hist_path = out / HISTOGRAMS
    histograms = _histograms_up_to(hist_path, start)
    if rank == 0:
        _log_rows_up_to(log_path, start)
        log.info("training %s: %d images, %d classes, backbone %s (dim %d), batch %d × %d process(es) = %d, "
                 "iterations %d → %d on %s", cfg.name, len(dataset), n_classes, cfg.model.backbone, backbone.dim,
                 t.batch_size, world, t.batch_size * world, start, stop, device)
    log_file = open(log_path, "a", newline="") if rank == 0 else None
    writer = csv.DictWriter(log_file, LOG_FIELDS) if log_file else None
    if writer and log_path.stat().st_size == 0:
        writer.writeheader()
    model.train()
    began = time.perf_counter()
    it = start
    try:
        for batch in tqdm(loader, total=len(loader.batch_sampler), desc="train", disable=rank != 0,
                          dynamic_ncols=True):
            torch.manual_seed(iteration_seed(t.seed, it))
            generator = torch.Generator(device=device).manual_seed(iteration_seed(t.seed + 1, it))
            out_loss, linear_loss, cluster_loss = train_step(batch, backbone, model, loss_fn, optimizers, device,
                                                             generator, distil)
            it += 1
            if writer and (it % t.log_every == 0 or it == stop):
                writer.writerow(log_row(it, start, out_loss, linear_loss, cluster_loss, time.perf_counter() - began))
                log_file.flush()
            if rank == 0 and distil and t.hist_every and (it % t.hist_every == 0 or it == stop):
                histograms.append(correlation_histograms(it, out_loss.code_corr))
                atomic_save_json(histograms, hist_path)
            stopping = should_stop is not None and it < stop and agreed_stop(should_stop, it, world, device)
            owed = bool(validate and t.val_every and it % t.val_every == 0)
            if owed and not stopping:
                owed = not validated(it)
                # every rank validates this iteration, so all can agree here whatever the iteration
                stopping = should_stop is not None and any_rank(owed or (it < stop and should_stop()), world, device)
            if rank == 0 and (stopping or it % t.checkpoint_every == 0 or it == stop):
                save_checkpoint(checkpoint, model, optimizers, it, cfg, {"best": best, "validation_owed": owed})
            if stopping:
                log.warning("stopping on request at iteration %d of %d; %s holds it%s", it, t.iterations, checkpoint,
                            " (its validation runs on resume)" if owed else "")
                raise TrainingStopped(it, checkpoint)
    finally:
        if log_file:
            log_file.close()
    if rank == 0:
        atomic_save_json({"iterations": it, "seconds": time.perf_counter() - began, "best": best,
                          "select_on_val": t.select_on_val, "world_size": world,
                          "effective_batch": t.batch_size * world}, out / "train_summary.json")
    return out / BEST if t.select_on_val and (out / BEST).exists() else checkpoint
