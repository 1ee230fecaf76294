"""Paper Table 2 (CocoStuff-27 architecture ablation): components added one by one on ViT-S, then ViT-B.

Rows are data (benchmarks/registry.py); `bench` runs one at toy scale on CPU, or at full scale with --run-gpu.
"""
import pytest

from benchmarks.registry import rows


@pytest.mark.parametrize("row", rows("table2"), ids=lambda r: r.slug)
def test_table2(row, seed, bench):
    bench(row, seed)
