"""`stego data download` end to end against a real HTTP server on 127.0.0.1 serving fixture archives laid out
like the real ones: every dataset and source ends in a tree `stego data check` passes; re-runs skip; damage
is refused and leaves the tree intact; the manifest catches later damage."""
import argparse
import dataclasses
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stego.data.check import check_dataset, data_subparsers
from stego.download import data as download_data
from stego.download import manifest, sources
from stego.download.fetch import FetchOptions
from stego.download.manifest import verify_manifest
from stego.download.sources import Digest
from stego.errors import StegoError
from tests import fixtures as F
from tests.http_fixture import tar_tree, zip_tree

FAST = FetchOptions(retries=1, timeout=10)
REPO = Path(__file__).resolve().parents[1]


def serve_release(server, monkeypatch, dataset, data):
    """Serve `data` as the release zip of `dataset` and point the release URL at the server."""
    remote = sources.RELEASE_ZIPS[dataset]
    server.add(f"/release/{remote.name}", data)
    monkeypatch.setitem(sources.RELEASE_ZIPS, dataset,
                        dataclasses.replace(remote, url=server.url(f"/release/{remote.name}")))
    return f"/release/{remote.name}"


def assert_checks(dataset, root):
    report = check_dataset(dataset, root, workers=1)
    assert report.ok, [(p.path, p.reason) for p in report.problems]
    return report


def run_cli(argv):
    parser = argparse.ArgumentParser()
    download_data.add_cli(data_subparsers(parser.add_subparsers(dest="command")))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.parametrize("dataset, writer, prefix", [
    ("cocostuff27", F.write_cocostuff, "cocostuff/"),
    ("cocostuff27", F.write_cocostuff, ""),
    ("cityscapes27", F.write_cityscapes, ""),
    ("potsdam3", F.write_potsdam, "potsdam/"),
])
def test_release_zip_with_or_without_its_folder(server, monkeypatch, tmp_path, capsys, dataset, writer, prefix):
    writer(tmp_path / "src")
    folder = tmp_path / "src" / download_data.FOLDERS[dataset]
    if dataset == "potsdam3":
        (folder / "all.txt").unlink()  # written from the three lists when the zip has none
    serve_release(server, monkeypatch, dataset, zip_tree(folder, prefix, extra=[("__MACOSX/._x", b"junk")]))
    root = tmp_path / "data"
    assert run_cli(["data", "download", dataset, "--root", str(root), "--check"]) == 0
    out = capsys.readouterr().out
    assert f"{dataset}: ready in {root / download_data.FOLDERS[dataset]}" in out and "result: OK" in out
    assert not list(root.glob(".*.partial"))
    m = manifest.load(root)
    assert list(m.files) == [f"downloads/{sources.RELEASE_ZIPS[dataset].name}"]
    assert list(m.trees) == [download_data.FOLDERS[dataset]] and verify_manifest(root) == []


def test_release_potsdam_raw(server, monkeypatch, tmp_path):
    src = tmp_path / "src" / "potsdamraw" / "processed"
    for sub in ("imgs", "gt"):
        (src / sub).mkdir(parents=True)
        (src / sub / "0_0_0.mat").write_bytes(b"tile")
    serve_release(server, monkeypatch, "potsdam3_raw", zip_tree(tmp_path / "src", ""))
    download_data.download("potsdam3_raw", tmp_path / "data", options=FAST)
    assert (tmp_path / "data" / "potsdamraw" / "processed" / "gt" / "0_0_0.mat").read_bytes() == b"tile"


def serve_official_coco(server, monkeypatch, src):
    """COCO zips, stuffthingmaps, IIC's curated tar and PiCIE's lists, on a mirror, with the fixture's hashes."""
    fx = F.write_cocostuff(src)
    base = src / "cocostuff"
    iic = src / "iic" / "curated"
    for split in ("train2017", "val2017"):
        server.add(f"/mirror/{split}.zip", zip_tree(base / "images" / split, f"{split}/"))
        (iic / split).mkdir(parents=True)
        for name in ("Coco164kFull_Stuff_Coarse.txt", "Coco164kFew_Stuff_6.txt"):
            (iic / split / name).write_text((base / "curated" / split / "Coco164kFull_Stuff_Coarse.txt").read_text())
        server.add(f"/mirror/{split}/Coco164kFull_Stuff_Coarse_7.txt",
                   (base / "curated" / split / "Coco164kFull_Stuff_Coarse_7.txt").read_bytes())
    # IIC's train _7 list differs from PiCIE's (the one with the known hash): PiCIE's must win
    (iic / "train2017" / "Coco164kFull_Stuff_Coarse_7.txt").write_text("".join(f"{i}\n" for i in fx.ids["train"]))
    server.add("/mirror/stuffthingmaps_trainval2017.zip", zip_tree(base / "annotations"))
    server.add("/mirror/COCOStuff164kCurated.tar.gz", tar_tree(src / "iic", "COCOStuff164kCurated/"))
    for name in ("COCO_TRAIN", "COCO_VAL"):
        remote = getattr(sources, name)
        md5 = hashlib.md5(server.files[f"/mirror/{remote.name}"]).hexdigest()
        monkeypatch.setattr(sources, name, dataclasses.replace(remote, digests=(Digest("md5", md5, "fixture"),)))
    picie = {}
    for split, remote in sources.PICIE_LISTS.items():
        prefix = hashlib.sha256(server.files[f"/mirror/{remote.name}"]).hexdigest()[:8]
        picie[split] = dataclasses.replace(remote, digests=(Digest("sha256", prefix, "fixture"),))
    monkeypatch.setattr(sources, "PICIE_LISTS", picie)
    return fx


def test_official_cocostuff_via_mirror(server, monkeypatch, tmp_path):
    fx = serve_official_coco(server, monkeypatch, tmp_path / "src")
    root = tmp_path / "data"
    download_data.download("cocostuff27", root, "official", server.url("/mirror"), FAST)
    assert_checks("cocostuff27", root)
    curated = root / "cocostuff" / "curated"
    assert (curated / "train2017" / "Coco164kFull_Stuff_Coarse_7.txt").read_text().split() == fx.ids["train_7"]
    assert (curated / "val2017" / "Coco164kFew_Stuff_6.txt").is_file()
    assert manifest.load(root).files["downloads/val2017.zip"].checked.startswith("md5 ")
    assert verify_manifest(root) == []


def test_official_cityscapes_via_mirror(server, tmp_path):
    F.write_cityscapes(tmp_path / "src")
    base = tmp_path / "src" / "cityscapes"
    for folder, name in (("gtFine", "gtFine_trainvaltest.zip"), ("leftImg8bit", "leftImg8bit_trainvaltest.zip")):
        extra = [("README", b"x"), ("license.txt", b"y")]
        server.add(f"/mirror/{name}", zip_tree(base / folder, f"{folder}/", extra=extra))
    root = tmp_path / "data"
    download_data.download("cityscapes27", root, "official", server.url("/mirror"), FAST)
    assert_checks("cityscapes27", root)
    assert sorted(p.name for p in (root / "cityscapes").iterdir()) == ["gtFine", "leftImg8bit"]


def test_official_potsdam_from_iic_tar(server, monkeypatch, tmp_path):
    F.write_potsdam(tmp_path / "src")
    (tmp_path / "src" / "potsdam" / "all.txt").unlink()
    server.add("/iic/Potsdam.tar.gz", tar_tree(tmp_path / "src" / "potsdam", "Potsdam/"))
    monkeypatch.setattr(sources, "IIC_POTSDAM", dataclasses.replace(sources.IIC_POTSDAM,
                                                                    url=server.url("/iic/Potsdam.tar.gz")))
    root = tmp_path / "data"
    download_data.download("potsdam3", root, "official", options=FAST)
    assert_checks("potsdam3", root)
    lists = [(root / "potsdam" / n).read_text() for n in ("labelled_train.txt", "unlabelled_train.txt",
                                                           "labelled_test.txt", "all.txt")]
    assert lists[3] == "".join(lists[:3])


def test_rerun_skips_every_finished_step(server, monkeypatch, tmp_path, caplog):
    F.write_cocostuff(tmp_path / "src")
    path = serve_release(server, monkeypatch, "cocostuff27", zip_tree(tmp_path / "src"))
    root = tmp_path / "data"
    download_data.download("cocostuff27", root, options=FAST)
    n_requests = len(server.requests)
    with caplog.at_level(logging.INFO):
        download_data.download("cocostuff27", root, options=FAST)
    assert len(server.requests) == n_requests
    assert f"skip: {root / 'cocostuff'} already in place" in caplog.text
    (root / "downloads" / "cocostuff.zip").rename(tmp_path / "moved.zip")  # archive gone, tree there: still skipped
    download_data.download("cocostuff27", root, options=FAST)
    assert len(server.requests) == n_requests and server.served[path] == len(server.files[path])


def test_manifest_detects_truncated_archive_and_changed_tree(server, monkeypatch, tmp_path):
    F.write_cocostuff(tmp_path / "src")
    serve_release(server, monkeypatch, "cocostuff27", zip_tree(tmp_path / "src"))
    root = tmp_path / "data"
    download_data.download("cocostuff27", root, options=FAST)
    archive = root / "downloads" / "cocostuff.zip"
    F.truncate_file(archive)
    image = next((root / "cocostuff" / "images" / "val2017").iterdir())
    F.truncate_file(image)
    problems = {Path(p.path): p.reason for p in verify_manifest(root)}
    assert set(problems) == {archive, root / "cocostuff"}
    assert "truncated" in problems[archive]
    assert verify_manifest(root, group="cityscapes27") == []
    # as the problems say: delete the folder and re-run; the truncated archive (no published hash, but not the
    # manifest's size) is moved aside and fetched again
    shutil.rmtree(root / "cocostuff")
    download_data.download("cocostuff27", root, options=FAST)
    assert archive.with_name("cocostuff.zip.bad").is_file()
    assert_checks("cocostuff27", root)
    assert verify_manifest(root, full=True) == []


def test_corrupt_archive_is_refused_naming_both_hashes_and_the_tree_stays_intact(server, monkeypatch, tmp_path):
    serve_official_coco(server, monkeypatch, tmp_path / "src")
    good = server.files["/mirror/val2017.zip"]
    server.add("/mirror/val2017.zip", good[:-200] + bytes(200))
    root = tmp_path / "data"
    with pytest.raises(StegoError) as err:
        download_data.download("cocostuff27", root, "official", server.url("/mirror"), FAST)
    msg = str(err.value)
    assert hashlib.md5(good).hexdigest() in msg and hashlib.md5(server.files["/mirror/val2017.zip"]).hexdigest() in msg
    assert (root / "downloads" / "val2017.zip.bad").is_file() and not (root / "downloads" / "val2017.zip").exists()
    assert not (root / "cocostuff" / "images" / "val2017").exists()
    assert not list((root / "cocostuff" / "images").glob(".*"))
    assert (root / "cocostuff" / "images" / "train2017").is_dir()
    server.add("/mirror/val2017.zip", good)
    download_data.download("cocostuff27", root, "official", server.url("/mirror"), FAST)
    assert_checks("cocostuff27", root)


def test_damaged_zip_without_published_hash_is_moved_aside(server, monkeypatch, tmp_path):
    F.write_cityscapes(tmp_path / "src")
    serve_release(server, monkeypatch, "cityscapes27", zip_tree(tmp_path / "src")[:-100])
    root = tmp_path / "data"
    with pytest.raises(StegoError, match="truncated or corrupt.*moved to.*cityscapes.zip.bad") as err:
        download_data.download("cityscapes27", root, options=FAST)
    assert "\n" not in str(err.value) and "azcopy copy" in str(err.value)
    assert not (root / "cityscapes").exists() and not (root / ".cityscapes.partial").exists()
    assert manifest.load(root).files == {}


def test_zip_without_the_expected_layout_is_an_error(server, monkeypatch, tmp_path):
    F.write_cityscapes(tmp_path / "src")
    serve_release(server, monkeypatch, "cocostuff27", zip_tree(tmp_path / "src"))
    with pytest.raises(StegoError, match="holds no curated.*not the expected archive"):
        download_data.download("cocostuff27", tmp_path / "data", options=FAST)


def test_an_archive_member_outside_its_folder_is_refused(server, monkeypatch, tmp_path):
    F.write_potsdam(tmp_path / "src")
    serve_release(server, monkeypatch, "potsdam3", zip_tree(tmp_path / "src", extra=[("../evil.txt", b"x")]))
    with pytest.raises(StegoError, match="would be written outside"):
        download_data.download("potsdam3", tmp_path / "data", options=FAST)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "data" / "potsdam").exists()
    assert not (tmp_path / "data" / ".potsdam.partial").exists()
    assert (tmp_path / "data" / "downloads" / "potsdam.zip.bad").is_file()


def test_release_404_says_azcopy_and_the_other_source(server, monkeypatch, tmp_path):
    serve_release(server, monkeypatch, "cocostuff27", b"")
    server.files.clear()
    with pytest.raises(StegoError) as err:
        download_data.download("cocostuff27", tmp_path / "data", options=FAST)
    msg = str(err.value)
    assert "HTTP 404" in msg and "azcopy copy" in msg and "--source official" in msg
    assert str(tmp_path / "data" / "downloads" / "cocostuff.zip") in msg


def test_remove_archives(server, monkeypatch, tmp_path):
    F.write_potsdam(tmp_path / "src")
    serve_release(server, monkeypatch, "potsdam3", zip_tree(tmp_path / "src"))
    root = tmp_path / "data"
    download_data.download("potsdam3", root, options=FAST, remove_archives=True)
    assert not (root / "downloads" / "potsdam.zip").exists()
    assert manifest.load(root).files["downloads/potsdam.zip"].removed and verify_manifest(root) == []
    download_data.download("potsdam3", root, options=FAST)
    assert_checks("potsdam3", root)


def test_a_killed_extraction_leaves_nothing_in_place_and_a_rerun_completes_it(server, monkeypatch, tmp_path,
                                                                            caplog):
    F.write_cocostuff(tmp_path / "src", n_train=6, n_val=4)
    serve_release(server, monkeypatch, "cocostuff27", zip_tree(tmp_path / "src"))
    root = tmp_path / "data"
    script = ("import sys, dataclasses; from stego.download import data, sources; "
              "r = sources.RELEASE_ZIPS['cocostuff27']; "
              "sources.RELEASE_ZIPS['cocostuff27'] = dataclasses.replace(r, url=sys.argv[2]); "
              "data.download('cocostuff27', sys.argv[1])")
    env = dict(os.environ, STEGO_TEST_UNPACK_DELAY="0.3", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", script, str(root), sources.RELEASE_ZIPS["cocostuff27"].url],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = root / ".cocostuff.partial"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len([p for p in partial.rglob("*") if p.is_file()]) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial.is_dir() and not (root / "cocostuff").exists()
    written = len([p for p in partial.rglob("*") if p.is_file() and not p.name.endswith(".part")])
    with caplog.at_level(logging.INFO):
        download_data.download("cocostuff27", root, options=FAST)
    assert "resuming the extraction" in caplog.text and f"({written} already there" in caplog.text
    assert not partial.exists()
    assert_checks("cocostuff27", root)
    assert verify_manifest(root) == []


@pytest.mark.parametrize("dataset, writer", [("cocostuff27", F.write_cocostuff), ("cityscapes27", F.write_cityscapes),
                                             ("potsdam3", F.write_potsdam)])
def test_the_stego_command_from_an_empty_folder_to_a_checked_tree(server, tmp_path, capsys, dataset, writer):
    """`stego data download D --root R --mirror URL`, then `stego data check`, through the real command line; a
    file of the extracted tree changed afterwards is named by data check (against the download manifest)."""
    from stego.cli import main

    writer(tmp_path / "src")
    folder = download_data.FOLDERS[dataset]
    server.add(f"/mirror/{sources.RELEASE_ZIPS[dataset].name}", zip_tree(tmp_path / "src" / folder, f"{folder}/"))
    root = tmp_path / "empty"
    assert main(["data", "download", dataset, "--root", str(root), "--mirror", server.url("/mirror")]) == 0
    assert main(["data", "check", "--dataset", dataset, "--root", str(root)]) == 0
    assert "result: OK" in capsys.readouterr().out
    victim = next(p for p in sorted((root / folder).rglob("*")) if p.is_file() and p.suffix in (".png", ".mat"))
    victim.write_bytes(victim.read_bytes() + b"x")
    assert main(["data", "check", "--dataset", dataset, "--root", str(root)]) == 1
    assert "[downloads]" in capsys.readouterr().out
