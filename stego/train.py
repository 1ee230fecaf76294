"""The training loop: a plain PyTorch loop over KNN pairs, resumable to the same weights (docs/protocol.md §5, §12).

    train(): resume state -> build the parts -> loop: step, track, validate, checkpoint or stop -> summary

Every random draw of iteration i (batch order, KNN partner ranks, dropout masks, loss samples) is seeded from
(seed, i), so a run interrupted and resumed from a checkpoint takes exactly the steps of an uninterrupted one.
"""
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import build, records
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, TrainConfig, from_dict, save_config
from .data.batches import ByEpoch, ResumableBatches
from .errors import StegoError
from .io import folder_lock
from .loss import CorrespondenceLoss
from .projection import FIXED, fit_projection
from .runs import RunDir
from .runtime import (agreed_stop, any_rank, autocast, average_gradients, distributed, iteration_seed, pick_device,
                      set_tf32, set_threads, worker_count)
from .tracking import correlation_histograms, log_row, tracker

log = logging.getLogger(__name__)


class TrainingStopped(Exception):
    """`train` stopped early on request (a signal): its checkpoint holds iteration `iteration`; resume continues."""

    def __init__(self, iteration: int, checkpoint: Path):
        super().__init__(f"training stopped on request at iteration {iteration}; {checkpoint} holds it: "
                         f"resume to continue")
        self.iteration = iteration
        self.checkpoint = checkpoint


@dataclass
class Progress:
    """Where a run stands: iterations done, the best validation so far, and whether the checkpoint's iteration
    still owes its validation (a stop request cut it short)."""

    start: int = 0
    best: dict = field(default_factory=lambda: {"miou": None, "iteration": None})
    owed: bool = False


@dataclass
class Parts:
    """What a run trains with, built from its config."""

    backbone: torch.nn.Module
    dataset: object
    model: torch.nn.Module
    optimizers: list
    distil: bool
    """False when there is nothing to distil (projection 'none', lr 0 or every λ 0): probes only, no KNN."""
    source: object
    """The items the loader reads: KNN pairs when distilling, else the dataset, addressed by (index, epoch)."""
    cached: bool = False
    """True when the items hold stored backbone features instead of images (data.features=cached)."""


def due(it: int, stop: int, t: TrainConfig) -> dict:
    """What iteration `it` (steps done) is due: a log row, histograms, a validation, a periodic checkpoint."""
    last = it == stop
    return {"log": it % t.log_every == 0 or last, "hist": bool(t.hist_every) and (it % t.hist_every == 0 or last),
            "validate": bool(t.val_every) and it % t.val_every == 0,
            "checkpoint": it % t.checkpoint_every == 0 or last}


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


def resume_state(run: RunDir, cfg: Config, resume: bool) -> dict | None:
    """The checkpoint to continue from (checked against `cfg`), None for a new run; an existing run without
    `resume` is an error."""
    if not run.checkpoint.exists():
        return None
    if not resume:
        raise StegoError(f"{run.path} already holds a run ({run.checkpoint.name}); pass --resume to continue it or "
                         f"choose another --out")
    state = load_checkpoint(run.checkpoint)
    _check_resumable(from_dict(state["config"], source=str(run.checkpoint)), cfg, state["iteration"], run.checkpoint)
    return state


def build_parts(cfg: Config, device: torch.device, fresh: bool = True, labels: bool = True) -> Parts:
    """Backbone, dataset, model and optimisers; the KNN table too when distilling (mined on first use), and the
    feature store with data.features=cached (built on first use); a fixed
    projection (model.projection pca / random) is fitted on the training features when `fresh` (a resumed run
    loads it from its checkpoint). labels=False trains without opening a label file (the linear probe learns
    nothing)."""
    t = cfg.train
    backbone = build.backbone_for(cfg).to(device)
    dataset = build.train_dataset(cfg, labels=labels)
    if not dataset.n_classes:
        raise StegoError(f"{cfg.data.root}: the number of classes is unknown; write classes.txt or set data.n_classes")
    torch.manual_seed(t.seed)
    model = build.model_for(cfg, backbone.dim, dataset.n_classes).to(device)
    if fresh and cfg.model.projection in FIXED:
        fit_projection(cfg.model.projection, model.head.fixed, backbone, dataset, t.seed, t.batch_size,
                       worker_count(cfg.data.workers), device)
    optimizers = [torch.optim.Adam(model.linear_probe.parameters(), lr=t.probe_lr),
                  torch.optim.Adam(model.cluster_probe.parameters(), lr=t.probe_lr)]
    head_params = list(model.head.parameters())
    lambdas = (cfg.loss.lambda_self, cfg.loss.lambda_knn, cfg.loss.lambda_rand)
    distil = bool(head_params) and t.lr > 0 and any(lambdas)
    if head_params:
        optimizers.append(torch.optim.Adam(head_params, lr=t.lr))
    cached = cfg.data.features == "cached"
    items = build.cached_items(cfg, backbone, dataset, device, labels) if cached else dataset
    if distil:
        from .data.pairs import KnnPairs

        source = ByEpoch(KnnPairs(items, build.knn_table(cfg, backbone, dataset), cfg.data.num_neighbors, t.seed))
    else:
        source = ByEpoch(items)
    return Parts(backbone, dataset, model, optimizers, distil, source, cached)


def restore(parts: Parts, state: dict | None, can_validate: bool) -> Progress:
    """Load a checkpoint's weights and optimiser states into `parts`; where it left off."""
    if state is None:
        return Progress()
    parts.model.load_state_dict(state["model"])
    for opt, saved in zip(parts.optimizers, state["optimizers"]):
        opt.load_state_dict(saved)
    best = state.get("best") or Progress().best
    return Progress(state["iteration"], best, bool(state.get("validation_owed", False)) and can_validate)


def train_step(batch, backbone, model, loss_fn, optimizers, device, generator, distil: bool, precision: str):
    """One iteration: one backbone forward (in `precision`, train.precision) for anchors and partners, the three
    loss terms, both probes. backbone None: the batch holds the items' stored features (data.features=cached)."""
    img = batch["img"].to(device, non_blocking=True)
    label = batch["label"].to(device, non_blocking=True)
    images = torch.cat([img, batch["img_pos"].to(device, non_blocking=True)]) if distil else img
    if backbone is None:
        feats = images
    else:
        with autocast(device, precision):
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


class Validation:
    """Validates the model of an iteration and keeps the best (best.pt with train.select_on_val, rank 0)."""

    def __init__(self, validate, run: RunDir, cfg: Config, parts: Parts, progress: Progress, rank: int, should_stop):
        self.validate, self.run, self.cfg, self.parts = validate, run, cfg, parts
        self.progress, self.rank, self.should_stop = progress, rank, should_stop

    def __call__(self, at: int) -> bool:
        """Validate iteration `at`; False when a stop request cut it short (it is then owed)."""
        miou = self.validate(self.parts.model, self.parts.backbone, self.should_stop)
        self.parts.model.train()
        if miou is None:
            return False
        log.info("iteration %d: validation cluster mIoU %.2f", at, 100 * miou)
        best = self.progress.best
        if best["miou"] is None or miou > best["miou"]:
            self.progress.best = {"miou": miou, "iteration": at}
            if self.rank == 0 and self.cfg.train.select_on_val:
                save_checkpoint(self.run.best, self.parts.model, self.parts.optimizers, at, self.cfg,
                                {"best": self.progress.best})
        return True


def loop(cfg: Config, run: RunDir, parts: Parts, progress: Progress, stop: int, validation, should_stop,
         rank: int, world: int, device) -> int:
    """Steps from progress.start to `stop`: track, validate and checkpoint when due; on an agreed stop request,
    checkpoint after the step and raise TrainingStopped. Returns the iteration reached."""
    t = cfg.train
    loss_fn = CorrespondenceLoss(cfg.loss)
    sampler = ResumableBatches(len(parts.dataset), t.batch_size, t.seed, progress.start, stop, rank, world)
    loader = DataLoader(parts.source, batch_sampler=sampler, num_workers=worker_count(cfg.data.workers),
                        pin_memory=device.type == "cuda")
    parts.model.train()
    began, it = time.perf_counter(), progress.start
    with tracker(run, cfg, progress.start, rank) as track:
        for batch in tqdm(loader, total=len(sampler), desc="train", disable=rank != 0, dynamic_ncols=True):
            torch.manual_seed(iteration_seed(t.seed, it))
            generator = torch.Generator(device=device).manual_seed(iteration_seed(t.seed + 1, it))
            out, linear_loss, cluster_loss = train_step(batch, None if parts.cached else parts.backbone, parts.model,
                                                        loss_fn, parts.optimizers, device, generator, parts.distil,
                                                        t.precision)
            it += 1
            now = due(it, stop, t)
            if now["log"]:
                track.scalars(log_row(it, progress.start, out, linear_loss, cluster_loss, time.perf_counter() - began))
            if now["hist"] and parts.distil:
                track.histogram(correlation_histograms(it, out.code_corr))
            stopping = should_stop is not None and it < stop and agreed_stop(should_stop, it, world, device)
            progress.owed = validation is not None and now["validate"]
            if progress.owed and not stopping:
                progress.owed = not validation(it)
                # every rank validates this iteration, so all can agree here whatever the iteration
                stopping = should_stop is not None and any_rank(progress.owed or (it < stop and should_stop()),
                                                                world, device)
            if rank == 0 and (stopping or now["checkpoint"]):
                save_checkpoint(run.checkpoint, parts.model, parts.optimizers, it, cfg,
                                {"best": progress.best, "validation_owed": progress.owed})
            if stopping:
                log.warning("stopping on request at iteration %d of %d; %s holds it%s", it, t.iterations,
                            run.checkpoint, " (its validation runs on resume)" if progress.owed else "")
                raise TrainingStopped(it, run.checkpoint)
    return it


def train(cfg: Config, out_dir, resume: bool = False, stop_at: int | None = None, validate=None,
          should_stop=None, labels: bool = True) -> Path:
    """Train the head and probes into the run folder `out_dir` (stego.runs.RunDir names its files).

    stop_at: end after this many iterations as if interrupted (tests; a later resume continues).
    validate: optional callable(model, backbone, should_stop) -> cluster mIoU, or None when `should_stop` cut it
    short; run every train.val_every iterations.
    should_stop: optional callable() -> bool read after each step (e.g. a `runtime.StopRequest` set by SLURM's
    end-of-time signal); when true on any rank, the step's checkpoint is saved and TrainingStopped is raised.
    A validation that is due or running then is owed: the checkpoint says so and resume runs it first.
    labels: False for label-free work (stego tune-shifts): no label file is opened, the linear probe stays untrained.
    Returns the checkpoint to evaluate (RunDir.evaluated).
    """
    run = RunDir(out_dir)
    rank, world = distributed()
    with folder_lock(run.path) if rank == 0 else contextlib.nullcontext():
        device = pick_device(cfg.train.device)
        set_tf32(device, cfg.train.precision)
        set_threads(cfg.train.threads)
        state = resume_state(run, cfg, resume)
        if rank == 0:
            save_config(cfg, run.config)
        parts = build_parts(cfg, device, fresh=state is None, labels=labels)
        progress = restore(parts, state, validate is not None)
        validation = Validation(validate, run, cfg, parts, progress, rank, should_stop) if validate else None
        if state is not None:
            log.info("resuming %s at iteration %d of %d", run.path, progress.start, cfg.train.iterations)
        if progress.owed:  # a stop request cut the checkpoint's validation short: run it before going on
            if any_rank(not validation(progress.start), world, device):
                raise TrainingStopped(progress.start, run.checkpoint)
            progress.owed = False
            if rank == 0:
                save_checkpoint(run.checkpoint, parts.model, parts.optimizers, progress.start, cfg,
                                {"best": progress.best})
        stop = min(cfg.train.iterations, stop_at) if stop_at is not None else cfg.train.iterations
        t = cfg.train
        if rank == 0:
            log.info("training %s: %d images, %d classes, backbone %s (dim %d), batch %d × %d process(es) = %d, "
                     "iterations %d → %d on %s in %s", cfg.name, len(parts.dataset), parts.dataset.n_classes,
                     cfg.model.backbone, parts.backbone.dim, t.batch_size, world, t.batch_size * world,
                     progress.start, stop, device, t.precision)
        began = time.perf_counter()
        it = loop(cfg, run, parts, progress, stop, validation, should_stop, rank, world, device)
        if rank == 0:
            records.write(records.TrainSummary(iterations=it, seconds=time.perf_counter() - began,
                                               best=progress.best, select_on_val=t.select_on_val, world_size=world,
                                               effective_batch=t.batch_size * world, precision=t.precision),
                          run.summary)
    return run.evaluated(cfg.train.select_on_val)
