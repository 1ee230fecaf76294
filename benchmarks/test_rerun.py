"""The independent re-run (Koenig et al. 2023): released checkpoints re-evaluated, raw-DINO baselines re-run.

Rows are data (benchmarks/registry.py); `bench` runs one at toy scale on CPU, or at full scale with --run-gpu.
"""
import pytest

from benchmarks.registry import rows


@pytest.mark.parametrize("row", rows("rerun"), ids=lambda r: r.slug)
def test_rerun(row, seed, bench):
    bench(row, seed)
