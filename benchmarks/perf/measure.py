"""What a command costs as a whole: wall time, CPU time and peak memory of its whole process tree, and how busy
the machine's cores were meanwhile (Linux /proc).

CPU time and peak RSS come from the kernel's accounting of reaped processes (`os.wait4`), which includes every
descendant that was waited for. Process pools whose workers outlive their parent's wait (multiprocessing's
forkserver, which starts the DenseCRF workers) would escape it, so the measuring process makes itself a child
subreaper (prctl PR_SET_CHILD_SUBREAPER): orphans are re-parented to it and reaped, with their own descendants'
usage, before the stage counts as finished. Peak RSS is the largest single process; `tree_rss_mb` is the peak of
the tree's summed RSS, sampled twice a second (shared pages of forked workers count once per process), with the
seconds into the command when it peaked and the largest single process seen (`biggest`), so a peak found at scale
names its process and moment.
"""
import ctypes
import os
import subprocess
import threading
import time
from dataclasses import asdict, dataclass

PR_SET_CHILD_SUBREAPER = 36
PAGE = os.sysconf("SC_PAGE_SIZE")
REAP_TIMEOUT = 60.0
"""Seconds to wait, after the command exits, for its orphaned descendants (pool workers) to exit and be reaped."""


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux ≥ 3.4); False where that is unavailable."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def cpu_times() -> list[tuple[int, int]]:
    """(busy, total) jiffies of each core since boot, from /proc/stat (idle and iowait count as not busy)."""
    rows = []
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + (v[4] if len(v) > 4 else 0)
                rows.append((sum(v[:8]) - idle, sum(v[:8])))
    return rows


def busy_fraction(before, after) -> float:
    """Share of all cores' time that was busy between two `cpu_times()` readings (0–1, every process counted)."""
    busy = sum(b1 - b0 for (b0, _), (b1, _) in zip(before, after))
    total = sum(t1 - t0 for (_, t0), (_, t1) in zip(before, after))
    return busy / total if total else 0.0


def _processes() -> dict[int, tuple[int, int]]:
    """{pid: (parent pid, RSS in bytes)} of every live process (from /proc/<pid>/stat and statm)."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/statm") as f:
                found[int(name)] = (ppid, int(f.read().split()[1]) * PAGE)
        except (OSError, IndexError, ValueError):
            continue
    return found


def _descendants_rss(root: int, skip=frozenset()) -> dict[int, int]:
    """{pid: RSS in bytes} of every live descendant of process `root`, but the subtrees of the processes in `skip`."""
    procs, children = _processes(), {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = {}, [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child in skip:
                continue
            found[child] = procs[child][1]
            stack.append(child)
    return found


def _command_name(pid: int) -> str:
    """A process's name as `ps` shows it (the DataLoader's workers rename themselves pt_data_worker)."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


@dataclass
class Usage:
    """One command's cost (see the module docstring)."""

    wall_s: float
    cpu_s: float
    user_s: float
    sys_s: float
    max_rss_mb: float
    tree_rss_mb: float
    machine_busy: float
    """Share of all the machine's cores busy during the command (other jobs included)."""
    load_start: list
    load_end: list
    returncode: int
    leftover: int = 0
    """Descendants still alive REAP_TIMEOUT seconds after the command exited (their usage is missing)."""
    peak_at_s: float = 0.0
    """Seconds into the command when the sampled tree RSS peaked (where in a long stage memory grew)."""
    biggest: str = ""
    """The process with the largest sampled RSS, its name, the seconds into the command and the RSS in MB."""

    def to_dict(self) -> dict:
        return asdict(self)


class _RssSampler(threading.Thread):
    """Samples the command's tree every `every` seconds: the peak of its summed RSS and when it was reached, and
    the single largest process seen."""

    def __init__(self, every: float, skip=frozenset()):
        super().__init__(daemon=True)
        self.every, self.skip, self.done = every, frozenset(skip), threading.Event()
        self.peak = self.peak_at = self.biggest_rss = 0
        self.biggest = ""

    def run(self):
        start = time.perf_counter()
        while not self.done.is_set():
            found, now = _descendants_rss(os.getpid(), self.skip), time.perf_counter() - start
            total = sum(found.values())
            if total > self.peak:
                self.peak, self.peak_at = total, now
            pid, rss = max(found.items(), key=lambda item: item[1], default=(0, 0))
            if rss > self.biggest_rss:
                self.biggest_rss = rss
                self.biggest = f"{_command_name(pid)} ({pid}) at {now:.0f} s: {rss / 2**20:.0f} MB"
            self.done.wait(self.every)


def run_measured(argv, log_path, env=None, cwd=None, sample_s=0.5) -> Usage:
    """Run `argv` to completion with stdout and stderr to `log_path` and return its Usage. The calling process should
    be a subreaper (`become_subreaper`); children it had before are left alone (neither waited for nor counted)."""
    others = set(_live_children())
    sampler = _RssSampler(sample_s, others)
    load_start, cores_start, start = list(os.getloadavg()), cpu_times(), time.perf_counter()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        sampler.start()
        _, wstatus, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        status = proc.returncode = os.waitstatus_to_exitcode(wstatus)
        user, system, rss_kb = usage.ru_utime, usage.ru_stime, usage.ru_maxrss
        deadline = time.perf_counter() + REAP_TIMEOUT
        while True:  # orphaned descendants re-parented here (exited ones wait as zombies): reap them, with usage
            orphans = set(_live_children()) - others
            if not orphans or time.perf_counter() > deadline:
                break
            for pid in orphans:
                try:
                    got, _, usage = os.wait4(pid, os.WNOHANG)
                except ChildProcessError:
                    continue
                if got:
                    user, system = user + usage.ru_utime, system + usage.ru_stime
                    rss_kb = max(rss_kb, usage.ru_maxrss)
            time.sleep(0.05)
    sampler.done.set()
    sampler.join()
    return Usage(wall_s=wall, cpu_s=user + system, user_s=user, sys_s=system, max_rss_mb=rss_kb / 1024,
                 tree_rss_mb=sampler.peak / 2**20, machine_busy=busy_fraction(cores_start, cpu_times()),
                 load_start=[round(x, 2) for x in load_start], load_end=[round(x, 2) for x in os.getloadavg()],
                 returncode=status, leftover=len(orphans), peak_at_s=round(sampler.peak_at, 1), biggest=sampler.biggest)


def _live_children() -> list[int]:
    me = os.getpid()
    return [pid for pid, (ppid, _) in _processes().items() if ppid == me]


def tree_files(paths) -> tuple[int, int]:
    """(files, bytes) under the given files and folders (missing ones count nothing)."""
    files = size = 0
    stack = [str(p) for p in paths]
    while stack:
        path = stack.pop()
        try:
            if os.path.isfile(path):
                files, size = files + 1, size + os.path.getsize(path)
                continue
            with os.scandir(path) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        files, size = files + 1, size + entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
    return files, size

