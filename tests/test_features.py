"""The backbone-feature store (stego.data.features): it holds what the backbone makes of each item, builds once
(resumably, atomically, under a lock), and refuses in one line, with the rebuild command, what it was not made for."""
import os
import shlex
import shutil
import threading

import numpy as np
import pytest
import torch

from stego import build
from stego.cli import build_parser, main
from stego.config import with_overrides
from stego.data.features import INDEX, CachedItems, FeatureStore, build_store, store_expect
from stego.data.synthetic import SceneSpec, make_scenes
from stego.errors import MissingFileError, StegoError
from tests.test_train import tiny


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_scenes(tmp_path_factory.mktemp("scenes"), SceneSpec(n_train=20, n_val=4, size=48), seed=5)


class Counting(torch.nn.Module):
    """A backbone that counts the images it embeds and can fail after `fail_after` forwards (a killed build)."""

    def __init__(self, backbone, fail_after=None):
        super().__init__()
        self.backbone, self.images, self.calls, self.fail_after = backbone, 0, 0, fail_after

    def forward(self, x):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.images += len(x)
        return self.backbone(x)


def _parts(root, dtype="float32", **extra):
    cfg = with_overrides(tiny(root), [f"data.features_dtype={dtype}", *(f"{k}={v}" for k, v in extra.items())])
    return cfg, build.backbone_for(cfg), build.train_dataset(cfg), build.feature_spec(cfg)


def _build(cfg, backbone, dataset, spec, **kw):
    return build_store(backbone, dataset, spec.folder, spec.meta(), root=cfg.data.root, **kw)


def test_a_store_holds_what_the_backbone_makes_of_each_item(scenes):
    cfg, backbone, dataset, spec = _parts(scenes)
    store = _build(cfg, backbone, dataset, spec, batch_size=7, chunk=8)
    half = _build(*_parts(scenes, "float16"), batch_size=7, chunk=8)
    assert (len(store), store.chunks) == (20, 3) and spec.folder.name == "dino_vits16_imagefolder_train_none_32_float32"
    with torch.no_grad():  # each item alone through the backbone: another batch composition than the store's
        direct = torch.cat([backbone(dataset[i]["img"][None]) for i in range(len(dataset))])
    labels = torch.stack([dataset[i]["label"] for i in range(len(dataset))])
    got = store.features(range(20))
    assert got.dtype == torch.float32 and got.shape == direct.shape == (20, 384, 2, 2)
    rounding = 1e-6 * direct.abs().max()  # float32: the last bits change with the batch the item went in
    assert (got - direct).abs().max() <= rounding
    assert torch.equal(store.labels(range(20)), labels) and len(labels.unique()) == 5
    # float16 keeps 11 significant bits: each value within 2^-11 of itself (of the float32 it rounded, itself
    # within `rounding`), plus fp16's subnormal step of 2^-24
    bound = (direct.abs() + rounding) * 2 ** -11 + rounding + 2 ** -24
    assert torch.all((half.features(range(20)) - direct).abs() <= bound)
    assert not torch.equal(half.features(range(20)), got)
    assert torch.equal(store.features([13, 2]), got[[13, 2]])
    with pytest.raises(IndexError, match="item 20 out of range for 20 items"):
        store.features([20])
    assert half.meta["weights"] == "random" and half.meta["source"] == store.meta["source"]
    assert (spec.folder / "feats_00002.npy").stat().st_size == 128 + 4 * 384 * 4 * 4  # last chunk: 4 items


def test_a_killed_build_resumes_with_the_chunks_it_wrote(scenes, tmp_path):
    cfg, backbone, dataset, spec = _parts(scenes)
    folder = tmp_path / "store"
    killed = Counting(backbone, fail_after=3)  # shape probe, then chunk 0's two batches; dies in chunk 1
    with pytest.raises(KeyboardInterrupt):
        build_store(killed, dataset, folder, spec.meta(), root=scenes, batch_size=4, chunk=8)
    assert sorted(p.name for p in folder.iterdir()) == ["building.json", "feats_00000.npy", "labels_00000.npy"]
    with pytest.raises(MissingFileError, match=f"{folder / INDEX} not found; build it with `stego data features"):
        FeatureStore.open(folder, store_expect(spec.meta(), dataset), scenes)
    resumed = Counting(backbone)
    store = build_store(resumed, dataset, folder, spec.meta(), root=scenes, batch_size=4, chunk=8)
    assert resumed.images == 1 + 12  # the shape probe, then chunks 1 and 2 only
    whole = build_store(backbone, dataset, tmp_path / "whole", spec.meta(), root=scenes, batch_size=4, chunk=8)
    assert torch.equal(store.features(range(20)), whole.features(range(20)))
    again = Counting(backbone)
    build_store(again, dataset, folder, spec.meta(), root=scenes, batch_size=4, chunk=8)
    assert again.images == 0 and not (folder / "building.json").exists()


def test_parallel_jobs_build_a_store_once(scenes, tmp_path):
    cfg, backbone, dataset, spec = _parts(scenes)
    counting = Counting(backbone)
    stores = []
    jobs = [threading.Thread(target=lambda: stores.append(
        build_store(counting, dataset, tmp_path / "shared", spec.meta(), root=scenes, chunk=8))) for _ in range(3)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    assert len(stores) == 3 and counting.images == 1 + 20


def _rebuild(spec, root):
    return (f"stego data features --root {root} --dataset imagefolder --split train --backbone dino_vits16 --crop none "
            f"--res 32 --weights random --dtype {spec.dtype} --precision fp32 --force")


def _copy(scenes, tmp_path):
    """A data root of its own (its images may be touched, its stores are its own)."""
    return shutil.copytree(scenes, tmp_path / "data", ignore=shutil.ignore_patterns("features"))


def test_stale_mismatched_or_broken_stores_are_refused_with_the_rebuild_command(scenes, tmp_path):
    root = _copy(scenes, tmp_path)
    cfg, backbone, dataset, spec = _parts(root)
    expect = store_expect(spec.meta(), dataset)
    with pytest.raises(MissingFileError, match=r"index.json not found; build it with `stego data features"):
        FeatureStore.open(spec.folder, expect, root)
    free = CachedItems(_build(cfg, backbone, dataset, spec, chunk=8, labels=False), labels=False)
    assert torch.all(free[3]["label"] == -1) and free[3]["img"].shape == (384, 2, 2)
    with pytest.raises(StegoError, match="holds no labels") as err:
        FeatureStore.open(spec.folder, expect, root, labels=True)
    assert _rebuild(spec, root) in str(err.value) and "\n" not in str(err.value)
    for key, value, what in (("dtype", "float16", "something else"), ("n", 19, "something else"),
                             ("source", "20:0", "other or changed images")):
        with pytest.raises(StegoError, match=f"made from {what} \\({key} expected {value!r}") as err:
            FeatureStore.open(spec.folder, dict(expect, **{key: value}), root)
        assert f"rebuild it with `stego data features --root {root} --dataset imagefolder" in str(err.value)
    first = dataset.path(0)
    os.utime(first, (1, 1))  # an image rewritten since (its modification time changed)
    stale = build.train_dataset(cfg)
    with pytest.raises(StegoError, match="made from other or changed images"):
        _build(cfg, backbone, stale, spec)
    chunk = spec.folder / "feats_00001.npy"
    chunk.write_bytes(chunk.read_bytes()[:200])
    with pytest.raises(StegoError, match=f"{chunk} is unreadable .*; rebuild it with `stego data features"):
        FeatureStore.open(spec.folder, expect, root)
    args = build_parser().parse_args(shlex.split(_rebuild(spec, root))[1:])  # the suggested command parses
    assert (args.func.__name__, args.dtype, args.force) == ("run_features", "float32", True)


def test_the_command_builds_a_store_that_training_then_uses(scenes, tmp_path, capsys):
    scenes = _copy(scenes, tmp_path)
    argv = ["data", "features", "--root", str(scenes), "--dataset", "imagefolder", "--split", "train",
            "--backbone", "dino_vits16", "--weights", "random", "--res", "32", "--workers", "0", "--chunk", "6"]
    assert main(argv) == 0
    cfg = with_overrides(tiny(scenes), ["data.features=cached"])
    folder = build.feature_spec(cfg).folder
    assert f"{folder}: 20 items, features (384, 2, 2) float16" in capsys.readouterr().out
    store = FeatureStore.open(folder, store_expect(build.feature_spec(cfg).meta(), build.train_dataset(cfg)), scenes,
                              labels=True)
    assert store.chunks == 4 and np.load(folder / "feats_00003.npy").dtype == np.float16
    before = (folder / "feats_00000.npy").stat().st_mtime_ns
    assert main(argv) == 0 and (folder / "feats_00000.npy").stat().st_mtime_ns == before  # kept, not rebuilt
    assert main([*argv, "--dtype", "float32", "--chunk", "32"]) == 0  # another store beside it, one chunk
    assert f"{folder.parent}/dino_vits16_imagefolder_train_none_32_float32: 20 items" in capsys.readouterr().out


def test_the_cache_is_part_of_a_runs_identity_only_when_it_is_used(scenes):
    cfg = tiny(scenes)
    assert "features" not in cfg.identity()["data"]
    assert with_overrides(cfg, ["data.features_dtype=float32"]).identity() == cfg.identity()
    half, full = (with_overrides(cfg, ["data.features=cached", f"data.features_dtype={d}"]) for d in ("float16",
                                                                                                      "float32"))
    assert len({str(c.identity()) for c in (cfg, half, full)}) == 3
    with pytest.raises(StegoError, match="data.features must be one of images, cached"):
        with_overrides(cfg, ["data.features=disk"])
