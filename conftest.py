"""Shared pytest set-up: the --run-gpu switch and offline defaults for every test."""
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_addoption(parser):
    parser.addoption(
        "--run-gpu",
        action="store_true",
        default=False,
        help="run tests and benchmarks marked 'gpu' (need CUDA, real data and weights)",
    )


def pytest_configure(config):
    """--run-gpu means the GPU tests must run: without a CUDA device, stop at once (non-zero) instead of skipping."""
    if config.getoption("--run-gpu"):
        import torch

        if not torch.cuda.is_available():
            pytest.exit("--run-gpu: no CUDA device is visible (torch.cuda.is_available() is False); run on a GPU "
                        "machine, or drop --run-gpu for the CPU suite", returncode=4)


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-gpu"):
        return
    skip = pytest.mark.skip(reason="GPU test: pass --run-gpu on a machine with CUDA, data and weights")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
