"""Paper Table 5 (ViT-S on CocoStuff-27): the full method and one component removed at a time.

Rows are data (benchmarks/registry.py); `bench` runs one at toy scale on CPU, or at full scale with --run-gpu.
"""
import pytest

from benchmarks.registry import rows


@pytest.mark.parametrize("row", rows("table5"), ids=lambda r: r.slug)
def test_table5(row, seed, bench):
    bench(row, seed)
