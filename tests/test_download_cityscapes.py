"""Cityscapes --source official through cityscapesScripts' downloader: credentials, md5 failures, resume.

The library itself is optional: most tests stand in a stub with its API (login(), download_packages(*,
session, package_names, destination_path, resume), read from cityscapesScripts 2.3.0); the last test runs
the real library, when installed, against the local server in place of the Cityscapes site."""
import hashlib
import io
import json
import sys
import types

import pytest

from stego.data.check import check_dataset
from stego.download import cityscapes, manifest
from stego.download import data as download_data
from stego.download.sources import CITYSCAPES_PACKAGES, CITYSCAPES_SITE
from stego.errors import StegoError
from tests import fixtures as F
from tests.http_fixture import FileServer, zip_tree

NAMES = tuple(CITYSCAPES_PACKAGES)  # gtFine_trainvaltest.zip, leftImg8bit_trainvaltest.zip


@pytest.fixture
def packages(tmp_path):
    """{package name: zip bytes} of a fixture Cityscapes, laid out like the site's packages."""
    F.write_cityscapes(tmp_path / "src")
    base = tmp_path / "src" / "cityscapes"
    return {name: zip_tree(base / name.split("_")[0], name.split("_")[0] + "/", extra=[("README", b"readme")])
            for name in NAMES}


class StubSession:
    def get(self, url, **kwargs):
        return types.SimpleNamespace(text="0123456789abcdef0123456789abcdef  package.zip\n")


def install_stub(monkeypatch, packages, corrupt=False):
    """Put a stub `cityscapesscripts.download.downloader` into sys.modules; returns its call log."""
    calls = []

    def download_packages(*, session, package_names, destination_path, resume=False):
        for name in package_names:
            calls.append((name, resume))
            path = f"{destination_path}/{name}"
            with open(path, "ab" if resume else "wb") as f:
                have = f.tell()
                f.write(b"\0" * len(packages[name]) if corrupt else packages[name][have:])
            if corrupt:
                raise Exception("MD5 sum of downloaded file does not match.")

    downloader = types.ModuleType("cityscapesscripts.download.downloader")
    downloader.login = lambda: StubSession()
    downloader.download_packages = download_packages
    package, sub = types.ModuleType("cityscapesscripts"), types.ModuleType("cityscapesscripts.download")
    sub.downloader = downloader
    for name, module in (("cityscapesscripts", package), ("cityscapesscripts.download", sub),
                         ("cityscapesscripts.download.downloader", downloader)):
        monkeypatch.setitem(sys.modules, name, module)
    return calls


@pytest.fixture
def no_terminal(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "stdin", io.StringIO())
    creds = tmp_path / "cityscapes-user" / "credentials.json"
    monkeypatch.setattr(cityscapes, "credentials_file", lambda: creds)
    return creds


def test_without_the_package_it_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "cityscapesscripts", None)
    with pytest.raises(StegoError) as err:
        download_data.download("cityscapes27", tmp_path / "data", "official")
    msg = str(err.value)
    assert "\n" not in msg and "pip install cityscapesScripts" in msg and "--source release" in msg
    assert str(tmp_path / "data" / "downloads" / NAMES[0]) in msg


def test_without_credentials_one_line_says_how_to_provide_them(monkeypatch, packages, no_terminal, tmp_path):
    install_stub(monkeypatch, packages)
    with pytest.raises(StegoError) as err:
        download_data.download("cityscapes27", tmp_path / "data", "official")
    msg = str(err.value)
    assert "\n" not in msg and str(no_terminal) in msg and '"username"' in msg and "terminal" in msg


def test_with_credentials_the_library_fetches_and_the_tree_checks(monkeypatch, packages, no_terminal, tmp_path):
    no_terminal.parent.mkdir(parents=True)
    no_terminal.write_text(json.dumps({"username": "u", "password": "p"}))
    calls = install_stub(monkeypatch, packages)
    root = tmp_path / "data"
    staged = root / "downloads" / cityscapes.STAGING / NAMES[1]
    staged.parent.mkdir(parents=True)
    staged.write_bytes(packages[NAMES[1]][:1000])  # an interrupted earlier run: the library resumes it
    download_data.download("cityscapes27", root, "official")
    assert calls == [(NAMES[0], False), (NAMES[1], True)]
    assert check_dataset("cityscapes27", root, workers=1).ok
    rec = manifest.load(root).files[f"downloads/{NAMES[1]}"]
    assert rec.checked == cityscapes.CHECKED and rec.sha256 == hashlib.sha256(packages[NAMES[1]]).hexdigest()
    assert not staged.exists()


def test_md5_failure_moves_the_file_aside_naming_both_hashes(monkeypatch, packages, tmp_path):
    install_stub(monkeypatch, packages, corrupt=True)
    monkeypatch.setattr(cityscapes, "login", lambda downloader, hint: StubSession())
    root = tmp_path / "data"
    with pytest.raises(StegoError) as err:
        download_data.download("cityscapes27", root, "official")
    bad = hashlib.md5(b"\0" * len(packages[NAMES[0]])).hexdigest()
    assert bad in str(err.value) and "0123456789abcdef0123456789abcdef" in str(err.value)
    assert (root / "downloads" / f"{NAMES[0]}.bad").is_file() and not (root / "downloads" / NAMES[0]).exists()
    assert not (root / "cityscapes").exists()


def test_the_real_library_against_a_local_site(monkeypatch, packages, tmp_path):
    pytest.importorskip("cityscapesscripts.download.downloader")
    requests = pytest.importorskip("requests")

    class LocalSite(requests.Session):
        def request(self, method, url, *args, **kwargs):
            return super().request(method, url.replace(CITYSCAPES_SITE, server.url()), *args, **kwargs)

    with FileServer() as server:
        server.add("/downloads/?list", json.dumps([
            {"name": name, "packageID": str(pid), "size": "1MB", "thirdparty": "0"}
            for name, (pid, _) in CITYSCAPES_PACKAGES.items()]).encode())
        for name, (pid, _) in CITYSCAPES_PACKAGES.items():
            server.add(f"/md5-sum/?packageID={pid}", f"{hashlib.md5(packages[name]).hexdigest()} {name}".encode())
            server.add(f"/file-handling/?packageID={pid}", packages[name])
        monkeypatch.setattr(cityscapes, "login", lambda lib, hint: LocalSite())
        root = tmp_path / "data"
        staged = root / "downloads" / cityscapes.STAGING / NAMES[1]
        staged.parent.mkdir(parents=True)
        staged.write_bytes(packages[NAMES[1]][:1000])
        download_data.download("cityscapes27", root, "official")
        pid = CITYSCAPES_PACKAGES[NAMES[1]][0]
        assert server.ranges(f"/file-handling/?packageID={pid}") == ["bytes=1000-"]
        assert server.served[f"/file-handling/?packageID={pid}"] == len(packages[NAMES[1]]) - 1000
        assert check_dataset("cityscapes27", root, workers=1).ok
        # a corrupt package: the library's md5 check fails, the file goes aside, both md5s are named
        server.add(f"/file-handling/?packageID={CITYSCAPES_PACKAGES[NAMES[0]][0]}", b"\0" * 5000)
        other = tmp_path / "other"
        with pytest.raises(StegoError, match=f"md5 is {hashlib.md5(bytes(5000)).hexdigest()}, expected "
                                             f"{hashlib.md5(packages[NAMES[0]]).hexdigest()}"):
            download_data.download("cityscapes27", other, "official")
        assert (other / "downloads" / f"{NAMES[0]}.bad").is_file()


def test_mirror_needs_no_login(monkeypatch, packages, tmp_path):
    monkeypatch.setitem(sys.modules, "cityscapesscripts", None)
    with FileServer() as server:
        for name, data in packages.items():
            server.add(f"/m/{name}", data)
        download_data.download("cityscapes27", tmp_path / "data", "official", server.url("/m"))
        url = server.url(f"/m/{NAMES[0]}")
    assert check_dataset("cityscapes27", tmp_path / "data", workers=1).ok
    assert manifest.load(tmp_path / "data").files[f"downloads/{NAMES[0]}"].url == url
