"""Paper Table 3 (Cityscapes-27, cluster probe): STEGO and the cited methods.

Rows are data (benchmarks/registry.py); `bench` runs one at toy scale on CPU, or at full scale with --run-gpu.
"""
import pytest

from benchmarks.registry import rows


@pytest.mark.parametrize("row", rows("table3"), ids=lambda r: r.slug)
def test_table3(row, seed, bench):
    bench(row, seed)
