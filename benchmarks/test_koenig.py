"""This suite's table 'koenig' (benchmarks/beyond.py): rows as data, run by `bench` at toy scale on CPU or at full
scale with --run-gpu."""
import pytest

from benchmarks.registry import rows


@pytest.mark.parametrize("row", rows("koenig"), ids=lambda r: r.slug)
def test_koenig(row, seed, bench):
    bench(row, seed)
