"""The CPU micro-benchmarks' shared table: each stage timed against a straightforward reference of the same math.

`compare` times both forms interleaved (best of `rounds`, so a burst of load hits both alike), records the ratio
and hands our form to pytest-benchmark (`--benchmark-enable` gives full statistics). Two clocks:
'wall' (perf_counter, torch's thread count as set) for stages that use several threads, and 'cpu' (the calling
thread's CPU time, torch on one thread) for single-threaded work: numpy, PIL, pydensecrf, and data loading as it
runs in DataLoader workers. CPU time leaves out the waits of an oversubscribed machine, so those ratios stay
steady when other jobs share the cores. The session's rows are printed at the end of the run and written to
.benchmarks/perf_cpu.{json,md} ($STEGO_BENCH_DIR overrides the folder).
"""
import contextlib
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from stego.io import atomic_save_json, atomic_write

from .hardware import load_average, timed

OUT_ENV = "STEGO_BENCH_DIR"
CLOCKS = ("wall", "cpu")


@dataclass
class Row:
    stage: str
    size: str
    ours: str
    reference: str
    ours_s: float
    """Best time of our form per unit (seconds)."""
    reference_s: float
    unit: str = "call"
    clock: str = "wall"
    threads: int = field(default_factory=torch.get_num_threads)
    load: list | None = field(default_factory=load_average)
    note: str = ""

    @property
    def ratio(self) -> float:
        """Reference time ÷ ours: above 1, ours is faster."""
        return self.reference_s / self.ours_s


ROWS: list[Row] = []


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with `n` torch threads (None: unchanged), restoring the previous count after it."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_timed(fn) -> float:
    """CPU seconds the calling thread spends in `fn()` (single-threaded work only)."""
    start = time.thread_time()
    fn()
    return time.thread_time() - start


def compare(benchmark, stage: str, size: str, ours, reference, *, ours_name: str, reference_name: str,
            rounds: int = 3, units: int = 1, unit: str = "call", note: str = "", clock: str = "wall") -> Row:
    """Time `ours()` and `reference()` `rounds` times each, interleaved; record and return the row (per unit).

    The first call of ours goes through `benchmark`, so pytest-benchmark sees the test; with benchmarks enabled
    it also runs its own rounds of ours. clock 'cpu' runs both with one torch thread and times CPU time.
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    measure = cpu_timed if clock == "cpu" else timed
    with torch_threads(1 if clock == "cpu" else None):
        ref_times = [measure(reference)]
        if benchmark.disabled:
            ours_times = [benchmark.pedantic(measure, args=(ours,), rounds=1, iterations=1)]
        else:
            benchmark.pedantic(ours, rounds=max(rounds, 5), iterations=1, warmup_rounds=1)
            ours_times = [measure(ours)]
        for _ in range(rounds - 1):
            ours_times.append(measure(ours))
            ref_times.append(measure(reference))
        row = Row(stage, size, ours_name, reference_name, min(ours_times) / units, min(ref_times) / units, unit,
                  clock, note=note)
    ROWS.append(row)
    benchmark.extra_info.update({"ours_s": row.ours_s, "reference_s": row.reference_s, "ratio": row.ratio,
                                 "unit": unit, "clock": clock, "load": row.load})
    return row


def _seconds(s: float) -> str:
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def markdown(rows) -> str:
    """The rows as a Markdown table, with the machine and load in the heading line."""
    loads = [r.load for r in rows if r.load]
    load = f"load {min(l[0] for l in loads):.1f}–{max(l[0] for l in loads):.1f}" if loads else "load unknown"
    lines = [f"CPU micro-benchmarks: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"{load} (1-min average)", "",
             "| stage | size | ours | reference | clock, threads | ours per unit | reference per unit | "
             "ratio (ref ÷ ours) |", "|---|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        note = f" ({r.note})" if r.note else ""
        lines.append(f"| {r.stage} | {r.size} | {r.ours}{note} | {r.reference} | {r.clock}, {r.threads} | "
                     f"{_seconds(r.ours_s)} / {r.unit} | {_seconds(r.reference_s)} / {r.unit} | {r.ratio:.2f}× |")
    return "\n".join(lines) + "\n"


def write(rows, folder=None) -> Path:
    """Write the rows to <folder>/perf_cpu.json and .md atomically; returns the .md path."""
    folder = Path(folder or os.environ.get(OUT_ENV) or ".benchmarks")
    atomic_save_json([dict(asdict(r), ratio=r.ratio) for r in rows], folder / "perf_cpu.json")
    path = folder / "perf_cpu.md"
    with atomic_write(path, "w") as f:
        f.write(markdown(rows))
    return path
