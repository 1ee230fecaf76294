"""Sweeps: many runs submitted as one submitit job array (SLURM), as local processes, or in this process.

A sweep is a folder: jobs.yaml (the job specs), submissions.json (what was submitted when, under which scheduler
id), state/ (one file per job, written by the job: attempts, where each attempt's training started, errors),
logs/ (submitit's pickles and logs) and runs/ (the run folders of preset jobs).

A job is plain data (`Job`): either a preset run (preset + ablation + overrides + seed -> train, evaluate, one
record in its run folder) or a plug-in run (`entry: "module:function"` called with `args`, writing the records
the job names; the benchmark harness exports its table rows this way, so `stego` never imports it). A job is
done when all its records exist; submitting a sweep again runs only its missing and failed jobs.

Jobs are submitit `Checkpointable`s: when SLURM signals the end of the time limit or a preemption (USR2), training
finishes its step, saves a checkpoint and the job requeues itself; the requeued job resumes from that checkpoint.
A job killed without warning (node failure, `scontrol requeue`) resumes from its last periodic checkpoint
(train.checkpoint_every). Records are written atomically, last.
"""
import argparse
import contextlib
import fcntl
import importlib
import itertools
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import MissingFileError, StegoError
from .io import atomic_save_json, atomic_write
from .stopping import StopRequest

log = logging.getLogger(__name__)

JOBS_FILE = "jobs.yaml"
SUBMISSIONS = "submissions.json"
STATE_DIR = "state"
LOG_DIR = "logs"
RUN_DIR = "runs"
RECORD = "record.json"
EXECUTORS = ("slurm", "local", "debug")
DONE, RUNNING, FAILED, MISSING, UNKNOWN = "done", "running", "failed", "missing", "unknown"
RETRY = (FAILED, MISSING)
"""The statuses a re-submission runs again."""


@dataclass
class Job:
    """One run of a sweep: what to run, and the records whose existence says it is done."""

    id: str
    records: list[str]
    preset: str | None = None
    ablation: str | None = None
    overrides: list[str] = field(default_factory=list)
    seed: int = 0
    out: str | None = None
    """Run folder of a preset job (its record is out/record.json)."""
    entry: str | None = None
    """A plug-in job's function, 'module:function', called as function(**args)."""
    args: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.id or not self.records:
            raise StegoError(f"job {self.id!r}: a job needs an id and at least one record path")
        if (self.entry is None) == (self.preset is None):
            raise StegoError(f"job {self.id!r}: give either a preset (a preset run) or an entry 'module:function'")
        if self.entry is not None and not re.fullmatch(r"[\w.]+:\w+", self.entry):
            raise StegoError(f"job {self.id!r}: entry {self.entry!r} must look like package.module:function")
        if self.preset is not None and self.out is None:
            raise StegoError(f"job {self.id!r}: a preset job needs its run folder (out)")

    @property
    def key(self) -> str:
        return job_key(self.id)

    def to_dict(self) -> dict:
        values = {"id": self.id, "records": list(self.records)}
        if self.entry is not None:
            return {**values, "entry": self.entry, "args": dict(self.args)}
        return {**values, "preset": self.preset, "ablation": self.ablation, "overrides": list(self.overrides),
                "seed": self.seed, "out": self.out}

    def config(self):
        """The run config of a preset job: preset, then ablation, then overrides, then the seed."""
        from .config import load_config

        return load_config(self.preset, [*self.overrides, f"train.seed={self.seed}"], self.ablation)


def job_key(job_id: str) -> str:
    """A job id as a file name (state/<key>.json, runs/<key>/)."""
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", job_id).strip("_")


def job_from_dict(values: dict, source: str = "jobs") -> Job:
    known = {"id", "records", "preset", "ablation", "overrides", "seed", "out", "entry", "args"}
    if not isinstance(values, dict):
        raise StegoError(f"{source}: each job must be a mapping with id, records and preset or entry")
    unknown = sorted(set(values) - known)
    if unknown:
        raise StegoError(f"{source}: job {values.get('id')!r} has unknown key(s) {', '.join(unknown)}; "
                         f"valid: {', '.join(sorted(known))}")
    values = dict(values)
    values["records"] = list(values.get("records") or [])
    values["overrides"] = list(values.get("overrides") or [])
    values["args"] = dict(values.get("args") or {})
    return Job(**values)


def load_jobs(path) -> list[Job]:
    """The jobs of a jobs file (YAML or JSON: a list of jobs, or a mapping with a 'jobs' list)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"jobs file {path} not found: write one with `python -m benchmarks.sweep_rows` "
                               f"or give --preset and --grid")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise StegoError(f"{path}: not valid YAML ({str(err).splitlines()[0]}); re-export the jobs file") from None
    entries = data.get("jobs") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise StegoError(f"{path}: expected a list of jobs (or a mapping with a 'jobs' list)")
    jobs = [job_from_dict(entry, str(path)) for entry in entries]
    check_unique(jobs, str(path))
    return jobs


def dump_jobs(jobs: list[Job]) -> str:
    """The text of a jobs file."""
    return yaml.safe_dump({"jobs": [job.to_dict() for job in jobs]}, sort_keys=False)


def save_jobs(jobs: list[Job], path) -> None:
    with atomic_write(path, "w") as f:
        f.write(dump_jobs(jobs))


def check_unique(jobs: list[Job], source: str) -> None:
    for attr in ("id", "key"):
        seen = {}
        for job in jobs:
            name = getattr(job, attr)
            if name in seen:
                raise StegoError(f"{source}: jobs {seen[name]!r} and {job.id!r} share the {attr} {name!r}; "
                                 f"give them distinct ids")
            seen[name] = job.id


def parse_seeds(text) -> list[int]:
    """'3' -> [0, 1, 2]; '0,4,7' -> [0, 4, 7]."""
    text = str(text).strip()
    try:
        if "," in text:
            return [int(s) for s in text.split(",") if s.strip()]
        return list(range(int(text)))
    except ValueError:
        raise StegoError(f"seeds {text!r}: give a count (3 = seeds 0, 1, 2) or a list (0,4,7)") from None


def parse_grid(texts) -> dict[str, list[str]]:
    """['loss.b_rand=0.2,0.3', 'data.crop=none'] -> {'loss.b_rand': ['0.2', '0.3'], 'data.crop': ['none']}: each
    value is applied as the override text 'key=value', exactly as on the `stego train` command line."""
    grid = {}
    for text in texts or []:
        key, eq, values = text.partition("=")
        parts = [v.strip() for v in values.split(",")]
        if not eq or not key.strip() or not all(parts):
            raise StegoError(f"grid {text!r} must look like section.key=v1,v2 (e.g. loss.b_rand=0.2,0.3)")
        grid[key.strip()] = parts
    return grid


def grid_jobs(preset: str, sweep_dir, grid: dict | None = None, seeds=(0,), overrides=(), ablation=None) -> list[Job]:
    """Preset jobs for every combination of the grid's values and every seed; each config is checked now."""
    from .config import preset_path

    path = preset_path(preset)
    preset_ref = str(path.resolve()) if Path(preset).suffix in (".yaml", ".yml") else preset
    name = Path(preset).stem + (f"-{ablation}" if ablation else "")
    runs = Path(sweep_dir).resolve() / RUN_DIR
    keys = list((grid or {}).keys())
    jobs = []
    for values in itertools.product(*[grid[k] for k in keys]):
        settings = [f"{k}={v}" for k, v in zip(keys, values)]
        run_name = "/".join([name, ",".join(settings)]) if settings else name
        for seed in seeds:
            job_id = f"{run_name}/seed{seed}"
            out = runs / job_key(job_id)
            job = Job(job_id, [str(out / RECORD)], preset_ref, ablation,
                      [*overrides, *settings, f"name={json.dumps(run_name)}"], seed, str(out))
            job.config()
            jobs.append(job)
    check_unique(jobs, "grid")
    return jobs


# ---------------------------------------------------------------------------------------------------------------
# Inside a job


def _scheduler_id() -> str | None:
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def state_path(sweep_dir, job: Job) -> Path:
    return Path(sweep_dir) / STATE_DIR / f"{job.key}.json"


def read_json(path) -> dict | None:
    """The JSON in `path`, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


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
        self.data["attempts"].append({"started": _now(), "host": socket.gethostname(), "pid": os.getpid(),
                                      "scheduler_id": _scheduler_id(),
                                      "slurm_restarts": int(os.environ.get("SLURM_RESTART_COUNT", 0))})
        self.data.update(state=RUNNING, error=None)
        self._save()

    def note(self, **values):
        self.attempt.update(values)
        self._save()

    def end(self, state: str, outcome: str, error: str | None = None):
        self.attempt.update(ended=_now(), outcome=outcome)
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


def job_done(job: Job) -> bool:
    """All records exist and are JSON objects (a preset job's record also carries its 'sweep' section, which is
    written last)."""
    for path in job.records:
        record = read_json(path)
        if not isinstance(record, dict) or (job.entry is None and "sweep" not in record):
            return False
    return True


def run_job(job: Job, sweep_dir=None, should_stop=None) -> dict:
    """The job function: run one job (or skip it when its records exist) and return a short summary.

    Every task of a multi-task job calls it; tasks train together (data parallel) and rank 0 evaluates.
    should_stop: a `SignalStop` passed to `train` (set by the end-of-time signal); a stopped training raises
    TrainingStopped, with the attempt left for the requeue to close.
    """
    from .train import TrainingStopped

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
        state.end(FAILED, "failed", f"{type(err).__name__}: {err}")
        raise
    state.end(DONE, "done")
    if job.entry is None and rank == 0:  # the preset job's record, complete with its attempts, written last
        record["sweep"] = {"job": job.id, "attempts": state.data["attempts"]}
        atomic_save_json(record, job.records[0])
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


def _train_and_evaluate(job: Job, rank: int, state: JobState, should_stop=None) -> dict | None:
    """Train (resuming from the run folder's checkpoint) unless finished, then evaluate on rank 0; returns the
    evaluation record (None on other ranks). A stop asked during the last steps ends the job before evaluating."""
    from .evaluate import run_eval, validator
    from .train import BEST, CHECKPOINT, TrainingStopped, load_checkpoint, train

    cfg = job.config()
    out = Path(job.out)
    summary = read_json(out / "train_summary.json")
    if summary and summary.get("iterations") == cfg.train.iterations:
        best = out / BEST
        checkpoint = best if cfg.train.select_on_val and best.exists() else out / CHECKPOINT
        state.note(start_iteration=cfg.train.iterations)
    else:
        start = load_checkpoint(out / CHECKPOINT)["iteration"] if (out / CHECKPOINT).exists() else 0
        state.note(start_iteration=start)
        listening = should_stop.during_training() if should_stop is not None else contextlib.nullcontext()
        with listening:
            checkpoint = train(cfg, out, resume=True, validate=validator(cfg), should_stop=should_stop)
        if should_stop is not None and should_stop.signal is not None:  # asked in the last step: requeue
            raise TrainingStopped(cfg.train.iterations, out / CHECKPOINT)
    return run_eval(cfg, checkpoint, job.records[0]) if rank == 0 else None


class SignalStop(StopRequest):
    """The end-of-time signal's stop request: honoured once a training step has read it (`train` then checkpoints
    after the step and stops); before that, or after training, `fallback` (submitit's handler) runs at once."""

    def __init__(self, fallback):
        super().__init__()
        self.fallback = fallback
        self.listening = False

    def __call__(self) -> bool:
        self.listening = True
        return super().__call__()

    def on_signal(self, signum, frame) -> None:
        if not self.listening:
            self.fallback(signum, frame)
            return
        log.warning("%s: checkpointing after this training step, then requeueing", signal.Signals(signum).name)
        self.set(signum)

    @contextlib.contextmanager
    def during_training(self):
        """Listen for the rest of training only (evaluation is not stoppable: the fallback requeues it)."""
        try:
            yield self
        finally:
            self.listening = False


class Requeueable:
    """What is submitted: calls `run_job`. On SLURM's end-of-time or preemption signal (USR2) during training, the
    step in flight finishes, a checkpoint is saved, and then submitit's handler runs: it calls `checkpoint`
    (which notes the signal and resubmits the same job) and requeues the job, which resumes from that checkpoint.
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

        from .train import TrainingStopped

        if self.cpus:
            import torch

            torch.set_num_threads(self.cpus)
        usr_sig = JobEnvironment._usr_sig()
        submitit_handler = signal.getsignal(usr_sig)
        if not callable(submitit_handler):  # not under submitit's signal handling (debug executor, direct call)
            return run_job(job, sweep_dir)
        stop = SignalStop(submitit_handler)
        signal.signal(usr_sig, stop.on_signal)
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


# ---------------------------------------------------------------------------------------------------------------
# Submitting


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

        if self.executor == "slurm" and shutil.which("sbatch") is None:
            raise StegoError("sbatch not found: run on a SLURM login node, or use --executor local (or debug)")
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


@contextlib.contextmanager
def _locked(sweep_dir: Path):
    """One submission at a time per sweep folder."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sweep_jobs(sweep_dir) -> list[Job]:
    path = Path(sweep_dir) / JOBS_FILE
    if not path.exists():
        raise MissingFileError(f"{sweep_dir} is not a sweep folder (no {JOBS_FILE}); submit one with "
                               f"`stego sweep submit JOBS.yaml --dir {sweep_dir}`")
    return load_jobs(path)


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


def read_submissions(sweep_dir) -> dict:
    return read_json(Path(sweep_dir) / SUBMISSIONS) or {}


def _note_submission(sweep_dir: Path, job: Job, executor: str, scheduler_id: str | None):
    submissions = read_submissions(sweep_dir)
    submissions.setdefault(job.key, []).append({"executor": executor, "scheduler_id": scheduler_id,
                                                "host": socket.gethostname(), "submitted": _now()})
    atomic_save_json(submissions, sweep_dir / SUBMISSIONS)


def submit(sweep_dir, jobs: list[Job], resources: Resources, wait: bool = False, poll_s: float = 5.0) -> list[Job]:
    """Add `jobs` to the sweep and submit those of its jobs that are missing or failed; returns the submitted.

    slurm: one job array (at most max_parallel running at once); local: one process group per job (at most
    max_parallel at once: the call then blocks until the last is started); debug: one after another in this
    process. wait: block until no submitted job is queued or running.
    """
    sweep_dir = Path(sweep_dir).resolve()
    with _locked(sweep_dir):
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
    task = Requeueable(resources.cpus)
    with executor.batch():
        handles = [executor.submit(task, job, str(sweep_dir)) for job in jobs]
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


# ---------------------------------------------------------------------------------------------------------------
# Status


@dataclass
class JobStatus:
    job: Job
    status: str
    detail: str
    scheduler_id: str | None = None
    attempts: int = 0


def _scheduler_states(submissions: dict) -> tuple[dict, str | None]:
    """({scheduler id: state}, error) for the latest SLURM submission of every job."""
    from .slurm_queue import QueueError, slurm_states

    ids = [entries[-1]["scheduler_id"] for entries in submissions.values()
           if entries and entries[-1]["executor"] == "slurm"]
    if not ids:
        return {}, None
    try:
        return slurm_states(ids), None
    except QueueError as err:
        return {}, str(err)


def job_status(job: Job, entries: list, state: dict | None, queue: dict, queue_error: str | None,
               log_dir: Path | None = None) -> JobStatus:
    """Status of one job from its records, its submissions, its own state file and the scheduler's answer."""
    from .slurm_queue import ENDED, process_alive

    attempts = len((state or {}).get("attempts", []))
    if job_done(job):
        return JobStatus(job, DONE, ", ".join(job.records), attempts=attempts)
    if not entries:
        return JobStatus(job, MISSING, "never submitted", attempts=attempts)
    last = entries[-1]
    sid = last["scheduler_id"]
    progress = _progress(job, state)
    if last["executor"] == "slurm":
        if queue_error is not None:
            return JobStatus(job, UNKNOWN, queue_error, sid, attempts)
        scheduler = queue.get(sid)
        if scheduler is not None and scheduler.split()[0] not in ENDED:
            return JobStatus(job, RUNNING, f"{scheduler}{progress}", sid, attempts)
        ended = scheduler or "no longer in the queue"
    elif last["executor"] == "local":
        alive = process_alive(sid, last["host"])
        if alive is None:
            return JobStatus(job, UNKNOWN, f"local process {sid} ran on {last['host']}", sid, attempts)
        if alive:
            return JobStatus(job, RUNNING, f"local process {sid}{progress}", sid, attempts)
        ended = "process ended"
    else:
        ended = "debug run ended"
    if state is None:
        why = "never started (cancelled while queued?)"
    else:
        why = state.get("error") or "no record: cancelled, killed, out of memory or out of time"
    logs = f"; logs: {log_dir / (sid + '_0_log.err')}" if log_dir is not None and sid else ""
    return JobStatus(job, FAILED, f"{ended}: {why}{logs}", sid, attempts)


def _progress(job: Job, state: dict | None) -> str:
    """', attempt N (from iteration K)' for a preset job that has started."""
    attempts = (state or {}).get("attempts") or []
    if not attempts:
        return ""
    start = attempts[-1].get("start_iteration")
    return f", attempt {len(attempts)}" + (f" from iteration {start}" if start else "")


def sweep_status(sweep_dir) -> list[JobStatus]:
    """The status of every job of the sweep: done, running (queued or running), failed, missing or unknown."""
    sweep_dir = Path(sweep_dir)
    jobs = sweep_jobs(sweep_dir)
    submissions = read_submissions(sweep_dir)
    latest = {key: entries for key, entries in submissions.items() if key in {j.key for j in jobs}}
    queue, queue_error = _scheduler_states(latest)
    return [job_status(job, submissions.get(job.key, []), read_json(state_path(sweep_dir, job)), queue,
                       queue_error, sweep_dir / LOG_DIR) for job in jobs]


def wait_for(sweep_dir, poll_s: float = 5.0, timeout_s: float | None = None) -> list[JobStatus]:
    """Poll until no job of the sweep is running (queued, running or requeued); returns the final statuses."""
    began = time.monotonic()
    while True:
        statuses = sweep_status(sweep_dir)
        if not any(s.status == RUNNING for s in statuses):
            return statuses
        if timeout_s is not None and time.monotonic() - began > timeout_s:
            raise StegoError(f"sweep {sweep_dir}: jobs still running after {timeout_s:.0f} s")
        time.sleep(poll_s)


def format_status(statuses: list[JobStatus]) -> str:
    """A table of the jobs and a count per status."""
    width = max([len(s.job.id) for s in statuses] + [3])
    lines = [f"{'job':{width}s}  {'status':8s}  {'scheduler id':12s}  detail"]
    for s in statuses:
        lines.append(f"{s.job.id:{width}s}  {s.status:8s}  {s.scheduler_id or '-':12s}  {s.detail}")
    counts = {name: sum(s.status == name for s in statuses) for name in (DONE, RUNNING, FAILED, MISSING, UNKNOWN)}
    lines.append(", ".join(f"{n} {name}" for name, n in counts.items() if n or name != UNKNOWN))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Command line


def _submit_cli(args) -> int:
    from .slurm_queue import parse_time_limit

    sweep_dir = Path(args.dir)
    jobs = [job for path in args.jobs for job in load_jobs(path)]
    seeds = parse_seeds(args.seeds)
    if args.preset:
        jobs += grid_jobs(args.preset, sweep_dir, parse_grid(args.grid), seeds, args.set, args.ablation)
    elif args.grid or args.set or args.ablation:
        raise StegoError("--grid, --set and --ablation need --preset")
    if not jobs and not (sweep_dir / JOBS_FILE).exists():
        raise StegoError("nothing to submit: give a jobs file, or --preset (with --grid), or a sweep --dir that "
                         "already holds jobs.yaml")
    check_unique(jobs, "the command line")
    resources = Resources(args.executor, args.partition, args.gpus, args.tasks_per_node, args.cpus, args.mem_gb,
                          parse_time_limit(args.time), args.constraint, args.account, args.max_parallel, args.name)
    if args.dry_run:
        merged = merge_jobs(sweep_dir.resolve(), jobs)
        print(format_status(sweep_status(sweep_dir)))
        print(f"dry run: {len(merged)} jobs in {sweep_dir / JOBS_FILE}; nothing submitted")
        return 0
    submitted = submit(sweep_dir, jobs, resources, wait=args.wait)
    print(f"submitted {len(submitted)} job(s) to {resources.executor}; status: stego sweep status {sweep_dir}")
    if args.wait or resources.executor == "debug":
        statuses = sweep_status(sweep_dir)
        print(format_status(statuses))
        return 0 if all(s.status == DONE for s in statuses) else 1
    return 0


def _status_cli(args) -> int:
    statuses = wait_for(args.dir, poll_s=args.poll) if args.wait else sweep_status(args.dir)
    if args.json:
        print(json.dumps([{"job": s.job.id, "status": s.status, "detail": s.detail, "scheduler_id": s.scheduler_id,
                           "attempts": s.attempts, "records": s.job.records} for s in statuses], indent=2))
    else:
        print(format_status(statuses))
    return 0 if all(s.status == DONE for s in statuses) else 1


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Register `stego sweep submit …` and `stego sweep status DIR`."""
    parser = subparsers.add_parser("sweep", help="run many jobs as a SLURM job array (or locally) through submitit",
                                   description="Submit sweeps and report on them (docs/sweeps.md).")
    group = parser.add_subparsers(dest="sweep_command", metavar="COMMAND", required=True)

    p = group.add_parser("submit", help="submit a sweep's missing and failed jobs",
                         description="Add jobs (from jobs files and/or a preset grid) to the sweep folder and submit "
                                     "every job of the sweep that is missing or failed; done and running jobs are "
                                     "skipped, so the same command re-submits a sweep.")
    p.add_argument("jobs", nargs="*", default=[], help="jobs files (YAML), e.g. from python -m benchmarks.sweep_rows")
    p.add_argument("--dir", required=True, help="the sweep folder (jobs.yaml, submissions, state, logs, runs)")
    p.add_argument("--preset", help="preset jobs: preset name or YAML file")
    p.add_argument("--ablation", help="an ablation switch for the preset jobs (stego/presets/_ablations.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fixed override (repeatable)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="override values to sweep (repeatable: the product of all grids)")
    p.add_argument("--seeds", default="1", help="preset jobs: a count (3 = seeds 0,1,2) or a list (0,4,7)")
    p.add_argument("--executor", choices=EXECUTORS, default="slurm",
                   help="slurm (job array), local (background processes) or debug (in this process)")
    p.add_argument("--partition", help="SLURM partition")
    p.add_argument("--gpus", type=int, default=0, help="GPUs per job (one task per GPU, data-parallel training)")
    p.add_argument("--tasks-per-node", type=int, help="tasks per job (default: --gpus, at least 1)")
    p.add_argument("--cpus", type=int, help="CPUs per task")
    p.add_argument("--mem-gb", type=float, help="memory per job, GB")
    p.add_argument("--time", default="60", help="time limit per job, SLURM format (90, 12:00:00, 1-00:00:00)")
    p.add_argument("--constraint", help="SLURM node constraint (e.g. a100)")
    p.add_argument("--account", help="SLURM account")
    p.add_argument("--max-parallel", type=int, help="most jobs running at once")
    p.add_argument("--name", default="stego-sweep", help="job name")
    p.add_argument("--wait", action="store_true", help="block until no job is queued or running, then report")
    p.add_argument("--dry-run", action="store_true", help="write jobs.yaml and show the status; submit nothing")
    p.set_defaults(func=_submit_cli)

    p = group.add_parser("status", help="list the jobs of a sweep as done, running, failed or missing",
                         description="Exit status 0 when every job is done, else 1.")
    p.add_argument("dir", help="the sweep folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--wait", action="store_true", help="wait until no job is queued or running")
    p.add_argument("--poll", type=float, default=10.0, help="seconds between checks with --wait")
    p.set_defaults(func=_status_cli)
    return parser

