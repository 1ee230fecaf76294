"""`stego sweep submit …` and `stego sweep status DIR`."""
import argparse
import json
from pathlib import Path

from ..errors import StegoError
from .jobs import DONE, EXECUTORS, JOBS_FILE, check_unique, grid_jobs, load_jobs, parse_grid, parse_seeds
from .status import format_status, sweep_status, wait_for
from .submit import Resources, merge_jobs, submit


def _submit_cli(args) -> int:
    from ..slurm_queue import parse_time_limit

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
    p.add_argument("jobs", nargs="*", default=[], help="jobs files (YAML), e.g. from python -m benchmarks sweep")
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
