"""Dataset readers, bad-input errors, --skip-bad and `data check`, on fixtures in the real on-disk layouts."""
import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from stego.data import datasets as D
from stego.data.check import add_cli, check_dataset, data_subparsers, format_report
from stego.data.transforms import resize_center_crop
from stego.errors import MissingFileError, StegoError
from tests import fixtures as F


def pil_rgb(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# ---- readers -----------------------------------------------------------------------------------------------

def test_cocostuff_counts_paths_and_labels(tmp_path):
    fx = F.write_cocostuff(tmp_path)
    train = D.CocoStuff27(tmp_path, "train")
    train7 = D.CocoStuff27(tmp_path, "train", list_name="Coco164kFull_Stuff_Coarse_7.txt")
    val = D.CocoStuff27(tmp_path, "val")
    assert (len(train), len(train7), len(val)) == (3, 2, 2)
    assert (train.n_classes, len(train.class_names)) == (27, 27)
    for ds, key, folder in ((train, "train", "train2017"), (val, "val", "val2017")):
        for i, image_id in enumerate(fx.ids[key]):
            assert ds.path(i) == tmp_path / "cocostuff" / "images" / folder / f"{image_id}.jpg"
            img, label = ds.load(i)
            np.testing.assert_array_equal(np.asarray(img), pil_rgb(ds.path(i)))
            np.testing.assert_array_equal(label, F.expected_coco(fx.raw_labels[str(ds.label_path(i))]))
            assert label.dtype == np.int64 and set(np.unique(label)) == set(range(-1, 27))


def test_cityscapes_counts_order_and_labels(tmp_path):
    fx = F.write_cityscapes(tmp_path)
    for split in ("train", "val"):
        ds = D.Cityscapes27(tmp_path, split)
        assert len(ds) == 4 and ds.n_classes == 27
        assert [ds.path(i).name[:-len("_leftImg8bit.png")] for i in range(len(ds))] == fx.ids[split]
        for i in range(len(ds)):
            assert ds.label_path(i).name == fx.ids[split][i] + "_gtFine_labelIds.png"
            img, label = ds.load(i)
            np.testing.assert_array_equal(np.asarray(img), pil_rgb(ds.path(i)))
            np.testing.assert_array_equal(label, F.expected_cityscapes(fx.raw_labels[str(ds.label_path(i))]))


@pytest.mark.parametrize("float_images", [False, True])
def test_potsdam_splits_channels_and_labels(tmp_path, float_images):
    fx = F.write_potsdam(tmp_path, float_images=float_images)
    counts = {"train": 3, "val": 2, "unlabelled_train": 2, "train+val": 5, "train+unlabelled": 5, "all": 7}
    for split, n in counts.items():
        assert len(D.Potsdam3(tmp_path, split)) == n, split
    ds = D.Potsdam3(tmp_path, "train+unlabelled")
    ids = fx.ids["labelled_train"] + fx.ids["unlabelled_train"]
    for i, tile in enumerate(ids):
        assert ds.path(i).name == f"{tile}.mat"
        img, label = ds.load(i)
        rgb = fx.images[tile][:, :, :3]
        expected = (rgb * 255).astype(np.uint8) if float_images else rgb
        np.testing.assert_array_equal(np.asarray(img), expected)
        if tile in fx.ids["unlabelled_train"]:
            assert label is None and ds.label_path(i) is None
            assert (ds[i]["label"] == -1).all()
        else:
            np.testing.assert_array_equal(label, F.expected_potsdam(fx.raw_labels[str(ds.label_path(i))]))


def test_imagefolder_with_and_without_labels(tmp_path):
    fx = F.write_imagefolder(tmp_path / "mine", n_classes=4)
    ds = D.ImageFolder(tmp_path / "mine", "train")
    assert len(ds) == 3 and ds.n_classes == 4 and ds.class_names == ("class 0", "class 1", "class 2", "class 3")
    assert [ds.path(i).stem for i in range(3)] == fx.ids["train"]
    for i in range(3):
        _, label = ds.load(i)
        raw = fx.raw_labels[str(ds.label_path(i))].astype(np.int64)
        np.testing.assert_array_equal(label, np.where(raw == 255, -1, raw))
    palette = Image.fromarray(np.full((F.H, F.W), 2, np.uint8), "L").convert("P")  # indices, not colours
    palette.putpalette([255, 0, 0] * 256)
    palette.save(ds.label_path(1))
    assert (ds.load(1)[1] == 2).all()
    F.write_imagefolder(tmp_path / "bare", labels=False, classes=False, folder="imgs")
    bare = D.ImageFolder(tmp_path / "bare", "val")
    assert len(bare) == 3 and bare.n_classes is None and bare.load(0)[1] is None
    assert (bare[0]["label"] == -1).all()
    with pytest.raises(StegoError, match="classes.txt"):
        D.ImageFolder(tmp_path / "mine", "train", n_classes=5)


def test_cropped_reader_and_folder_names(tmp_path):
    assert D.cropped_dir(tmp_path, "cocostuff27") == tmp_path / "cropped" / "cocostuff27_five_crop_0.5"
    assert D.cropped_dir(tmp_path, "cityscapes27", 0.5) == tmp_path / "cropped" / "cityscapes_five_crop_0.5"
    assert D.cropped_dir(tmp_path, "potsdam3", 0.7).name == "potsdam_five_crop_0.7"
    fx = F.write_cropped(tmp_path, n=12)
    ds = D.build_dataset("cocostuff27", tmp_path, "train", crop=True)
    assert len(ds) == 12 and ds.n_classes == 27 and ds.cropped
    assert [ds.path(i).name for i in range(12)] == [f"{k}.jpg" for k in range(12)]  # numeric, not text, order
    img, label = ds.load(10)
    assert img.size == (F.W // 2, F.H // 2)
    np.testing.assert_array_equal(label, fx.raw_labels[str(ds.label_path(10))].astype(np.int64) - 1)


def test_getitem_applies_the_transform(tmp_path):
    F.write_cocostuff(tmp_path)
    ds = D.build_dataset("cocostuff27", tmp_path, "val", res=32)
    item = ds[1]
    assert set(item) == {"img", "label", "index"} and item["index"] == 1
    assert item["img"].shape == (3, 32, 32) and item["img"].dtype == torch.float32
    assert item["label"].shape == (32, 32) and item["label"].dtype == torch.int64
    img, label = ds.load(1)
    np.testing.assert_array_equal(item["label"].numpy(), resize_center_crop(img, label, 32)[1])
    assert D.build_dataset("cocostuff27", tmp_path, "train")[0]["img"].shape == (3, 224, 224)
    assert D.build_dataset("cocostuff27", tmp_path, "val")[0]["img"].shape == (3, 320, 320)


def test_build_dataset_names_and_options(tmp_path):
    F.write_cityscapes(tmp_path)
    assert isinstance(D.build_dataset("cityscapes27", tmp_path, "val"), D.Cityscapes27)
    with pytest.raises(StegoError, match="unknown dataset"):
        D.build_dataset("coco", tmp_path, "val")
    with pytest.raises(StegoError, match="list_name"):
        D.build_dataset("cityscapes27", tmp_path, "val", list_name="x.txt")
    with pytest.raises(StegoError, match="unknown potsdam3 split"):
        D.Potsdam3(tmp_path, "test")


# ---- bad input ---------------------------------------------------------------------------------------------

def _assert_one_line_naming(exc_info, path):
    message = str(exc_info.value)
    assert str(path) in message and "\n" not in message
    assert isinstance(exc_info.value, StegoError)


def _coco(tmp_path):
    F.write_cocostuff(tmp_path)
    return D.CocoStuff27(tmp_path, "train")


def test_corrupt_and_truncated_images(tmp_path):
    ds = _coco(tmp_path)
    F.corrupt_file(ds.path(0))
    F.truncate_file(ds.path(1), keep=0.6)
    for i in (0, 1):
        with pytest.raises(D.CorruptFileError) as exc_info:
            ds.load(i)
        _assert_one_line_naming(exc_info, ds.path(i))


def test_truncated_label_png(tmp_path):
    ds = _coco(tmp_path)
    F.truncate_file(ds.label_path(2), keep=0.5)
    with pytest.raises(D.CorruptFileError) as exc_info:
        ds.load(2)
    _assert_one_line_naming(exc_info, ds.label_path(2))


def test_label_out_of_range(tmp_path):
    ds = _coco(tmp_path)
    label = np.full((F.H, F.W), 3, np.uint8)
    label[5, 5] = 200
    Image.fromarray(label).save(ds.label_path(0))
    with pytest.raises(D.LabelRangeError, match="200") as exc_info:
        ds.load(0)
    _assert_one_line_naming(exc_info, ds.label_path(0))


def test_cityscapes_label_above_33_is_out_of_range(tmp_path):
    F.write_cityscapes(tmp_path, splits=("val",))
    ds = D.Cityscapes27(tmp_path, "val")
    Image.fromarray(np.full((F.H, F.W), 40, np.uint8)).save(ds.label_path(1))
    with pytest.raises(D.LabelRangeError, match="40") as exc_info:
        ds.load(1)
    _assert_one_line_naming(exc_info, ds.label_path(1))


def test_potsdam_bad_tiles(tmp_path):
    F.write_potsdam(tmp_path)
    ds = D.Potsdam3(tmp_path, "train")
    savemat(ds.label_path(0), {"gt": np.full((F.H, F.W), 7, np.int32)})
    savemat(ds.path(1), {"img": np.zeros((F.H, F.W, 2), np.uint8)})
    savemat(ds.path(2), {"image": np.zeros((F.H, F.W, 4), np.uint8)})
    cases = [(0, D.LabelRangeError, ds.label_path(0)), (1, D.CorruptFileError, ds.path(1)),
             (2, D.CorruptFileError, ds.path(2))]
    for i, error, path in cases:
        with pytest.raises(error) as exc_info:
            ds.load(i)
        _assert_one_line_naming(exc_info, path)
    F.corrupt_file(ds.path(0))
    with pytest.raises(D.CorruptFileError) as exc_info:
        ds.load(0)
    _assert_one_line_naming(exc_info, ds.path(0))


def test_size_mismatch(tmp_path):
    ds = _coco(tmp_path)
    Image.fromarray(np.zeros((F.H, F.W - 1), np.uint8)).save(ds.label_path(1))
    with pytest.raises(D.SizeMismatchError, match=f"{F.H}x{F.W - 1}") as exc_info:
        ds.load(1)
    _assert_one_line_naming(exc_info, ds.label_path(1))


def test_rgb_label_is_rejected(tmp_path):
    ds = _coco(tmp_path)
    Image.fromarray(np.zeros((F.H, F.W, 3), np.uint8)).save(ds.label_path(0))
    with pytest.raises(D.CorruptFileError, match="mode RGB") as exc_info:
        ds.load(0)
    _assert_one_line_naming(exc_info, ds.label_path(0))
    assert str(exc_info.value).count(str(ds.label_path(0))) == 1


def test_missing_list_entry_and_missing_label(tmp_path):
    fx = F.write_cocostuff(tmp_path)
    image = tmp_path / "cocostuff" / "images" / "train2017" / f"{fx.ids['train'][1]}.jpg"
    image.unlink()
    with pytest.raises(MissingFileError) as exc_info:
        D.CocoStuff27(tmp_path, "train")
    _assert_one_line_naming(exc_info, image)
    assert "Coco164kFull_Stuff_Coarse.txt" in str(exc_info.value)
    F.write_cityscapes(tmp_path, splits=("val",))
    label = D.Cityscapes27(tmp_path, "val").label_path(0)
    label.unlink()
    with pytest.raises(D.MissingDataError) as exc_info:
        D.Cityscapes27(tmp_path, "val")
    _assert_one_line_naming(exc_info, label)


def test_missing_list_file_and_empty_split(tmp_path):
    F.write_cocostuff(tmp_path)
    list_file = tmp_path / "cocostuff" / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt"
    list_file.write_text("\n\n")
    with pytest.raises(D.EmptySplitError) as exc_info:
        D.CocoStuff27(tmp_path, "val")
    _assert_one_line_naming(exc_info, list_file)
    list_file.unlink()
    with pytest.raises(MissingFileError) as exc_info:
        D.CocoStuff27(tmp_path, "val")
    _assert_one_line_naming(exc_info, list_file)
    (tmp_path / "mine" / "images" / "train").mkdir(parents=True)
    with pytest.raises(D.EmptySplitError) as exc_info:
        D.ImageFolder(tmp_path / "mine", "train")
    _assert_one_line_naming(exc_info, tmp_path / "mine" / "images" / "train")
    with pytest.raises(MissingFileError) as exc_info:
        D.Cityscapes27(tmp_path, "train")
    _assert_one_line_naming(exc_info, tmp_path / "cityscapes" / "leftImg8bit" / "train")


# ---- skip_bad ----------------------------------------------------------------------------------------------

def test_skip_bad_drops_missing_skips_corrupt_and_writes_a_report(tmp_path):
    fx = F.write_cocostuff(tmp_path, n_train=4)
    missing = tmp_path / "cocostuff" / "images" / "train2017" / f"{fx.ids['train'][0]}.jpg"
    missing.unlink()
    ds = D.CocoStuff27(tmp_path, "train", skip_bad=True, transform=lambda img, label: (img, label))
    assert len(ds) == 3 and ds.skipped == [(str(missing), ds.skipped[0][1])]
    F.corrupt_file(ds.path(1))
    assert ds.try_load(1) is None and ds.try_load(0) is not None
    item = ds[1]
    assert item["index"] == 2
    np.testing.assert_array_equal(np.asarray(item["img"]), pil_rgb(ds.path(2)))
    ds[1]
    assert [p for p, _ in ds.skipped] == [str(missing), str(ds.path(1))]
    ds.write_skip_report(tmp_path / "skipped.json")
    report = json.loads((tmp_path / "skipped.json").read_text())
    assert report["dataset"] == "cocostuff27" and report["split"] == "train"
    assert [s["path"] for s in report["skipped"]] == [str(missing), str(ds.path(1))]
    assert "cannot decode image" in report["skipped"][1]["reason"]
    with pytest.raises(MissingFileError):
        D.CocoStuff27(tmp_path, "train")
    (tmp_path / "cocostuff" / "curated" / "train2017" / "only_corrupt.txt").write_text(fx.ids["train"][2])
    strict = D.CocoStuff27(tmp_path, "train", list_name="only_corrupt.txt")
    with pytest.raises(D.CorruptFileError):
        strict.try_load(0)


def test_skip_bad_with_every_entry_missing_is_an_empty_split(tmp_path):
    F.write_potsdam(tmp_path)
    for path in (tmp_path / "potsdam" / "imgs").iterdir():
        path.unlink()
    with pytest.raises(D.EmptySplitError) as exc_info:
        D.Potsdam3(tmp_path, "val", skip_bad=True)
    assert len(exc_info.value.skipped) == 2


# ---- data check ----------------------------------------------------------------------------------------------

def _damaged_coco(tmp_path):
    """A CocoStuff fixture with three bad files: a corrupt image and an out-of-range label in train, a missing
    val image."""
    fx = F.write_cocostuff(tmp_path)
    base = tmp_path / "cocostuff"
    corrupt = base / "images" / "train2017" / f"{fx.ids['train'][0]}.jpg"
    out_of_range = base / "annotations" / "train2017" / f"{fx.ids['train'][2]}.png"
    missing = base / "images" / "val2017" / f"{fx.ids['val'][1]}.jpg"
    F.corrupt_file(corrupt)
    Image.fromarray(np.full((F.H, F.W), 190, np.uint8)).save(out_of_range)
    missing.unlink()
    return [corrupt, out_of_range, missing]


def test_check_lists_every_problem(tmp_path):
    bad = _damaged_coco(tmp_path)
    report = check_dataset("cocostuff27", tmp_path, workers=2)
    assert [p.path for p in report.problems] == [str(p) for p in bad]
    assert not report.ok and not any(p.fatal for p in report.problems)
    train, val = report.splits["train"], report.splits["val"]
    assert (train.listed, train.readable, train.labelled, train.bad) == (3, 1, 1, 2)
    assert (val.listed, val.readable, val.bad) == (2, 1, 1)
    text = format_report(report)
    assert all(str(p) in text for p in bad) and "FAILED" in text
    assert "train: 3 listed, 1 readable, 1 labelled, 2 bad" in text
    assert "val: 2 listed (full split: 2175), 1 readable" in text
    assert check_dataset("cocostuff27", tmp_path, skip_bad=True).ok


def test_check_fatal_problems_fail_even_with_skip_bad(tmp_path):
    F.write_potsdam(tmp_path)
    (tmp_path / "potsdam" / "unlabelled_train.txt").unlink()
    report = check_dataset("potsdam3", tmp_path, skip_bad=True)
    assert not report.ok
    assert [(p.split, p.fatal) for p in report.problems] == [("unlabelled_train", True)]
    assert report.splits["train"].readable == 3 and report.splits["val"].labelled == 2
    assert "FATAL" in format_report(report)
    with pytest.raises(StegoError, match="takes no option list_name"):
        check_dataset("potsdam3", tmp_path, list_name="x.txt")
    empty = check_dataset("imagefolder", tmp_path / "nothing")
    assert not empty.ok and "no split folders" in empty.problems[0].reason


def _cli():
    parser = argparse.ArgumentParser(prog="stego")
    sub = parser.add_subparsers(dest="command")
    group = data_subparsers(sub)
    add_cli(sub)
    assert data_subparsers(sub) is group
    group.add_parser("other")
    return parser


def test_cli_exit_codes_output_and_reports(tmp_path, capsys):
    bad = _damaged_coco(tmp_path)
    parser = _cli()
    args = parser.parse_args(["data", "check", "--dataset", "cocostuff27", "--root", str(tmp_path),
                              "--report", str(tmp_path / "report.json")])
    assert args.func(args) == 1
    out = capsys.readouterr().out
    assert all(str(p) in out for p in bad)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["ok"] is False and [p["path"] for p in saved["problems"]] == [str(p) for p in bad]
    args = parser.parse_args(["data", "check", "--dataset", "cocostuff27", "--root", str(tmp_path),
                              "--split", "train", "--skip-bad", "--report", str(tmp_path / "skip.json")])
    assert args.func(args) == 0
    assert "OK with 2 bad file(s) to skip" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "skip.json").read_text())["problems"]) == 2


def test_cli_clean_dataset_passes(tmp_path, capsys):
    F.write_imagefolder(tmp_path, n_classes=3, classes=False)
    args = _cli().parse_args(["data", "check", "--dataset", "imagefolder", "--root", str(tmp_path),
                              "--n-classes", "3"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "train: 3 listed, 3 readable, 3 labelled, 0 bad" in out and "result: OK" in out
    args = _cli().parse_args(["data", "check", "--dataset", "imagefolder", "--root", str(tmp_path),
                              "--n-classes", "2"])
    assert args.func(args) == 1
    assert "holds label values 2, outside 0-1 (classes) and 255 (unlabelled)" in capsys.readouterr().out
