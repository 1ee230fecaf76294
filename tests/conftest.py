"""Fixtures several test modules share: a local HTTP file server (downloads), and no network for weights."""
import pytest
import torch

from stego.backbones import weights
from tests.http_fixture import FileServer


@pytest.fixture
def server(monkeypatch):
    """A file server on 127.0.0.1 (tests/http_fixture.py); downloads retry without waiting."""
    monkeypatch.setenv("STEGO_DOWNLOAD_BACKOFF", "0")
    with FileServer() as s:
        yield s


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Weights cannot be downloaded: torch hub fails, its folder and $STEGO_WEIGHTS_DIR are empty, offline set."""
    def fail(*args, **kwargs):
        raise AssertionError("tests must never download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv(weights.WEIGHTS_ENV, str(tmp_path / "env_dir"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
