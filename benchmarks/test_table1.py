"""Paper Table 1 (CocoStuff-27): STEGO, the raw-feature baselines (ResNet50, MoCoV2, DINO) and the cited methods.

Rows are data (benchmarks/registry.py); `bench` runs one at toy scale on CPU, or at full scale with --run-gpu.
"""
import pytest

from benchmarks.registry import rows


@pytest.mark.parametrize("row", rows("table1"), ids=lambda r: r.slug)
def test_table1(row, seed, bench):
    bench(row, seed)
