"""Run-time plumbing shared by training and evaluation: device choice, precision (autocast, TF32), threads and
workers, seeding, distributed set-up and the ranks' agreement on stop requests."""
import os

import torch
import torch.distributed as dist

from .config import PRECISIONS
from .errors import StegoError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_threads(threads: int) -> None:
    """Use `threads` CPU threads in torch (0 leaves torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)


MAX_LOADER_WORKERS = 16


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask (SLURM's --cpus-per-task when tasks are bound), shared among
    the node's ranks when a multi-process launch left every rank the whole machine."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local_world > 1 and cpus == os.cpu_count():
        cpus //= local_world
    return max(1, cpus)


def worker_count(requested: int, kind: str = "loader") -> int:
    """A worker count from a config value: itself when ≥ 0; for -1, one per available CPU, less the main
    process for DataLoaders ('loader', at most MAX_LOADER_WORKERS) or all of them for the CRF pool ('crf')."""
    if requested >= 0:
        return requested
    if requested != -1:
        key = "eval.crf_workers" if kind == "crf" else "data.workers"
        raise StegoError(f"{key} must be ≥ 0, or -1 for one per CPU; got {requested}")
    cpus = available_cpus()
    return cpus if kind == "crf" else min(cpus - 1, MAX_LOADER_WORKERS)


def iteration_seed(seed: int, iteration: int) -> int:
    """A seed for one iteration, so every random draw of that iteration is reproducible after a resume."""
    return (seed * 1_000_003 + iteration) % (2**63 - 1)


def _checked_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise StegoError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def autocast(device, precision: str):
    """Where the backbone runs (train.precision): 'fp32' as is, 'bf16' under bf16 autocast, on CUDA and the CPU
    alike (so its effect can be measured without a GPU)."""
    bf16 = _checked_precision(precision) == "bf16"
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)


def set_tf32(device, precision: str) -> None:
    """The TF32 policy, set explicitly on CUDA (cuDNN's own default allows TF32): 'fp32' is true fp32, TF32 off
    for matmuls and convolutions alike; 'bf16' allows TF32 for what runs outside autocast (head, loss, probes)."""
    allow = _checked_precision(precision) == "bf16"
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow


STOP_CHECK_EVERY = 10
"""With several processes, the ranks agree on a stop request every this many iterations (one all-reduce)."""


def agreed_stop(should_stop, iteration: int, world: int, device) -> bool:
    """`should_stop()` (asked every iteration, no device work) on any rank -> True on every rank at the same
    iteration: several processes all-reduce one number every STOP_CHECK_EVERY iterations."""
    asked = bool(should_stop())
    if world > 1 and iteration % STOP_CHECK_EVERY:
        return False
    return any_rank(asked, world, device)


def any_rank(flag: bool, world: int, device) -> bool:
    """`flag` of any rank, on every rank (one all-reduce when several processes; every rank must call it)."""
    if world <= 1:
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def distributed() -> tuple[int, int]:
    """(rank, world size), initialising the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def average_gradients(params) -> None:
    """All-reduce the gradients of `params` as one flat buffer and divide by the world size (data parallel)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or not dist.is_initialized():
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
