"""Each job's status (done, running, failed, missing, unknown) from its records, the submissions, its state file
and the scheduler's answer."""
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import StegoError
from .jobs import (DONE, FAILED, LOG_DIR, MISSING, RUNNING, UNKNOWN, Job, job_done, read_json, read_submissions,
                   state_path, sweep_jobs)


@dataclass
class JobStatus:
    job: Job
    status: str
    detail: str
    scheduler_id: str | None = None
    attempts: int = 0


def _scheduler_states(submissions: dict) -> tuple[dict, str | None]:
    """({scheduler id: state}, error) for the latest SLURM submission of every job."""
    from ..slurm_queue import QueueError, slurm_states

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
    from ..slurm_queue import ENDED, process_alive

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
