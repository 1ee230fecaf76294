"""Sweeps on a real SLURM: a one-node cluster on localhost started here (scripts/slurm_up.sh) and stopped at the end
(scripts/slurm_down.sh, every daemon by its pid file).

One job array of tiny synthetic runs goes through submitit: one running job is requeued by the administrator
(`scontrol requeue`, a kill without warning) and must resume from its last periodic checkpoint; one gets
submitit's preemption signal (USR2) and must checkpoint after its step in flight and resume from there. One job is
cancelled: the status report must say so, and submitting the sweep again must run that job only. A two-task job
trains data parallel through srun. Skips, saying why, where SLURM cannot be started (not root, no apt-get, no
package mirror).
"""
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from stego import sweep
from stego.cli import main
from stego.sweep import DONE, FAILED, RUNNING, Resources, grid_jobs, submit, sweep_status
from stego.checkpoint import load_checkpoint
from tests.test_sweep import (_checkpoint_iteration, _wait, attempt_starts, log_iterations, make_tiny_scenes,
                              write_preset)

REPO = Path(__file__).resolve().parents[1]
SLOW, EVERY = 300, 5
"""Iterations of the jobs that are interrupted (≈ 25 s at 0.085 s per iteration, one core) and their checkpoint
interval; they are interrupted after their second checkpoint (the second job usually much later)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A private one-node SLURM (own folder and ports); SLURM_CONF and the job environment set for the module."""
    if os.geteuid() != 0:
        pytest.skip("starting SLURM daemons needs root (scripts/slurm_up.sh)")
    folder = tmp_path_factory.mktemp("slurm")
    env = {"STEGO_SLURM_DIR": str(folder), "STEGO_SLURMCTLD_PORT": str(_free_port()),
           "STEGO_SLURMD_PORT": str(_free_port())}
    up = subprocess.run(["bash", str(REPO / "scripts" / "slurm_up.sh")], env={**os.environ, **env},
                        capture_output=True, text=True, timeout=300)
    try:
        if up.returncode != 0:
            pytest.skip(f"SLURM could not be started here: {up.stderr.strip().splitlines()[-1:]}")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SLURM_CONF", str(folder / "slurm.conf"))
            mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
            mp.setenv("HF_HUB_OFFLINE", "1")
            mp.chdir(REPO)
            yield folder
    finally:
        down = subprocess.run(["bash", str(REPO / "scripts" / "slurm_down.sh")], env={**os.environ, **env},
                              capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr
        for name in ("slurmctld.pid", "slurmd.pid", "munged.pidfile"):
            assert not (folder / name).exists(), f"{name} left behind: a daemon may still run"


def _squeue_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i %T"], capture_output=True, text=True)
    return dict(line.split() for line in out.stdout.splitlines()).get(job_id, "")


def _release(sweep_dir, job, job_id: str):
    """A requeued job waits (BeginTime) before it may start again: the report says so; let it start now. When
    the array's two slots are taken meanwhile, SLURM names that reason (JobArrayTaskLimit) instead."""
    _wait(lambda: _squeue_state(job_id) == "PENDING", 60, f"{job_id} to be requeued")
    (status,) = [s for s in sweep_status(sweep_dir) if s.job.id == job.id]
    assert status.status == RUNNING, status.detail
    assert re.match(r"PENDING \((BeginTime|JobArrayTaskLimit)\), attempt 1", status.detail), status.detail
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True)


def _interrupt(job, command):
    """Run `command` on the job once its second checkpoint is written and before its training ends."""
    _wait(lambda: _checkpoint_iteration(job.out) >= 2 * EVERY, 150, f"a checkpoint of {job.id}")
    subprocess.run(command, check=True)
    assert not (Path(job.out) / "train_summary.json").exists(), f"{job.id} ended before it was interrupted: raise SLOW"


def _status_report(sweep_dir, capsys) -> str:
    capsys.readouterr()
    main(["sweep", "status", str(sweep_dir)])
    return capsys.readouterr().out


def test_array_sweep_requeue_resume_cancel_and_resubmit(slurm, tmp_path, capsys):
    scenes = make_tiny_scenes(tmp_path / "scenes")
    preset = write_preset(tmp_path / "tiny.yaml", scenes, iterations=2, checkpoint_every=EVERY)
    sw = tmp_path / "sweep"
    # one DataLoader worker: SLURM signals it too, and it must leave the requeue to the job
    slow = grid_jobs(str(preset), sw, {"train.iterations": [str(SLOW)], "data.workers": ["1"]}, seeds=[0, 1])
    fast = grid_jobs(str(preset), sw, {"train.iterations": ["2"]}, seeds=[0, 1])
    killed, signalled = slow
    jobs = [killed, signalled, *fast]
    resources = Resources("slurm", partition="debug", cpus=1, time_min=10, max_parallel=2, name="stego-test")
    assert submit(sw, jobs, resources) == jobs
    ids = {job.id: sweep.read_submissions(sw)[job.key][-1]["scheduler_id"] for job in jobs}
    array = ids[killed.id].split("_")[0]
    assert [ids[j.id] for j in jobs] == [f"{array}_{k}" for k in range(4)]  # one array

    cancelled = fast[1]
    subprocess.run(["scancel", ids[cancelled.id]], check=True)  # still pending: two run at a time
    (line,) = [line for line in _status_report(sw, capsys).splitlines() if line.startswith(cancelled.id)]
    assert line.split()[1:4] == [FAILED, ids[cancelled.id], "no"] and "never started" in line

    _interrupt(killed, ["scontrol", "requeue", ids[killed.id]])  # killed without warning
    _interrupt(signalled, ["scancel", ids[signalled.id], "--signal", "USR2"])  # submitit's preemption signal
    _release(sw, killed, ids[killed.id])
    _release(sw, signalled, ids[signalled.id])

    statuses = {s.job.id: s for s in sweep.wait_for(sw, poll_s=2, timeout_s=240)}
    assert [statuses[j.id].status for j in jobs] == [DONE, DONE, DONE, FAILED], \
        [statuses[j.id].detail for j in jobs]
    assert "never started" in statuses[cancelled.id].detail
    for job, first in ((killed, "killed"), (signalled, "requeued on signal")):
        attempts = sweep.read_json(sweep.state_path(sw, job))["attempts"]
        assert len(attempts) == 2 and attempts[0]["outcome"].startswith(first), attempts
        assert attempts[0]["scheduler_id"] == attempts[1]["scheduler_id"] == ids[job.id]
        assert attempts[1]["slurm_restarts"] == 1
        resumed_at = attempts[1]["start_iteration"]
        assert resumed_at >= 2 * EVERY, attempts  # resumed, not restarted
        if job is killed:  # from its last periodic checkpoint
            assert resumed_at % EVERY == 0, attempts
        else:  # from the checkpoint it saved after the step in flight when the signal came
            assert attempts[0]["stopped_at"] == resumed_at, attempts
            assert attempts[0]["outcome"] == f"requeued on signal (checkpoint saved at iteration {resumed_at})"
        assert log_iterations(job.out) == list(range(1, SLOW + 1))
        # the second attempt began at resumed_at (it logs nothing if the interrupt came after the last checkpoint)
        assert attempt_starts(job.out) == ([resumed_at] if resumed_at < SLOW else [])
        assert load_checkpoint(Path(job.out) / "checkpoint.pt")["iteration"] == SLOW

    assert submit(sw, [], resources) == [cancelled]  # only the failed job runs again
    statuses = sweep.wait_for(sw, poll_s=2, timeout_s=120)
    assert all(s.status == DONE for s in statuses), [s.detail for s in statuses]
    assert [len(sweep.read_submissions(sw)[j.key]) for j in jobs] == [1, 1, 1, 2]
    report = _status_report(sw, capsys)
    assert report.splitlines()[-1] == "4 done, 0 running, 0 failed, 0 missing"


def test_multi_task_job_trains_data_parallel_through_srun(slurm, tmp_path):
    scenes = make_tiny_scenes(tmp_path / "scenes")
    preset = write_preset(tmp_path / "tiny.yaml", scenes, iterations=2)
    (job,) = grid_jobs(str(preset), tmp_path / "sweep")
    submit(tmp_path / "sweep", [job], Resources("slurm", tasks=2, cpus=1, time_min=10), wait=True, poll_s=2)
    (status,) = sweep_status(tmp_path / "sweep")
    assert status.status == DONE, status.detail
    summary = sweep.read_json(Path(job.out) / "train_summary.json")
    assert (summary["world_size"], summary["effective_batch"]) == (2, 8)
    assert RUNNING not in [s.status for s in sweep_status(tmp_path / "sweep")]
