"""Paper Table 4 (Potsdam-3, cluster accuracy): STEGO and the cited methods.

Rows are data (benchmarks/registry.py); `bench` runs one at toy scale on CPU, or at full scale with --run-gpu.
"""
import pytest

from benchmarks.registry import rows


@pytest.mark.parametrize("row", rows("table4"), ids=lambda r: r.slug)
def test_table4(row, seed, bench):
    bench(row, seed)
