"""stego.download.fetch against a real HTTP server on 127.0.0.1: resume, retries, sizes, hashes, errors."""
import collections
import hashlib
import os

import pytest

from stego.download import fetch as fetch_module
from stego.download.fetch import FetchOptions, fetch
from stego.download.sources import Digest
from stego.errors import StegoError

FAST = FetchOptions(retries=2, timeout=5)
MiB = 1 << 20


@pytest.fixture
def blob(server):
    data = os.urandom(3 * MiB + 123)
    server.add("/f.bin", data)
    return data


def test_resume_after_dropped_connection_fetches_every_byte_once(server, blob, tmp_path):
    server.drop("/f.bin", after=MiB)
    got = fetch(server.url("/f.bin"), tmp_path / "f.bin", options=FAST)
    assert (tmp_path / "f.bin").read_bytes() == blob
    assert not (tmp_path / "f.bin.part").exists()
    assert server.ranges("/f.bin") == [None, f"bytes={MiB}-"]
    assert server.served["/f.bin"] == len(blob)
    assert got.size == len(blob) and got.sha256 == hashlib.sha256(blob).hexdigest()


def test_resume_of_a_part_left_by_an_earlier_run(server, blob, tmp_path):
    (tmp_path / "f.bin.part").write_bytes(blob[:1000])
    got = fetch(server.url("/f.bin"), tmp_path / "f.bin", options=FAST)
    assert (tmp_path / "f.bin").read_bytes() == blob
    assert server.ranges("/f.bin") == ["bytes=1000-"]
    assert server.served["/f.bin"] == len(blob) - 1000
    assert got.resumed_from == 1000


def test_a_complete_part_is_not_fetched_again(server, blob, tmp_path):
    (tmp_path / "f.bin.part").write_bytes(blob)
    fetch(server.url("/f.bin"), tmp_path / "f.bin", options=FAST)
    assert (tmp_path / "f.bin").read_bytes() == blob
    assert server.served["/f.bin"] == 0  # 416: nothing past the end


def test_5xx_is_retried(server, blob, tmp_path):
    server.fail("/f.bin", 503, times=2)
    fetch(server.url("/f.bin"), tmp_path / "f.bin", options=FAST)
    assert (tmp_path / "f.bin").read_bytes() == blob
    assert len(server.ranges("/f.bin")) == 3


def test_a_stalled_connection_times_out_and_is_retried(server, blob, tmp_path):
    server.stall("/f.bin", 1.5)
    fetch(server.url("/f.bin"), tmp_path / "f.bin", options=FetchOptions(retries=2, timeout=0.3))
    assert (tmp_path / "f.bin").read_bytes() == blob


def test_persistent_500_is_one_line_naming_url_file_and_what_to_do(server, blob, tmp_path):
    server.fail("/f.bin", 500, times=10)
    with pytest.raises(StegoError) as err:
        fetch(server.url("/f.bin"), tmp_path / "f.bin", manual="azcopy", options=FAST)
    msg = str(err.value)
    assert "\n" not in msg
    assert "HTTP 500" in msg and server.url("/f.bin") in msg and str(tmp_path / "f.bin") in msg
    assert "re-run resumes" in msg and "azcopy" in msg
    assert len(server.ranges("/f.bin")) == FAST.retries + 1
    assert not (tmp_path / "f.bin").exists()


def test_404_is_not_retried_and_says_where_to_put_the_file(server, tmp_path):
    with pytest.raises(StegoError) as err:
        fetch(server.url("/gone.zip"), tmp_path / "gone.zip", alternative="use --source official", options=FAST)
    msg = str(err.value)
    assert "\n" not in msg
    assert "HTTP 404" in msg and server.url("/gone.zip") in msg
    assert f"put it at {tmp_path / 'gone.zip'}" in msg and "--source official" in msg
    assert len(server.requests) == 1


def test_hash_mismatch_names_both_hashes_and_moves_the_file_aside(server, blob, tmp_path):
    expected = hashlib.sha256(b"the real file").hexdigest()
    with pytest.raises(StegoError) as err:
        fetch(server.url("/f.bin"), tmp_path / "f.bin", digests=(Digest("sha256", expected, "test"),), options=FAST)
    msg = str(err.value)
    assert expected in msg and hashlib.sha256(blob).hexdigest() in msg
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()
    assert (tmp_path / "f.bin.bad").read_bytes() == blob


def test_known_hash_prefix_passes(server, blob, tmp_path):
    md5 = hashlib.md5(blob).hexdigest()
    got = fetch(server.url("/f.bin"), tmp_path / "f.bin", digests=(Digest("md5", md5[:8], "test"),), options=FAST)
    assert got.checked.startswith(f"md5 {md5[:8]}")


def test_not_enough_disk_space_stops_before_the_download(server, blob, tmp_path, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(fetch_module.shutil, "disk_usage", lambda path: usage(10**9, 10**9, MiB))
    with pytest.raises(StegoError, match="free some space"):
        fetch(server.url("/f.bin"), tmp_path / "f.bin", options=FAST)
    assert list(tmp_path.iterdir()) == []  # not a byte written
