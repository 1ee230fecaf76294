"""Evaluation from the feature store (data.features=cached): a flip store holds each validation image's and its
flip's features; scoring, DenseCRF, the cluster-probe refits, every interval and protocol and the analysis read
stored features and give the numbers of the image path (float32: the same to the bit for the filter bank; float16:
±0.5 mIoU, docs/features.md); once the stores exist the backbone never runs."""
import json

import pytest
import torch

from stego import build, evaluate as evaluate_module
from stego.checkpoint import load_for_eval
from stego.cli import main as stego_main
from stego.config import with_overrides
from stego.data.features import CachedViews, FeatureStore, store_expect
from stego.data.synthetic import SceneSpec, make_scenes
from stego.errors import StegoError
from stego.evaluate import run_eval, validator
from stego.runs import counts_file
from stego.train import train
from tests.test_features_train import filterbank_world
from tests.test_train import tiny

EVAL = ["eval.crf=true", "eval.crf_workers=0", "eval.cluster_restarts=2", "eval.bootstrap_resamples=50",
        "eval.overclustering=true"]
CACHED32 = ["data.features=cached", "data.features_dtype=float32"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Toy scenes and a short filter-bank run trained from images."""
    tmp = tmp_path_factory.mktemp("world")
    return tmp, *filterbank_world(tmp, 24, 6, 30, EVAL, "run")


def _numbers(record) -> dict:
    """Everything an evaluation record scores, without its timings."""
    metrics = {k: v for k, v in record.metrics.items() if k != "seconds"}
    return dict(metrics=metrics, intervals=record.intervals, protocols=record.protocols,
                spread=record.cluster_spread, ap=(record.analysis["ap_features"], record.analysis["ap_code"]))


def test_a_flip_store_holds_each_image_and_its_flip(world):
    _, cfg, _ = world
    backbone, val = build.backbone_for(cfg), build.val_dataset(cfg)
    for dtype, rel in (("float32", 1e-6), ("float16", 2.0 ** -11)):
        views = build.cached_views(with_overrides(cfg, [f"data.features_dtype={dtype}"]), backbone, val, "cpu")
        assert views.store.meta["flip"] and views.store.folder.name.endswith(f"{dtype}_flip")
        for i in range(len(val)):
            img = val[i]["img"]
            with torch.no_grad():
                expect = torch.stack([backbone(img[None])[0], backbone(img.flip(dims=[2])[None])[0]])
            item = views[i]
            assert item["feats"].shape == expect.shape and "img" not in item
            scale = expect.abs().max()
            assert torch.allclose(item["feats"], expect, rtol=rel, atol=1e-6 * scale), dtype
            assert torch.equal(item["label"], val[i]["label"])
            assert torch.equal(views.with_images()[i]["img"], img)
        assert not torch.allclose(views[0]["feats"][0], views[0]["feats"][1])  # a flip is another view


def test_a_store_without_flipped_views_is_refused_for_evaluation(world):
    tmp, cfg, _ = world
    train_set = build.train_dataset(cfg)
    items = build.cached_items(with_overrides(cfg, CACHED32), build.backbone_for(cfg), train_set, "cpu")
    with pytest.raises(StegoError, match="holds no flipped views"):
        CachedViews(items.store, train_set)


def test_eval_from_a_float32_cache_gives_the_image_path_numbers_without_a_backbone_forward(world, monkeypatch):
    tmp, cfg, checkpoint = world
    from_images = run_eval(None, checkpoint, tmp / "images" / "record.json")
    # build the validation store ahead with the command line, as on a GPU node; training's store the eval builds
    val_root = cfg.data.root
    assert stego_main(["data", "features", "--root", val_root, "--dataset", "imagefolder", "--split", "val",
                       "--backbone", "filterbank", "--weights", "random", "--res", str(cfg.eval.res), "--flip",
                       "--dtype", "float32", "--workers", "0"]) == 0
    cached = run_eval(None, checkpoint, tmp / "cached" / "record.json", overrides=CACHED32)
    assert cached.config["data"]["features"] == "cached"
    assert _numbers(cached) == _numbers(from_images)  # the filter bank computes each image alone: to the bit
    assert from_images.metrics["cluster_crf"]["miou"] != from_images.metrics["cluster"]["miou"]  # CRF did work
    assert len(from_images.cluster_spread["seeds"]) == 2 and from_images.protocols
    per_image = [json.loads(counts_file(tmp / d / "record.json").read_text())["probes"] for d in ("images", "cached")]
    assert per_image[0] == per_image[1]

    real = load_for_eval

    def no_forward(*args, **kwargs):  # the stores exist now: re-scoring must not run the backbone at all
        cfg_, model, backbone = real(*args, **kwargs)

        def refuse(images):
            raise AssertionError("the backbone ran during evaluation from the cache")

        backbone.forward = refuse
        return cfg_, model, backbone

    monkeypatch.setattr(evaluate_module, "load_for_eval", no_forward)
    again = run_eval(None, checkpoint, tmp / "again" / "record.json", overrides=CACHED32)
    assert _numbers(again) == _numbers(from_images)
    with pytest.raises(AssertionError, match="backbone ran"):
        run_eval(None, checkpoint, tmp / "refused" / "record.json")  # the image path does run it


def test_eval_from_a_float16_cache_stays_within_the_documented_tolerance(world):
    tmp, cfg, checkpoint = world
    images = run_eval(None, checkpoint, tmp / "i16" / "record.json", overrides=["eval.crf=false"])
    half = run_eval(None, checkpoint, tmp / "h16" / "record.json", overrides=["data.features=cached", "eval.crf=false"])
    spec = build.val_feature_spec(with_overrides(cfg, ["data.features=cached"]))
    assert FeatureStore.open(spec.folder, store_expect(spec.meta(), build.val_dataset(cfg)), cfg.data.root)
    for probe in ("cluster", "linear"):
        for metric in ("miou", "accuracy"):
            gap = abs(images.metrics[probe][metric] - half.metrics[probe][metric])
            assert gap <= 0.005, (probe, metric, gap)  # ±0.5 points; measured ≤ 0.015 points


def test_validation_during_training_reads_the_stored_views(world):
    _, cfg, checkpoint = world
    cfg_, model, backbone = load_for_eval(checkpoint, overrides=["train.val_every=10"])
    from_images = validator(cfg_)(model, backbone)
    cached = validator(with_overrides(cfg_, CACHED32))(model, backbone)
    assert cached == from_images and 0 < cached <= 1


def test_a_vit_scores_the_same_from_a_float32_flip_store(tmp_path):
    root = make_scenes(tmp_path / "scenes", SceneSpec(n_train=16, n_val=5, size=48), seed=6)
    cfg = with_overrides(tiny(root), ["eval.cluster_restarts=0", "eval.bootstrap_resamples=20"])  # random ViT-S/16
    checkpoint = train(cfg, tmp_path / "run")
    images = run_eval(None, checkpoint, tmp_path / "images.json")
    cached = run_eval(None, checkpoint, tmp_path / "cached.json", overrides=CACHED32)
    # The store runs [images; flips] in eval.batch_size batches, as the image path's TTA does: the same features
    assert _numbers(cached) == _numbers(images)


def test_a_stale_flip_store_is_refused_with_the_command_that_rebuilds_it(tmp_path):
    root = make_scenes(tmp_path / "scenes", SceneSpec(n_train=8, n_val=2, size=32), seed=1)
    cfg = with_overrides(tiny(root), ["model.backbone=filterbank", "data.features=cached"])
    backbone, val = build.backbone_for(cfg), build.val_dataset(cfg)
    build.cached_views(cfg, backbone, val, "cpu")
    image = sorted((root / "images" / "val").iterdir())[0]
    image.write_bytes(image.read_bytes() + b"\0")  # another file now: size and time change
    with pytest.raises(StegoError, match=r"other or changed images.*stego data features .*--split val .*--res 48 "
                                         r".*--flip --force"):
        build.cached_views(cfg, backbone, build.val_dataset(cfg), "cpu")
