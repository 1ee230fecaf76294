"""Submitting a sweep's missing and failed jobs: one submitit job array on SLURM, background processes (local) or
this process (debug); one submission at a time per sweep folder."""
import logging
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import StegoError
from ..io import atomic_save_json, waiting_lock
from .jobs import (DONE, EXECUTORS, JOBS_FILE, LOG_DIR, RETRY, RUNNING, SUBMISSIONS, UNKNOWN, Job, check_unique,
                   load_jobs, now, read_submissions, save_jobs)
from .run import Requeueable
from .status import sweep_status, wait_for

log = logging.getLogger(__name__)


@dataclass
class Resources:
    """What each job of a submission asks for (SLURM), and how many run at once."""

    executor: str = "slurm"
    partition: str | None = None
    gpus: int = 0
    """GPUs per job; a job runs one task (process) per GPU, training data parallel."""
    tasks: int | None = None
    """Tasks (processes) per job; default max(gpus, 1)."""
    cpus: int | None = None
    """CPUs per task."""
    mem_gb: float | None = None
    time_min: int = 60
    constraint: str | None = None
    account: str | None = None
    max_parallel: int | None = None
    name: str = "stego-sweep"
    signal_delay_s: int = 90

    def __post_init__(self):
        if self.executor not in EXECUTORS:
            raise StegoError(f"executor {self.executor!r}: choose one of {', '.join(EXECUTORS)}")
        if self.gpus < 0 or (self.tasks is not None and self.tasks < 1) or (self.max_parallel or 1) < 1:
            raise StegoError("gpus must be ≥ 0, tasks and max-parallel ≥ 1")

    def executor_for(self, folder):
        """A submitit executor with these resources; its logs and pickles go to `folder`."""
        import submitit

        if self.executor == "slurm":
            check_slurm()
        executor = submitit.AutoExecutor(folder=folder, cluster=self.executor)
        params = {"timeout_min": self.time_min, "gpus_per_node": self.gpus, "name": self.name,
                  "tasks_per_node": self.tasks or max(self.gpus, 1), "cpus_per_task": self.cpus, "mem_gb": self.mem_gb}
        if self.executor == "slurm":
            params.update(slurm_partition=self.partition, slurm_constraint=self.constraint,
                          slurm_account=self.account, slurm_signal_delay_s=self.signal_delay_s,
                          slurm_array_parallelism=self.max_parallel or 256,
                          slurm_additional_parameters={"requeue": True})
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        return executor


NO_SLURM = "run where SLURM's commands reach a controller (a login node), or run the jobs here with --executor local"


def check_slurm() -> None:
    """One line, before any job is built, when SLURM cannot take a submission (no sbatch, no controller)."""
    if shutil.which("sbatch") is None:
        raise StegoError(f"--executor slurm: sbatch not found; {NO_SLURM} (or debug)")
    try:
        answer = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise StegoError(f"--executor slurm: sinfo did not answer ({type(err).__name__}); {NO_SLURM}") from None
    if answer.returncode != 0:
        reason = (answer.stderr.strip().splitlines() or [f"exit code {answer.returncode}"])[-1]
        raise StegoError(f"--executor slurm: SLURM is not reachable ({reason}); {NO_SLURM}")


def merge_jobs(sweep_dir: Path, new: list[Job]) -> list[Job]:
    """The sweep's jobs plus `new` ones, saved to jobs.yaml; a job id already there must have the same spec."""
    existing = load_jobs(sweep_dir / JOBS_FILE) if (sweep_dir / JOBS_FILE).exists() else []
    by_id = {job.id: job for job in existing}
    for job in new:
        old = by_id.get(job.id)
        if old is not None and old.to_dict() != job.to_dict():
            raise StegoError(f"job {job.id!r} in {sweep_dir / JOBS_FILE} was defined differently; "
                             f"use another --dir for changed settings")
        by_id.setdefault(job.id, job)
    jobs = list(by_id.values())
    check_unique(jobs, str(sweep_dir / JOBS_FILE))
    save_jobs(jobs, sweep_dir / JOBS_FILE)
    return jobs


def _note_submission(sweep_dir: Path, job: Job, executor: str, scheduler_id: str | None):
    submissions = read_submissions(sweep_dir)
    submissions.setdefault(job.key, []).append({"executor": executor, "scheduler_id": scheduler_id,
                                                "host": socket.gethostname(), "submitted": now()})
    atomic_save_json(submissions, sweep_dir / SUBMISSIONS)


def submit(sweep_dir, jobs: list[Job], resources: Resources, wait: bool = False, poll_s: float = 5.0) -> list[Job]:
    """Add `jobs` to the sweep and submit those of its jobs that are missing or failed; returns the submitted.

    slurm: one job array (at most max_parallel running at once); local: one process group per job (at most
    max_parallel at once: the call then blocks until the last is started); debug: one after another in this
    process. wait: block until no submitted job is queued or running.
    """
    sweep_dir = Path(sweep_dir).resolve()
    with waiting_lock(sweep_dir / ".lock"):  # one submission at a time per sweep folder
        all_jobs = merge_jobs(sweep_dir, jobs)
        statuses = sweep_status(sweep_dir)
        todo = [s.job for s in statuses if s.status in RETRY]
        held = [s for s in statuses if s.status == UNKNOWN]
        for s in held:
            log.warning("%s: not resubmitted, its state is unknown (%s)", s.job.id, s.detail)
        log.info("sweep %s: %d jobs; %d done, %d running, %d to submit", sweep_dir, len(all_jobs),
                 sum(s.status == DONE for s in statuses), sum(s.status == RUNNING for s in statuses), len(todo))
        if todo:
            executor = resources.executor_for(sweep_dir / LOG_DIR)
            {"slurm": _submit_array, "local": _submit_local, "debug": _submit_debug}[resources.executor](
                executor, sweep_dir, todo, resources)
    if wait:
        wait_for(sweep_dir, poll_s=poll_s)
    return todo


def _submit_array(executor, sweep_dir: Path, jobs: list[Job], resources: Resources):
    import submitit

    task = Requeueable(resources.cpus)
    try:
        with executor.batch():
            handles = [executor.submit(task, job, str(sweep_dir)) for job in jobs]
    except submitit.core.utils.FailedJobError as err:
        reason = (str(err).strip().splitlines() or ["sbatch failed"])[-1]
        raise StegoError(f"sbatch refused the job array ({reason}); check the resources asked for (--partition, "
                         f"--gpus, --time), or {NO_SLURM}") from None
    for job, handle in zip(jobs, handles):
        _note_submission(sweep_dir, job, "slurm", handle.job_id)
    log.info("submitted %d jobs as SLURM array %s", len(jobs), handles[0].job_id.split("_")[0])


def _submit_local(executor, sweep_dir: Path, jobs: list[Job], resources: Resources):
    limit = resources.max_parallel or len(jobs)
    task, running = Requeueable(resources.cpus), []
    for job in jobs:
        while len(running) >= limit:
            time.sleep(0.5)
            running = [h for h in running if not h.done()]
        handle = executor.submit(task, job, str(sweep_dir))
        running.append(handle)
        _note_submission(sweep_dir, job, "local", handle.job_id)
        log.info("%s: started as local process %s", job.id, handle.job_id)


def _submit_debug(executor, sweep_dir: Path, jobs: list[Job], resources: Resources):
    task = Requeueable()
    for job in jobs:
        handle = executor.submit(task, job, str(sweep_dir))
        _note_submission(sweep_dir, job, "debug", None)
        error = handle.exception()  # runs the job here; unlike result(), no post-mortem debugger on failure
        if error is not None:
            log.error("%s failed: %s", job.id, error)
