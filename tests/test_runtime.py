"""Data-parallel pieces: gradient averaging across processes, per-rank batches that split each epoch, stop requests
that all ranks agree on; signals that request a stop."""
import os
import signal

import pytest

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stego.runtime import STOP_CHECK_EVERY, agreed_stop, average_gradients, iteration_seed
from stego.stopping import stop_on_signals
from stego.data.batches import ResumableBatches


def _average_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    params[0].grad = torch.full((3,), float(rank + 1))
    params[1].grad = torch.arange(4.0).view(2, 2) * (rank + 1)
    average_gradients(params)
    torch.save([p.grad for p in params], f"{out}/{rank}.pt")
    dist.destroy_process_group()


def test_gradients_are_averaged_over_processes(tmp_path):
    port = 29500 + os.getpid() % 1000
    mp.spawn(_average_worker, args=(2, port, str(tmp_path)), nprocs=2)
    for rank in range(2):
        g0, g1 = torch.load(tmp_path / f"{rank}.pt")
        assert torch.equal(g0, torch.full((3,), 1.5))
        assert torch.equal(g1, torch.arange(4.0).view(2, 2) * 1.5)


def test_ranks_split_each_epoch_without_overlap_and_resume_mid_epoch():
    n, batch, world = 23, 3, 2
    per_epoch = n // (batch * world)
    ranks = [list(ResumableBatches(n, batch, seed=5, start=0, stop=2 * per_epoch, rank=r, world=world))
             for r in range(world)]
    for step in range(per_epoch):
        seen = [i for r in range(world) for i, _ in ranks[r][step]]
        assert len(seen) == len(set(seen)) == batch * world
    first_epoch = [i for r in range(world) for b in ranks[r][:per_epoch] for i, _ in b]
    assert len(set(first_epoch)) == per_epoch * batch * world
    assert {e for b in ranks[0] for _, e in b} == {0, 1}
    resumed = list(ResumableBatches(n, batch, seed=5, start=3, stop=2 * per_epoch, rank=0, world=world))
    assert resumed == ranks[0][3:]


def test_iteration_seeds_differ():
    assert len({iteration_seed(0, i) for i in range(1000)}) == 1000
    assert iteration_seed(1, 0) != iteration_seed(0, 0)


def _stop_worker(rank, world, port, out, asked_from):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    stopped = [it for it in range(1, 4 * STOP_CHECK_EVERY)
               if agreed_stop(lambda: rank == 1 and it >= asked_from, it, world, torch.device("cpu"))]
    torch.save(stopped, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def test_a_stop_asked_on_one_rank_stops_every_rank_at_the_same_iteration(tmp_path):
    asked_from = STOP_CHECK_EVERY + 3
    port = 29500 + (os.getpid() + 7) % 1000
    mp.spawn(_stop_worker, args=(2, port, str(tmp_path), asked_from), nprocs=2)
    expected = [2 * STOP_CHECK_EVERY, 3 * STOP_CHECK_EVERY]  # the checks after the request
    assert [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)] == [expected, expected]


def test_one_process_stops_at_the_first_asking_iteration():
    assert [it for it in range(1, 9) if agreed_stop(lambda: it >= 5, it, 1, "cpu")] == [5, 6, 7, 8]


def test_first_signal_requests_a_stop_second_ctrl_c_interrupts():
    before = signal.getsignal(signal.SIGINT)
    with stop_on_signals(signal.SIGINT, signal.SIGTERM) as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop() and stop.signal == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_forked_workers_ignore_the_stop_signals():
    read, write = os.pipe()
    with stop_on_signals(signal.SIGINT) as stop:
        pid = os.fork()
        if pid == 0:  # a DataLoader worker gets the terminal's Ctrl-C too: it neither stops nor raises
            try:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
                os.write(write, b"set" if stop() else b"ignored")
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert not stop()
    os.close(write)
    assert os.read(read, 100) == b"ignored"


def test_worker_counts_follow_the_cpus_this_process_may_use(monkeypatch):
    from stego.errors import StegoError
    from stego.runtime import MAX_LOADER_WORKERS, worker_count

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(10)))  # e.g. SLURM --cpus-per-task=10
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert (worker_count(-1), worker_count(-1, "crf"), worker_count(3), worker_count(0, "crf")) == (9, 10, 3, 0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # bound tasks: the mask is already this rank's share
    assert worker_count(-1) == 9
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))  # unbound: share the node
    assert (worker_count(-1), worker_count(-1, "crf")) == (15, 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert worker_count(-1) == MAX_LOADER_WORKERS
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert (worker_count(-1), worker_count(-1, "crf")) == (0, 1)
    with pytest.raises(StegoError, match="data.workers"):
        worker_count(-2)
