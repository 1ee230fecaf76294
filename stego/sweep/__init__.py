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
from .cli import add_cli
from .jobs import (DONE, EXECUTORS, FAILED, MISSING, RUNNING, UNKNOWN, Job, dump_jobs, grid_jobs, job_done, load_jobs,
                   parse_grid, parse_seeds, read_json, read_submissions, save_jobs, state_path, sweep_jobs)
from .run import JobState, Requeueable, SignalStop, run_job
from .status import JobStatus, format_status, sweep_status, wait_for
from .submit import Resources, merge_jobs, submit

__all__ = ["DONE", "EXECUTORS", "FAILED", "MISSING", "RUNNING", "UNKNOWN", "Job", "JobState", "JobStatus",
           "Requeueable", "Resources", "SignalStop", "add_cli", "dump_jobs", "format_status", "grid_jobs",
           "job_done", "load_jobs", "merge_jobs", "parse_grid", "parse_seeds", "read_json", "read_submissions",
           "run_job", "save_jobs", "state_path", "submit", "sweep_jobs", "sweep_status", "wait_for"]
