"""docs/protocol.md §6 transforms: nearest resize of the shorter side, centre crop, normalisation."""
import numpy as np
import pytest
import torch
from PIL import Image

from stego.constants import IGNORE
from stego.data import transforms as T
from stego.errors import StegoError


def coordinate_image(h, w):
    """An image whose red channel is the row index and green the column index; a label of row*1000+col."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    rgb = np.stack([rows, cols, (rows * 7 + cols) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb), (rows * 1000 + cols).astype(np.int64)


def nearest_source(res, in_size, resized_size, offset):
    """Source index of each of the `res` output pixels of a nearest resize in_size → resized_size followed by
    a crop at `offset`, computed the way PIL (and so torchvision and the release) does it: the source position
    starts at s/2 (s = in/resized, a double) and grows by s per pixel; the index is its integer part."""
    step, pos, src = in_size / resized_size, in_size / resized_size * 0.5, []
    for _ in range(resized_size):
        src.append(int(pos))
        pos += step
    return np.array(src[offset:offset + res])


# (H, W, res) → resized (W', H') and crop (left, top), worked out by hand:
#   40×56 → shorter side 40 → 24, width int(24·56/40) = int(33.6) = 33, left = round(9/2 = 4.5) = 4 (half to even)
#   56×40 → width 32, height int(32·56/40) = int(44.8) = 44, top = round(12/2) = 6
#   40×59 → width int(24·59/40) = int(35.4) = 35, left = round(11/2 = 5.5) = 6 (half to even)
#   30×30 → unchanged size, no offset
CASES = [
    (40, 56, 24, (33, 24), (4, 0)),
    (56, 40, 32, (32, 44), (0, 6)),
    (40, 59, 24, (35, 24), (6, 0)),
    (30, 30, 30, (30, 30), (0, 0)),
]


@pytest.mark.parametrize("h,w,res,resized,offset", CASES)
def test_sizes_and_offsets_follow_torchvision_rules(h, w, res, resized, offset):
    assert T.resized_size(w, h, res) == resized
    left, top, right, bottom = T.center_crop_box(*resized, res)
    assert (left, top) == offset and (right - left, bottom - top) == (res, res)


@pytest.mark.parametrize("h,w,res,resized,offset", CASES)
def test_resize_center_crop_picks_nearest_pixels(h, w, res, resized, offset):
    img, label = coordinate_image(h, w)
    out_img, out_label = T.resize_center_crop(img, label, res)
    assert out_img.size == (res, res) and out_label.shape == (res, res) and out_label.dtype == np.int64
    rows = nearest_source(res, h, resized[1], offset[1])
    cols = nearest_source(res, w, resized[0], offset[0])
    arr = np.asarray(out_img)
    np.testing.assert_array_equal(arr[..., 0], np.repeat(rows[:, None], res, 1))
    np.testing.assert_array_equal(arr[..., 1], np.repeat(cols[None, :], res, 0))
    np.testing.assert_array_equal(out_label, rows[:, None] * 1000 + cols[None, :])


def test_accumulated_positions_differ_from_the_closed_form_only_at_exact_ties():
    # 56 → 33 columns: (i + 0.5)·56/33 is exactly 28 at i = 16; PIL's accumulated position is just below it.
    closed = np.floor((np.arange(33) + 0.5) * 56 / 33).astype(int)
    accumulated = nearest_source(33, 56, 33, 0)
    assert np.flatnonzero(closed != accumulated).tolist() == [16]
    assert (closed[16], accumulated[16]) == (28, 27)
    img, label = coordinate_image(40, 56)
    _, out = T.resize_center_crop(img, label, 24)
    assert out[0, 16 - 4] % 1000 == 27


def test_hand_worked_rows_and_columns():
    # 40×56 at res 24: rows floor((r + .5)·40/24), columns floor((c + 4.5)·56/33), written out by hand.
    img, label = coordinate_image(40, 56)
    _, out = T.resize_center_crop(img, label, 24)
    assert (out[:, 0] // 1000).tolist()[:6] == [0, 2, 4, 5, 7, 9]
    assert (out[0, :] % 1000).tolist()[:6] == [7, 9, 11, 12, 14, 16]


def test_cityscapes_frame_keeps_the_central_320_columns():
    # 1024×2048 → 320×640; centre crop starts at column (640 − 320) / 2 = 160 → source column floor(160.5·3.2) = 513.
    label = np.broadcast_to(np.arange(2048), (1024, 2048)).copy()
    img = Image.new("RGB", (2048, 1024))
    _, out = T.resize_center_crop(img, label, T.EVAL_RES)
    assert out.shape == (320, 320)
    assert out[0, 0] == 513 and out[0, -1] == int((479 + 0.5) * 3.2)


def test_label_none_and_size_mismatch():
    img, label = coordinate_image(40, 56)
    out_img, out_label = T.resize_center_crop(img, None, 24)
    assert out_label is None and out_img.size == (24, 24)
    with pytest.raises(StegoError, match="does not match"):
        T.resize_center_crop(img, label[:, :50], 24)


def test_normalize_and_unnormalize():
    x = torch.zeros(2, 3, 1, 1)
    x[:, 0] = 1.0
    y = T.normalize(x)
    assert y[0, 0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229)
    assert y[1, 1, 0, 0].item() == pytest.approx(-0.456 / 0.224)
    assert y[0, 2, 0, 0].item() == pytest.approx(-0.406 / 0.225)
    torch.testing.assert_close(T.unnormalize(y), x)
    single = torch.rand(3, 4, 5)
    torch.testing.assert_close(T.unnormalize(T.normalize(single)), single)


def test_seg_transform_outputs():
    img, label = coordinate_image(40, 56)
    x, y = T.SegTransform(24)(img, label)
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32
    assert y.shape == (24, 24) and y.dtype == torch.int64
    ref_img, ref_label = T.resize_center_crop(img, label, 24)
    ref = (np.asarray(ref_img, dtype=np.float64) / 255 - np.array([0.485, 0.456, 0.406])) / np.array(
        [0.229, 0.224, 0.225])
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y.numpy(), ref_label)
    _, y_none = T.SegTransform(24)(img, None)
    assert (y_none == IGNORE).all()


def test_protocol_resolutions():
    assert (T.TRAIN_RES, T.EVAL_RES) == (224, 320)
    assert T.default_transform("train").res == 224
    assert T.default_transform("unlabelled_train").res == 224
    assert T.default_transform("val").res == 320
