"""Sweep jobs that are interrupted, without a cluster: a kill without warning resumes from the last periodic
checkpoint; submitit's end-of-time signal (USR2) checkpoints after the training step, requeues and resumes there
(one process or two); DataLoader workers ignore it; an error after the scheduler's SIGTERM is a kill, not a failure.
"""
import json
import os
import signal
from pathlib import Path

import pytest

from stego import sweep
from stego.sweep import DONE, Resources, grid_jobs, submit
from stego.checkpoint import load_checkpoint
from stego.train import TrainingStopped, train
from tests.test_sweep import _wait, attempt_starts, child_env, log_iterations, make_tiny_scenes, write_preset


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_tiny_scenes(tmp_path_factory.mktemp("scenes"))


def test_killed_job_resumes_from_its_last_periodic_checkpoint(tmp_path, scenes):
    preset = write_preset(tmp_path / "tiny.yaml", scenes, iterations=8, checkpoint_every=3)
    (job,) = grid_jobs(str(preset), tmp_path / "sw")
    sweep.merge_jobs(tmp_path / "sw", [job])
    first = sweep.JobState(tmp_path / "sw", job)
    first.start()  # an attempt that was killed without warning: no outcome, a checkpoint at iteration 3
    train(job.config(), job.out, stop_at=3)
    assert load_checkpoint(Path(job.out) / "checkpoint.pt")["iteration"] == 3
    sweep.run_job(job, tmp_path / "sw")
    attempts = json.loads(Path(job.records[0]).read_text())["sweep"]["attempts"]
    assert len(attempts) == 2 and attempts[0]["outcome"].startswith("killed")
    assert attempts[1]["start_iteration"] == 3 and attempts[1]["outcome"] == "done"
    assert log_iterations(job.out) == list(range(1, 9)) and attempt_starts(job.out) == [3]
    assert load_checkpoint(Path(job.out) / "checkpoint.pt")["iteration"] == 8


def test_signal_stop_listens_only_while_training_reads_it():
    calls = []
    stop = sweep.SignalStop(lambda signum, frame: calls.append(signum))
    stop.on_signal(signal.SIGUSR2, None)  # before the first step (KNN mining): submitit's handler at once
    assert calls == [signal.SIGUSR2] and not stop()
    with stop.during_training():
        stop.on_signal(signal.SIGUSR2, None)  # training has read it: checkpoint after the step instead
        assert calls == [signal.SIGUSR2] and stop()
    stop.on_signal(signal.SIGUSR2, None)  # evaluation: at once again
    assert calls == [signal.SIGUSR2] * 2


def test_signal_stop_is_ignored_by_forked_workers():
    """SLURM signals every process of the job, DataLoader workers included: only the job's process may act."""
    read, write = os.pipe()
    stop = sweep.SignalStop(lambda signum, frame: os.write(write, b"fallback"))
    pid = os.fork()
    if pid == 0:  # the "worker": inherited the handler state, before and while listening
        stop.on_signal(signal.SIGUSR2, None)
        stop()
        stop.on_signal(signal.SIGUSR2, None)
        os.write(write, b"set" if stop.signal is not None else b"ignored")
        os._exit(0)
    os.waitpid(pid, 0)
    os.close(write)
    assert os.read(read, 100) == b"ignored"


def test_stop_in_the_last_step_requeues_before_evaluating_and_the_requeue_evaluates(tmp_path, scenes, monkeypatch):
    preset = write_preset(tmp_path / "tiny.yaml", scenes, iterations=3)
    (job,) = grid_jobs(str(preset), tmp_path / "sw")
    stop = sweep.SignalStop(lambda signum, frame: pytest.fail("training was listening"))
    real_train = train

    def train_then_signal(*args, **kwargs):  # the signal arrives during the last step, after its stop check
        path = real_train(*args, **kwargs)
        stop.on_signal(signal.SIGUSR2, None)
        return path

    monkeypatch.setattr("stego.train.train", train_then_signal)
    with pytest.raises(TrainingStopped) as stopped:
        sweep.run_job(job, tmp_path / "sw", stop)
    assert stopped.value.iteration == 3 and not Path(job.records[0]).exists()
    (attempt,) = sweep.read_json(sweep.state_path(tmp_path / "sw", job))["attempts"]
    assert attempt["stopped_at"] == 3 and "outcome" not in attempt  # the requeue closes it
    requeue = sweep.Requeueable()
    requeue.stopped_at = 3
    requeue.checkpoint(job, tmp_path / "sw")  # what submitit's handler calls before requeueing
    sweep.run_job(job, tmp_path / "sw")
    attempts = json.loads(Path(job.records[0]).read_text())["sweep"]["attempts"]
    assert [a["start_iteration"] for a in attempts] == [0, 3]
    assert [a["outcome"] for a in attempts] == ["requeued on signal (checkpoint saved at iteration 3)", "done"]


def test_an_error_after_the_schedulers_sigterm_is_not_recorded_as_a_failure(tmp_path, scenes, monkeypatch):
    """SLURM's SIGTERM (requeue, cancel) kills DataLoader workers first; the loader's error is then not the job's."""
    preset = write_preset(tmp_path / "tiny.yaml", scenes, iterations=3)
    (job,) = grid_jobs(str(preset), tmp_path / "sw")

    def worker_killed(*args, **kwargs):
        raise RuntimeError("DataLoader worker (pid 123) exited unexpectedly")

    monkeypatch.setattr("stego.train.train", worker_killed)
    passed_on = []
    for terminated in (False, True):
        stop = sweep.SignalStop(lambda signum, frame: None, lambda signum, frame: passed_on.append(signum))
        if terminated:
            stop.on_terminate(signal.SIGTERM, None)
        with pytest.raises(RuntimeError, match="exited unexpectedly"):
            sweep.run_job(job, tmp_path / "sw", stop)
    first, second = sweep.read_json(sweep.state_path(tmp_path / "sw", job))["attempts"]
    assert first["outcome"] == "failed" and "outcome" not in second  # the next attempt will say "killed"
    assert passed_on == [signal.SIGTERM]  # submitit's own SIGTERM handler still runs


@pytest.mark.slow
def test_local_job_checkpoints_on_the_preemption_signal_requeues_and_resumes(tmp_path, scenes, monkeypatch):
    """submitit's USR2 (end of time / preemption) -> checkpoint after the step -> requeue -> resume from there."""
    child_env(monkeypatch)
    preset = write_preset(tmp_path / "tiny.yaml", scenes, iterations=100)  # no periodic checkpoint before 100
    (job,) = grid_jobs(str(preset), tmp_path / "sw")
    submit(tmp_path / "sw", [job], Resources("local", cpus=1))
    state_file = sweep.state_path(tmp_path / "sw", job)
    log_file = Path(job.out) / "train_log.csv"
    _wait(lambda: log_file.exists() and len(log_iterations(job.out)) >= 10, 120, "10 logged iterations")
    pid = sweep.read_json(state_file)["attempts"][0]["pid"]
    os.kill(pid, signal.SIGUSR2)
    assert not (Path(job.out) / "train_summary.json").exists(), "training ended before the signal: raise iterations"
    (status,) = sweep.wait_for(tmp_path / "sw", poll_s=0.5, timeout_s=240)
    assert status.status == DONE, status.detail
    attempts = sweep.read_json(state_file)["attempts"]
    assert len(attempts) == 2, attempts
    stopped_at = attempts[0]["stopped_at"]
    assert attempts[0]["outcome"] == f"requeued on signal (checkpoint saved at iteration {stopped_at})"
    assert attempts[0]["scheduler_id"] == attempts[1]["scheduler_id"]  # the same job, requeued
    assert 10 <= stopped_at < 100 and attempts[1]["start_iteration"] == stopped_at  # resumed where it stopped
    assert log_iterations(job.out) == list(range(1, 101))
    assert attempt_starts(job.out) == [stopped_at]
    assert len(json.loads(Path(job.records[0]).read_text())["sweep"]["attempts"]) == 2


@pytest.mark.slow
def test_two_task_job_stops_both_ranks_at_one_iteration_on_the_signal(tmp_path, scenes, monkeypatch):
    """USR2 to rank 0 only: the ranks agree on the stop at a STOP_CHECK_EVERY iteration, rank 0 checkpoints, both
    end, the local executor restarts both, and they resume together from that checkpoint."""
    from stego.runtime import STOP_CHECK_EVERY

    child_env(monkeypatch)
    preset = write_preset(tmp_path / "tiny.yaml", scenes, iterations=60)
    (job,) = grid_jobs(str(preset), tmp_path / "sw")
    submit(tmp_path / "sw", [job], Resources("local", tasks=2, cpus=1))
    state_file = sweep.state_path(tmp_path / "sw", job)
    log_file = Path(job.out) / "train_log.csv"
    _wait(lambda: log_file.exists() and len(log_iterations(job.out)) >= 12, 180, "12 logged iterations")
    os.kill(sweep.read_json(state_file)["attempts"][0]["pid"], signal.SIGUSR2)
    assert not (Path(job.out) / "train_summary.json").exists(), "training ended before the signal: raise iterations"
    (status,) = sweep.wait_for(tmp_path / "sw", poll_s=0.5, timeout_s=300)
    assert status.status == DONE, status.detail
    attempts = sweep.read_json(state_file)["attempts"]
    stopped_at = attempts[0]["stopped_at"]
    assert len(attempts) == 2 and stopped_at % STOP_CHECK_EVERY == 0 and 12 < stopped_at < 60, attempts
    assert attempts[1]["start_iteration"] == stopped_at
    assert log_iterations(job.out) == list(range(1, 61)) and attempt_starts(job.out) == [stopped_at]
    summary = json.loads((Path(job.out) / "train_summary.json").read_text())
    assert summary["world_size"] == 2
