"""Benchmark options and fixtures: toy scale on CPU by default, the real experiments with --run-gpu.

--run-gpu (root conftest) runs every row at paper scale on real data and weights and checks the paper's numbers;
without it every row runs at toy scale on synthetic scenes and only the pipeline is checked.
"""
import os
from pathlib import Path

import pytest

from benchmarks import runner, toy
from stego import records
from stego.records import TABLE_METRICS
from stego.errors import MissingFileError

RESULTS_ENV = "STEGO_RESULTS"
DATA_ROOT_ENV = "STEGO_DATA_ROOT"


def pytest_addoption(parser):
    group = parser.getgroup("stego benchmarks")
    group.addoption("--seeds", type=int, default=1, help="seeds per benchmark row (0..N-1; default 1)")
    group.addoption("--results-dir", default=None,
                    help=f"where records go (default ${RESULTS_ENV}, else a temp dir for toy runs, "
                         f"results/ with --run-gpu)")
    group.addoption("--data-root", default=None,
                    help=f"datasets root for --run-gpu runs (default ${DATA_ROOT_ENV}, else each preset's data.root)")
    group.addoption("--release-dir", default=None,
                    help="folder of the released .ckpt files (default $STEGO_RELEASE_DIR, else saved_models/)")
    group.addoption("--select-on-val", action="store_true",
                    help="keep the checkpoint with the best validation cluster mIoU (the authors' practice)")
    group.addoption("--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a config override for every row, e.g. eval.crf_workers=12, or data.features=cached to run "
                         "the rows from stored backbone features (repeatable; give --results-dir its own folder)")
    group.addoption("--trust-checkpoints", action="store_true",
                    help="accept pickled objects other than tensors and configs in released checkpoints")


def pytest_generate_tests(metafunc):
    if "seed" in metafunc.fixturenames:
        n = metafunc.config.getoption("--seeds")
        metafunc.parametrize("seed", range(n), ids=[f"seed{k}" for k in range(n)])


@pytest.fixture(scope="session")
def scale(pytestconfig):
    return "paper" if pytestconfig.getoption("--run-gpu") else "toy"


@pytest.fixture(scope="session")
def results_dir(pytestconfig, scale, tmp_path_factory):
    given = pytestconfig.getoption("--results-dir") or os.environ.get(RESULTS_ENV)
    if given:
        return Path(given)
    return Path("results") if scale == "paper" else tmp_path_factory.mktemp("benchmark-results")


@pytest.fixture(scope="session")
def data_root(pytestconfig, scale, tmp_path_factory):
    """Paper scale: the datasets' root (None: each preset's own). Toy scale: the shared synthetic world."""
    if scale == "paper":
        return pytestconfig.getoption("--data-root") or os.environ.get(DATA_ROOT_ENV)
    return toy.make_toy_data(tmp_path_factory.mktemp("toy-data"))


@pytest.fixture(scope="session")
def run_overrides(pytestconfig):
    """--override: the config overrides every row of this session runs with (its records say so)."""
    return list(pytestconfig.getoption("--override"))


@pytest.fixture(scope="session")
def bench(pytestconfig, scale, results_dir, data_root, run_overrides):
    """bench(row, seed): run the row (or reuse its record) and check it: the pipeline at toy scale, the paper's
    numbers at paper scale."""
    options = {"data_root": data_root, "release_dir": pytestconfig.getoption("--release-dir"),
               "select_on_val": pytestconfig.getoption("--select-on-val"),
               "trusted": pytestconfig.getoption("--trust-checkpoints"),
               "overrides": run_overrides}

    def run(row, seed):
        try:
            record = runner.run_row(row, scale, seed, results_dir, **options)
        except MissingFileError as err:
            if scale == "toy":
                raise
            pytest.skip(f"{row.table}/{row.name}: {err}")
        if scale == "toy":
            check_pipeline(row, seed, record, results_dir, run_overrides)
        else:
            check_paper(row, record)
        return record

    return run


def check_pipeline(row, seed, record, results_dir, options_overrides=()):
    """A toy record is complete and consistent: what was run is the row's switches, numbers are in range."""
    path = runner.record_path(results_dir, row, seed)
    assert path.is_file(), path
    assert record.KIND == "benchmark" and record.row_kind == row.kind
    assert (record.table, record.row, record.seed, record.scale) == (row.table, row.name, seed, "toy")
    assert record.paper == row.paper and record.cited == row.cited
    assert record.row_order == runner.REGISTRY[row.table].index(row)
    reported = [m for m in TABLE_METRICS if row.paper[m] is not None]
    assert sorted(record.comparison) == sorted(reported)
    if row.cited:
        assert record.measured_values is None and record.metrics is None and record.train_dir is None
        return
    for key in ("eval_record", "train_config", "checkpoint"):
        assert (path.parent / getattr(record, key)).is_file(), key
    if record.analysis:
        assert (path.parent / record.analysis["data"]).is_file()
    values = record.measured_values
    assert all(0.0 <= values[m] <= 100.0 for m in TABLE_METRICS), values
    assert values["cluster_acc"] > 0, "nothing matched: the cluster probe predicted no pixel right"
    full = row.config()
    for section, key in (("loss", "zero_clamp"), ("loss", "pointwise"), ("data", "crop"), ("model", "projection"),
                         ("eval", "crf")):
        assert record.config[section][key] == getattr(getattr(full, section), key), f"{section}.{key}"
    for term in ("lambda_self", "lambda_knn", "lambda_rand"):  # the world's weights, a switched-off term kept off
        assert (record.config["loss"][term] == 0) == (getattr(full.loss, term) == 0), term
    assert record.intervals and record.image_counts and (path.parent / record.image_counts).is_file()
    for metric, entry in record.comparison.items():
        assert entry["ci"][0] <= entry["measured"] <= entry["ci"][1] + 1e-9, metric
    cluster, linear = ("cluster_crf", "linear_crf") if full.eval.crf else ("cluster", "linear")
    assert record.measured == {"cluster": cluster, "linear": linear}
    assert values["cluster_miou"] == pytest.approx(100 * record.metrics[cluster]["miou"])
    assert values["linear_acc"] == pytest.approx(100 * record.metrics[linear]["accuracy"])
    assert record.run_overrides == list(options_overrides)
    assert runner.run_row(row, "toy", seed, results_dir, overrides=options_overrides) == records.read(path), \
        "a done row is reused"


def check_paper(row, record):
    """Every measured number within the row's tolerance of the paper's; a documented known gap is xfail."""
    if row.cited:
        return
    bad = runner.failures(record.comparison)
    if bad and row.known_gap:
        pytest.xfail(f"known gap: {row.known_gap}; " + "; ".join(bad))
    assert not bad, f"{row.table}/{row.name} seed {record.seed}: " + "; ".join(bad)
