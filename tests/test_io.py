"""Atomic writes: all or nothing, and files as readable as the umask allows (colleagues on shared storage)."""
import os
import stat

import pytest
import torch

from stego.data.knn import KnnTable
from stego.errors import StegoError
from stego.io import atomic_save_json, atomic_write, current_umask, read_json


@pytest.fixture
def umask():
    def set_mask(mask):
        os.umask(mask)
        return mask

    old = os.umask(0o022)
    os.umask(old)
    yield set_mask
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mask):
    umask(mask)
    assert current_umask() == mask
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open() makes under this umask
    with atomic_write(tmp_path / "a.bin") as f:
        f.write(b"data")
    atomic_save_json({"a": 1}, tmp_path / "b.json")
    KnnTable(torch.zeros(2, 1, dtype=torch.int64), torch.ones(2, 1), {"n": 2, "k": 1}).save(tmp_path / "t.pt")
    for name in ("a.bin", "b.json", "t.pt"):
        assert _mode(tmp_path / name) == _mode(plain) == 0o666 & ~mask, name


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "keep.json"
    atomic_save_json({"v": 1}, target)
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write("half")
            raise RuntimeError("killed")
    assert read_json(target) == {"v": 1} and os.listdir(tmp_path) == ["keep.json"]
    target.write_text("{not json")
    with pytest.raises(StegoError, match=r"keep\.json: not readable JSON"):
        read_json(target)
