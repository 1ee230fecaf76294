"""This suite's table 'dimsweep' (benchmarks/beyond.py): rows as data, run by `bench` at toy scale on CPU (the rows of
beyond.on_cpu) or every row at full scale with --run-gpu."""
from benchmarks.beyond import on_cpu
from benchmarks.registry import rows


def pytest_generate_tests(metafunc):
    selected = [r for r in rows("dimsweep") if metafunc.config.getoption("--run-gpu") or on_cpu(r)]
    metafunc.parametrize("row", selected, ids=lambda r: r.slug)


def test_dimsweep(row, seed, bench):
    bench(row, seed)
