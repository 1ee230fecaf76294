"""What a scheduler says about submitted jobs: SLURM (squeue, then sacct when accounting runs) and local processes.

Used by `stego sweep status`. Without SLURM accounting, `squeue -t all` still reports the end state of jobs that
ended within the cluster's MinJobAge (COMPLETED, CANCELLED, TIMEOUT, …); older ones are simply gone, and the
sweep's own records and state files decide.
"""
import getpass
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

from .errors import StegoError

ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
         "REVOKED", "TIMEOUT"}
"""SLURM job states after which the job will not run again by itself; any other state is still in the queue."""


class QueueError(StegoError):
    """The scheduler could not be asked (command missing, controller down)."""


def slurm_states(ids) -> dict[str, str]:
    """{scheduler job id: 'STATE' or 'STATE (reason)'} for the given ids, from squeue, then sacct for the rest.

    Array elements are named '<array id>_<index>', as submitit names them. Ids unknown to both are left out.
    """
    ids = {str(i) for i in ids}
    if not ids:
        return {}
    if shutil.which("squeue") is None:
        raise QueueError("squeue not found: run `stego sweep status DIR` where the SLURM commands are installed")
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-u", getpass.getuser(), "-o", "%i|%T|%r"],
                             capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise QueueError("squeue did not answer in 60 s: the SLURM controller may be down or overloaded") from None
    if out.returncode != 0:
        raise QueueError(f"squeue failed: {out.stderr.strip() or out.stdout.strip()}")
    states = {}
    for line in out.stdout.splitlines():
        job, state, reason = (line.split("|") + ["", ""])[:3]
        if job in ids:
            states[job] = state if state in ENDED or reason in ("", "None") else f"{state} ({reason})"
    states.update(_sacct_states(ids - set(states)))
    return states


def _sacct_states(ids) -> dict[str, str]:
    """End states from SLURM accounting; {} where sacct is missing or accounting is off."""
    if not ids or shutil.which("sacct") is None:
        return {}
    try:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(sorted(ids))],
                             capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return {}
    if out.returncode != 0:
        return {}
    states = {}
    for line in out.stdout.splitlines():
        job, _, state = line.partition("|")
        if job in ids and state:
            states[job] = state.split()[0]
    return states


def process_alive(pid: str, host: str) -> bool | None:
    """Whether a local job's controller process still runs (None: it ran on another host, so we cannot tell)."""
    if host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[-1].startswith("Z"))


def parse_time_limit(text: str) -> int:
    """Minutes in a SLURM time limit: 'M', 'M:S', 'H:M:S', 'D-H', 'D-H:M' or 'D-H:M:S' (seconds round up)."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise StegoError(f"time limit {text!r}: write it as SLURM does, e.g. 90 (minutes), 12:00:00 or 1-12:00:00")
    days, first, second, third = (int(g) if g else None for g in match.groups())
    if days is not None:
        hours, minutes, seconds = first, second or 0, third or 0
    elif third is not None:
        hours, minutes, seconds = first, second, third
    else:
        hours, minutes, seconds = 0, first, second or 0
    total = ((days or 0) * 24 + hours) * 60 + minutes + (1 if seconds else 0)
    if total <= 0:
        raise StegoError(f"time limit {text!r} is zero: give at least a minute")
    return total
