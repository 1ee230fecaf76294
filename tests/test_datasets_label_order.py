"""8-bit labels are mapped to classes after the resize and crop (the fast path of `SegmentationDataset[i]`).

Nearest resizing and cropping only select pixels, so mapping after them must give bitwise the labels of mapping
the full-resolution label first. Checked for every reader that goes through SegTransform, on labels holding
every valid raw value (ignore included) where the crop keeps all of them, against the old order through the
real code and against an independent computation (PROTOCOL tables from tests/fixtures.py, PIL's nearest
pixel picks from tests/test_transforms.py). Also: the errors, skip_bad and non-8-bit labels behave as before.
"""
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from stego.constants import IGNORE
from stego.data import datasets as D
from stego.data import files
from stego.data import mappings
from stego.data.transforms import SegTransform, center_crop_box, resize_center_crop, resized_size
from tests import fixtures as F
from tests.test_transforms import nearest_source


@dataclass
class Kind:
    """How to write one reader's fixture, build it with a transform, and map its raw labels independently."""

    name: str
    write: object
    """root → None: writes the fixture."""
    build: object
    """(root, transform, skip_bad) → dataset."""
    valid: list
    """raw values a label file may hold."""
    expected: object
    """raw label array → int64 classes, -1 ignore (independent of stego.data.mappings)."""
    mat: bool = False
    """labels in .mat files (Potsdam) rather than PNGs."""
    h: int = F.H
    w: int = F.W


def _imagefolder_expected(n):
    return lambda raw: np.where(np.asarray(raw, np.int64) < n, np.asarray(raw, np.int64), -1)


KINDS = [
    Kind("cocostuff27", lambda r: F.write_cocostuff(r, n_val=2),
         lambda r, t, s: D.CocoStuff27(r, "val", transform=t, skip_bad=s), F.COCO_VALID, F.expected_coco),
    Kind("cityscapes27", lambda r: F.write_cityscapes(r, splits=("val",), per_city=1),
         lambda r, t, s: D.Cityscapes27(r, "val", transform=t, skip_bad=s), F.CITYSCAPES_VALID,
         F.expected_cityscapes),
    Kind("potsdam3", lambda r: F.write_potsdam(r, n_labelled_train=1, n_unlabelled_train=1, n_test=2),
         lambda r, t, s: D.Potsdam3(r, "val", transform=t, skip_bad=s), F.POTSDAM_VALID, F.expected_potsdam,
         mat=True),
    Kind("imagefolder", lambda r: F.write_imagefolder(r, splits=("train",), n_classes=5),
         lambda r, t, s: D.ImageFolder(r, "train", transform=t, skip_bad=s), list(range(5)) + [255],
         _imagefolder_expected(5)),
    Kind("imagefolder, no classes.txt", lambda r: F.write_imagefolder(r, splits=("train",), classes=False),
         lambda r, t, s: D.ImageFolder(r, "train", transform=t, skip_bad=s), list(range(256)),
         _imagefolder_expected(255)),
    Kind("five-crop output", lambda r: F.write_cropped(r, n=2),
         lambda r, t, s: D.build_dataset("cocostuff27", r, "train", crop=True, transform=t, skip_bad=s),
         list(range(28)), lambda raw: raw.astype(np.int64) - 1, h=F.H // 2, w=F.W // 2),
]


def _write_label(ds, i, label, kind):
    if kind.mat:
        savemat(ds.label_path(i), {"gt": label})
    else:
        Image.fromarray(label).save(ds.label_path(i))


def block_label(kind, rng):
    """A uint8 label of the image's size holding every valid value in 2×2 blocks inside the central square
    (so every crop and every resize with at most 2 source pixels per output pixel keeps all of them), random
    valid values elsewhere."""
    h, w = kind.h, kind.w
    left, right = w // 2 - h // 2 + 2, w // 2 + h // 2 - 2
    n_blocks = (h // 2) * ((right - left) // 2)
    values = np.asarray(kind.valid, dtype=np.uint8)
    assert n_blocks >= len(values)
    blocks = rng.permutation(np.concatenate([values, rng.choice(values, n_blocks - len(values))]))
    label = rng.choice(values, (h, w)).astype(np.uint8)
    label[:, left:right] = np.kron(blocks.reshape(h // 2, -1), np.ones((2, 2), np.uint8))
    return label


def expected_crop(kind, raw, res):
    """Map the full-resolution raw label with the PROTOCOL table, then pick PIL's nearest pixels of the crop."""
    size = resized_size(kind.w, kind.h, res)
    left, top, _, _ = center_crop_box(*size, res)
    rows = nearest_source(res, kind.h, size[1], top)
    cols = nearest_source(res, kind.w, size[0], left)
    return kind.expected(raw)[np.ix_(rows, cols)]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_mapping_after_the_crop_equals_mapping_before(tmp_path, kind):
    kind.write(tmp_path)
    rng = np.random.default_rng(7)
    probe = kind.build(tmp_path, None, False)
    raws = []
    for i in range(len(probe)):
        raws.append(block_label(kind, rng))
        _write_label(probe, i, raws[-1], kind)
    all_classes = set(kind.expected(np.asarray(kind.valid)).tolist())
    assert IGNORE in all_classes
    for res in (kind.h * 3 // 5, kind.h, kind.h * 8 // 5):  # downsampling, crop only, upsampling
        ds = kind.build(tmp_path, SegTransform(res), False)
        for i, raw in enumerate(raws):
            assert ds.load(i, raw_8bit=True)[1].dtype == np.uint8  # the deferred path is the one tested
            item = ds[i]
            old_img, old_label = SegTransform(res)(*ds.load(i))  # the old order: map full resolution first
            assert torch.equal(item["img"], old_img)
            assert item["label"].dtype == torch.int64 and torch.equal(item["label"], old_label)
            np.testing.assert_array_equal(item["label"].numpy(), expected_crop(kind, raw, res))
            assert set(torch.unique(item["label"]).tolist()) == all_classes, "the crop lost a value"


def test_labels_that_are_not_8bit_take_the_mapping_path(tmp_path):
    potsdam = KINDS[2]
    fx = potsdam.write(tmp_path)  # int32 gt tiles, as fixtures.py writes them
    ds = potsdam.build(tmp_path, SegTransform(24), False)
    for i in range(len(ds)):
        raw = fx.raw_labels[str(ds.label_path(i))]
        assert raw.dtype == np.int32 and ds.load(i, raw_8bit=True)[1].dtype == np.int64
        np.testing.assert_array_equal(ds[i]["label"].numpy(), expected_crop(potsdam, raw, 24))
    folder = KINDS[3]
    folder.write(tmp_path / "f")
    ds = folder.build(tmp_path / "f", SegTransform(24), False)
    wide = np.random.default_rng(1).choice([0, 1, 2, 3, 4, 255], (F.H, F.W)).astype(np.uint16)
    Image.fromarray(wide).save(ds.label_path(0))
    assert ds.load(0, raw_8bit=True)[1].dtype == np.int64
    np.testing.assert_array_equal(ds[0]["label"].numpy(), expected_crop(folder, wide, 24))
    wide[3, 4] = 300
    Image.fromarray(wide).save(ds.label_path(0))
    with pytest.raises(D.LabelRangeError, match="300"):
        ds[0]


def test_other_transforms_get_full_resolution_mapped_labels(tmp_path):
    fx = F.write_cocostuff(tmp_path)
    ds = D.CocoStuff27(tmp_path, "val", transform=lambda img, label: (img, label))
    label = ds[1]["label"]
    assert label.dtype == np.int64
    np.testing.assert_array_equal(label, F.expected_coco(fx.raw_labels[str(ds.label_path(1))]))


def _one_line_error(ds, i, error):
    with pytest.raises(error) as exc_info:
        ds[i]
    message = str(exc_info.value)
    assert str(ds.label_path(i)) in message and "\n" not in message
    return message


@pytest.mark.parametrize("kind", [k for k in KINDS if len(k.valid) < 256], ids=lambda k: k.name)
def test_bad_labels_raise_the_same_errors_through_getitem(tmp_path, kind):
    kind.write(tmp_path)
    ds = kind.build(tmp_path, SegTransform(16), False)
    valid = np.zeros(256, bool)
    valid[kind.valid] = True
    for bad in (int(np.flatnonzero(~valid)[0]), 254):
        label = np.full((kind.h, kind.w), kind.valid[0], np.uint8)
        label[kind.h // 2, 1] = bad
        _write_label(ds, 0, label, kind)
        message = _one_line_error(ds, 0, D.LabelRangeError)
        assert f": holds label values {bad}, outside " in message and " (classes)" in message
        with pytest.raises(D.LabelRangeError) as mapped:
            ds.load(0)
        assert message == str(mapped.value)
    _write_label(ds, 1, np.full((kind.h, kind.w - 1), kind.valid[0], np.uint8), kind)
    assert f"{kind.h}x{kind.w - 1}" in _one_line_error(ds, 1, D.SizeMismatchError)


def test_skip_bad_skips_bad_8bit_labels(tmp_path):
    F.write_cocostuff(tmp_path, n_val=4)
    ds = D.CocoStuff27(tmp_path, "val", transform=SegTransform(16), skip_bad=True)
    out_of_range = np.full((F.H, F.W), 3, np.uint8)
    out_of_range[0, 0] = 200
    Image.fromarray(out_of_range).save(ds.label_path(0))
    Image.fromarray(np.full((F.H, F.W - 2), 3, np.uint8)).save(ds.label_path(2))
    assert [ds[i]["index"] for i in range(4)] == [1, 1, 3, 3]
    assert [p for p, _ in ds.skipped] == [str(ds.label_path(0)), str(ds.label_path(2))]
    assert "holds label values 200, outside 0-181 (classes) and 255 (unlabelled)" in ds.skipped[0][1]
    assert "label is 40x54" in ds.skipped[1][1]


def test_value_runs_by_hand():
    table = np.zeros(256, bool)
    table[[0, 1, 2, 5, 7, 8, 255]] = True
    assert files.value_runs(table) == [(0, 2), (5, 5), (7, 8), (255, 255)]
    assert files.value_runs(np.zeros(256, bool)) == []
    assert files.ranges_text(mappings.COCO_VALID_RAW) == "0-181, 255"


def _tables():
    """The readers' valid tables, then: many invalid runs (the table-lookup fallback), a few runs touching both
    ends of 0–255, almost nothing valid."""
    tables = [mappings.COCO_VALID_RAW, mappings.CITYSCAPES_VALID_RAW, mappings.POTSDAM_VALID_RAW,
              mappings.identity_lut(4)[1], mappings.identity_lut(None)[1], mappings.shifted_lut(27)[1]]
    alternating = np.arange(256) % 3 != 1
    few = np.ones(256, bool)
    few[[0, 1, 2, 100, 250, 251, 252, 253, 254, 255]] = False
    almost_none = np.zeros(256, bool)
    almost_none[[17, 200]] = True
    return tables + [alternating, few, almost_none]


@pytest.mark.parametrize("t", range(9))
def test_only_valid_8bit_agrees_with_the_table_for_every_value(t):
    valid = _tables()[t]
    runs = files.value_runs(~valid)
    assert (len(runs) > files.MAX_RUN_CHECKS) == (t == 6)
    rng = np.random.default_rng(t)
    allowed = np.flatnonzero(valid)
    base = rng.choice(allowed, (12, 10)).astype(np.uint8) if len(allowed) else np.zeros((12, 10), np.uint8)
    for v in range(256):
        label = base.copy()
        label[rng.integers(12), rng.integers(10)] = v
        expected = bool(valid[label].all())  # brute force: look every pixel up
        assert files.only_valid_8bit(label, valid, runs) == expected, v
        assert files.only_valid_8bit(np.asfortranarray(label)[::2, ::-1], valid, runs) == bool(
            valid[label[::2, ::-1]].all()), v


def test_seg_transform_maps_raw_labels_after_the_crop():
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 256, (30, 47), dtype=np.uint8)
    img = Image.fromarray(rng.integers(0, 256, (30, 47, 3), dtype=np.uint8))
    lut = rng.integers(-1, 50, 256)
    for res in (11, 30, 64):
        x, y = SegTransform(res)(img, raw, lut=lut)
        x_ref, y_ref = SegTransform(res)(img, lut[raw])
        assert torch.equal(x, x_ref) and y.dtype == torch.int64 and torch.equal(y, y_ref)
        np.testing.assert_array_equal(resize_center_crop(img, raw, res)[1], resize_center_crop(img, raw.astype(
            np.int64), res)[1])
