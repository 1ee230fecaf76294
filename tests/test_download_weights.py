"""`stego weights download|verify` against a real HTTP server on 127.0.0.1: mirrors, hash rules, folders."""
import argparse
import dataclasses
import hashlib
import os
from pathlib import Path

import pytest

from stego import backbones
from stego.download import manifest, places, sources, weights
from stego.download.fetch import FetchOptions
from stego.errors import StegoError

FAST = FetchOptions(retries=1, timeout=10)


def run_cli(argv):
    parser = argparse.ArgumentParser()
    weights.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_backbone_weights_via_mirror_land_where_the_loader_looks(server, monkeypatch, tmp_path):
    monkeypatch.setenv(backbones.WEIGHTS_ENV, str(tmp_path / "w"))
    for name in ("dino_vits16", "dino_vitb8"):
        server.add(f"/m/{backbones.BACKBONES[name].weight_file}", os.urandom(5000))
    assert run_cli(["weights", "download", "dino_vits16", "dino_vitb8", "--mirror", server.url("/m")]) == 0
    assert backbones.resolve_weight_file("dino_vits16") == tmp_path / "w" / "dino_deitsmall16_pretrain.pth"
    file = backbones.BACKBONES["dino_vitb8"].weight_file
    rec = manifest.load(tmp_path / "w").files[file]
    assert rec.group == "weights" and rec.sha256 == hashlib.sha256(server.files[f"/m/{file}"]).hexdigest()
    n = len(server.requests)
    weights.download_weights(["dino_vits16"], mirror=server.url("/m"), options=FAST)
    assert len(server.requests) == n


def test_torch_hub_name_suffix_is_checked_and_a_bad_file_goes_aside(server, tmp_path):
    data = os.urandom(4000)
    server.add("/m/resnet50-0676ba61.pth", data)
    with pytest.raises(StegoError) as err:
        weights.download_weights(["r50_supervised"], tmp_path, server.url("/m"), FAST)
    msg = str(err.value)
    assert f"sha256 is {hashlib.sha256(data).hexdigest()}, expected sha256 0676ba61…" in msg and "\n" not in msg
    assert (tmp_path / "resnet50-0676ba61.pth.bad").read_bytes() == data
    assert not (tmp_path / "resnet50-0676ba61.pth").exists()


def test_a_file_put_by_hand_is_checked_before_it_is_used(tmp_path):
    (tmp_path / "resnet50-0676ba61.pth").write_bytes(b"not the weights")
    with pytest.raises(StegoError, match="sha256 is .*expected sha256 0676ba61.*moved the file found"):
        weights.download_weights(["r50_supervised"], tmp_path, "http://127.0.0.1:9/unused", FAST)
    assert (tmp_path / "resnet50-0676ba61.pth.bad").is_file()


def test_known_hash_rules():
    assert [(d.algo, d.value) for d in weights.weight_digests("resnet50-0676ba61.pth")] == [("sha256", "0676ba61")]
    moco = weights.weight_digests("moco_v2_800ep_pretrain.pth.tar")
    assert [(d.algo, d.value) for d in moco] == [("md5", "a04e12f8")]
    assert weights.weight_digests("dino_vitbase8_pretrain.pth") == ()
    vitb = backbones.BACKBONES["dinov3_vitb16"].weight_file
    assert [d.value for d in weights.weight_digests(vitb)] == ["73cec8be"]


def test_dinov3_is_never_downloaded(server, tmp_path):
    with pytest.raises(StegoError, match="licence-gated and never downloaded"):
        weights.download_weights(["dinov3_vitb16"], tmp_path, server.url("/m"), FAST)
    assert server.requests == []


def test_unknown_backbone(tmp_path):
    with pytest.raises(StegoError, match="choose from .*dino_vits16"):
        weights.download_weights(["filterbank"], tmp_path, None, FAST)


def test_release_dir_rule(monkeypatch, tmp_path):
    monkeypatch.delenv(places.RELEASE_ENV, raising=False)
    assert places.release_dir() == Path("saved_models")
    monkeypatch.setenv(places.RELEASE_ENV, str(tmp_path))
    assert places.release_dir() == tmp_path


def test_released_checkpoints_via_mirror_into_the_release_dir(server, monkeypatch, tmp_path):
    monkeypatch.setenv(places.RELEASE_ENV, str(tmp_path / "release"))
    for name in sources.DEFAULT_CHECKPOINTS:
        server.add(f"/m/{name}", os.urandom(3000))
    assert run_cli(["weights", "download", "--release", "--mirror", server.url("/m")]) == 0
    assert sorted(p.name for p in (tmp_path / "release").iterdir() if not p.name.startswith(".")) == sorted(
        sources.DEFAULT_CHECKPOINTS)
    assert manifest.verify_manifest(tmp_path / "release", full=True) == []


def test_checkpoint_404_names_azcopy(server, monkeypatch, tmp_path):
    name = sources.DEFAULT_CHECKPOINTS[0]
    monkeypatch.setitem(sources.CHECKPOINTS, name, dataclasses.replace(sources.CHECKPOINTS[name],
                                                                       url=server.url(f"/gone/{name}")))
    with pytest.raises(StegoError) as err:
        weights.download_checkpoints([name], tmp_path, options=FAST)
    msg = str(err.value)
    assert "HTTP 404" in msg and f"azcopy copy {server.url(f'/gone/{name}')} {tmp_path / name}" in msg


def test_verify_reports_bad_hashes_and_truncated_downloads(server, tmp_path, capsys):
    server.add("/m/dino_deitsmall16_pretrain.pth", os.urandom(5000))
    weights.download_weights(["dino_vits16"], tmp_path, server.url("/m"), FAST)
    assert run_cli(["weights", "verify", "--dir", str(tmp_path)]) == 0
    (tmp_path / backbones.BACKBONES["dinov3_vits16"].weight_file).write_bytes(b"something else")
    with open(tmp_path / "dino_deitsmall16_pretrain.pth", "r+b") as f:
        f.truncate(100)
    assert run_cli(["weights", "verify", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "expected sha256 08c60483" in out and "is 100 bytes, was downloaded with 5000" in out


def test_download_needs_names_or_release():
    with pytest.raises(StegoError, match="name the backbones"):
        run_cli(["weights", "download"])
