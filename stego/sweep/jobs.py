"""Job specs (`Job`, jobs files, preset grids × seeds) and the sweep folder's files: jobs.yaml, submissions.json and
the jobs' state files, read here and written by their owners."""
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import MissingFileError, StegoError
from ..io import atomic_write
from ..runs import RunDir


JOBS_FILE = "jobs.yaml"
SUBMISSIONS = "submissions.json"
STATE_DIR = "state"
LOG_DIR = "logs"
RUN_DIR = "runs"
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
        from ..config import load_config

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
        raise MissingFileError(f"jobs file {path} not found: write one with `python -m benchmarks sweep --table TABLE` "
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
    from ..config import preset_path

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
            job = Job(job_id, [str(RunDir(out).record)], preset_ref, ablation,
                      [*overrides, *settings, f"name={json.dumps(run_name)}"], seed, str(out))
            job.config()
            jobs.append(job)
    check_unique(jobs, "grid")
    return jobs


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def state_path(sweep_dir, job: Job) -> Path:
    return Path(sweep_dir) / STATE_DIR / f"{job.key}.json"


def read_json(path) -> dict | None:
    """The JSON in `path`, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def job_done(job: Job) -> bool:
    """All records exist and are JSON objects (a preset job's record also carries its 'sweep' section, which is
    written last)."""
    for path in job.records:
        record = read_json(path)
        if not isinstance(record, dict) or (job.entry is None and not record.get("sweep")):
            return False
    return True


def sweep_jobs(sweep_dir) -> list[Job]:
    path = Path(sweep_dir) / JOBS_FILE
    if not path.exists():
        raise MissingFileError(f"{sweep_dir} is not a sweep folder (no {JOBS_FILE}); submit one with "
                               f"`stego sweep submit JOBS.yaml --dir {sweep_dir}`")
    return load_jobs(path)


def read_submissions(sweep_dir) -> dict:
    return read_json(Path(sweep_dir) / SUBMISSIONS) or {}
