"""Inside a job: run it (train and evaluate a preset, or call a plug-in entry), keep its state file, and on SLURM's
end-of-time or preemption signal checkpoint after the training step in flight, then requeue."""
import contextlib
import importlib
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from ..errors import StegoError
from ..io import atomic_save_json
from ..stopping import StopRequest
from .jobs import DONE, FAILED, RUNNING, Job, job_done, now, read_json, state_path

log = logging.getLogger(__name__)


def _scheduler_id() -> str | None:
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID")


class JobState:
    """The job's own account in state/<key>.json: one entry per attempt (host, scheduler id, where training
    started, how it ended). Only rank 0 writes it; without a sweep folder it is kept in memory."""

    def __init__(self, sweep_dir, job: Job):
        self.path = state_path(sweep_dir, job) if sweep_dir is not None else None
        self.data = (read_json(self.path) if self.path else None) or {"job": job.id, "attempts": []}

    def _save(self):
        if self.path is not None:
            atomic_save_json(self.data, self.path)

    @property
    def attempt(self) -> dict:
        return self.data["attempts"][-1]

    def start(self):
        for attempt in self.data["attempts"]:
            if "outcome" not in attempt:
                attempt["outcome"] = "killed without warning (the next attempt resumed from the last checkpoint)"
        self.data["attempts"].append({"started": now(), "host": socket.gethostname(), "pid": os.getpid(),
                                      "scheduler_id": _scheduler_id(),
                                      "slurm_restarts": int(os.environ.get("SLURM_RESTART_COUNT", 0))})
        self.data.update(state=RUNNING, error=None)
        self._save()

    def note(self, **values):
        self.attempt.update(values)
        self._save()

    def end(self, state: str, outcome: str, error: str | None = None):
        self.attempt.update(ended=now(), outcome=outcome)
        self.data.update(state=state, error=error)
        self._save()


def _export_distributed() -> int:
    """Rank of this task; with several tasks per job, export the torchrun variables (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/PORT) that `stego.runtime.distributed` reads."""
    try:
        import submitit

        env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job (a direct call)
        return int(os.environ.get("RANK", "0"))
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return env.global_rank


def run_job(job: Job, sweep_dir=None, should_stop=None) -> dict:
    """The job function: run one job (or skip it when its records exist) and return a short summary.

    Every task of a multi-task job calls it; tasks train together (data parallel) and rank 0 evaluates.
    should_stop: a `SignalStop` passed to `train` (set by the end-of-time signal); a stopped training raises
    TrainingStopped, with the attempt left for the requeue to close. An error after the scheduler's SIGTERM (say,
    a DataLoader worker it killed first) also leaves the attempt open: the next attempt records it as killed.
    """
    from ..train import TrainingStopped

    if not logging.getLogger().handlers:  # a job process: log progress to the job's log file
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rank = _export_distributed()
    if job_done(job):
        return {"job": job.id, "status": DONE, "skipped": True, "records": job.records}
    state = JobState(sweep_dir if rank == 0 else None, job)
    state.start()
    try:
        if job.entry is not None:
            record = _call_entry(job)
        else:
            record = _train_and_evaluate(job, rank, state, should_stop)
        missing = [path for path in job.records if job.entry is not None and not Path(path).is_file()]
        if missing:
            raise StegoError(f"job {job.id}: {job.entry} returned without writing {', '.join(missing)}")
    except TrainingStopped as stopped:
        state.note(stopped_at=stopped.iteration)
        raise
    except (Exception, KeyboardInterrupt) as err:
        if should_stop is not None and should_stop.terminated:
            log.warning("job %s is being killed by the scheduler (SIGTERM): %s: %s", job.id, type(err).__name__, err)
        else:
            state.end(FAILED, "failed", f"{type(err).__name__}: {err}")
        raise
    state.end(DONE, "done")
    if job.entry is None and rank == 0:  # the preset job's record, complete with its attempts, written last
        from .. import records

        record.sweep = {"job": job.id, "attempts": state.data["attempts"]}
        records.write(record, job.records[0])
    return {"job": job.id, "status": DONE, "skipped": False, "records": job.records}


def _call_entry(job: Job):
    module_name, function = job.entry.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise StegoError(f"job {job.id}: cannot import {module_name} ({err}); submit the sweep from the folder "
                         f"that holds it (e.g. the repository root) or install it") from None
    if not callable(getattr(module, function, None)):
        raise StegoError(f"job {job.id}: {module_name} has no function {function}")
    return getattr(module, function)(**job.args)


def _train_and_evaluate(job: Job, rank: int, state: JobState, should_stop=None):
    """Train (resuming from the run folder's checkpoint) unless finished, then evaluate on rank 0; returns the
    evaluation record (None on other ranks). A stop asked during the last steps ends the job before evaluating."""
    from ..checkpoint import load_checkpoint
    from ..evaluate import run_eval, validator
    from ..runs import RunDir
    from ..train import TrainingStopped, train

    cfg = job.config()
    run = RunDir(job.out)
    if run.finished(cfg.train.iterations):
        checkpoint = run.evaluated(cfg.train.select_on_val)
        state.note(start_iteration=cfg.train.iterations)
    else:
        start = load_checkpoint(run.checkpoint)["iteration"] if run.checkpoint.exists() else 0
        state.note(start_iteration=start)
        listening = should_stop.during_training() if should_stop is not None else contextlib.nullcontext()
        with listening:
            checkpoint = train(cfg, run.path, resume=True, validate=validator(cfg), should_stop=should_stop)
        if should_stop is not None and should_stop.signal is not None:  # asked in the last step: requeue
            raise TrainingStopped(cfg.train.iterations, run.checkpoint)
    return run_eval(cfg, checkpoint, job.records[0]) if rank == 0 else None


class SignalStop(StopRequest):
    """The end-of-time signal's stop request: honoured once a training step has read it (`train` then checkpoints
    after the step and stops); before that, or after training, `fallback` (submitit's handler) runs at once.
    Processes forked from the job (DataLoader workers, which SLURM signals too) ignore it: else a worker would run
    submitit's handler as rank 0 and requeue the job itself. It also notes SIGTERM (`terminated`), which SLURM
    sends before its kill on a requeue, cancel or time limit, so that the error that follows is not the job's."""

    def __init__(self, fallback, terminate_fallback=None):
        super().__init__()
        self.fallback = fallback
        self.terminate_fallback = terminate_fallback
        self.listening = False
        self.terminated = False

    def __call__(self) -> bool:
        self.listening = True
        return super().__call__()

    def on_signal(self, signum, frame) -> None:
        if not self.in_owner():  # a DataLoader worker forked from the job: SLURM signals it too
            return
        if not self.listening:
            self.fallback(signum, frame)
            return
        log.warning("%s: checkpointing after this training step, then requeueing", signal.Signals(signum).name)
        self.set(signum)

    def on_terminate(self, signum, frame) -> None:
        if not self.in_owner():
            return
        self.terminated = True
        if callable(self.terminate_fallback):
            self.terminate_fallback(signum, frame)

    @contextlib.contextmanager
    def during_training(self):
        """Listen for the rest of training only (evaluation is not stoppable: the fallback requeues it)."""
        try:
            yield self
        finally:
            self.listening = False


class Requeueable:
    """What is submitted: calls `run_job`. On SLURM's end-of-time or preemption signal (USR2) during training, the
    step in flight finishes (a validation in flight stops at its next batch and is owed), a checkpoint is saved,
    and then submitit's handler runs: it calls `checkpoint` (which notes the signal and resubmits the same job)
    and requeues the job, which resumes from that checkpoint.
    Outside training (KNN mining, evaluation) submitit's handler runs at once and the requeued job redoes that
    stage, resuming training from its newest checkpoint.
    """

    RANK_WAIT_S = 600
    """How long a rank other than 0 waits, after a stop, for rank 0's requeue to end the job."""

    def __init__(self, cpus: int | None = None):
        self.cpus = cpus
        """CPUs per task: torch's thread count in the job (else torch would use every core of the node)."""
        self.stopped_at: int | None = None

    def __call__(self, job: Job, sweep_dir=None) -> dict:
        from submitit import JobEnvironment

        from ..train import TrainingStopped

        if self.cpus:
            import torch

            torch.set_num_threads(self.cpus)
        usr_sig = JobEnvironment._usr_sig()
        submitit_handler = signal.getsignal(usr_sig)
        if not callable(submitit_handler):  # not under submitit's signal handling (debug executor, direct call)
            return run_job(job, sweep_dir)
        term_handler = signal.getsignal(signal.SIGTERM)
        stop = SignalStop(submitit_handler, term_handler)
        signal.signal(usr_sig, stop.on_signal)
        signal.signal(signal.SIGTERM, stop.on_terminate)
        try:
            return run_job(job, sweep_dir, stop)
        except TrainingStopped as stopped:
            self.stopped_at = stopped.iteration
            signal.signal(usr_sig, submitit_handler)
            submitit_handler(stop.signal, None)  # rank 0: checkpoint() -> requeue -> exit
            _wait_for_requeue(self.RANK_WAIT_S)
            raise
        finally:
            signal.signal(usr_sig, submitit_handler)
            signal.signal(signal.SIGTERM, term_handler)

    def checkpoint(self, job: Job, sweep_dir=None):
        from submitit.helpers import DelayedSubmission

        state = JobState(sweep_dir, job)
        if state.data["attempts"]:
            if self.stopped_at is not None:
                state.end(RUNNING, f"requeued on signal (checkpoint saved at iteration {self.stopped_at})")
            else:
                state.end(RUNNING, "requeued on signal (resumes from the last checkpoint)")
        return DelayedSubmission(Requeueable(self.cpus), job, sweep_dir)


def _wait_for_requeue(seconds: float) -> None:
    """Ranks other than 0 end like submitit's requeue does: the local executor's by exit code, SLURM's by
    killing the job, which they wait for rather than exit and maybe end the job step first."""
    if "SUBMITIT_LOCAL_JOB_ID" in os.environ:
        from submitit.local.local import LOCAL_REQUEUE_RETURN_CODE

        sys.exit(LOCAL_REQUEUE_RETURN_CODE)
    log.info("waiting for rank 0 to requeue the job")
    time.sleep(seconds)
