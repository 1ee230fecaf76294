"""Image/label transforms of docs/protocol.md §6: nearest resize of the shorter side to `res`, centre crop res×res.

The sizes and offsets follow torchvision's `Resize(res, NEAREST)` + `CenterCrop(res)` on PIL images, as the
release used them: longer side = int(res · long / short), crop offset = round((size − res) / 2) with Python's
round (halves to even). Image and label go through the same PIL nearest resize, so they stay aligned pixel
for pixel. PIL picks source pixel int(x) with x = s/2 + i·s accumulated in doubles (s = in/out), which is
floor((i + 0.5)·s) except where that is an exact integer, where it can be one lower (as in the release).
"""
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from stego.constants import IGNORE, IMAGENET_MEAN, IMAGENET_STD
from stego.errors import StegoError

TRAIN_RES = 224
EVAL_RES = 320


def _stats(x):
    shape = (3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(shape)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(shape)
    return mean, std


def normalize(x):
    """ImageNet-normalise a float image tensor in [0, 1], shaped [3,H,W] or [B,3,H,W]."""
    mean, std = _stats(x)
    return (x - mean) / std


def unnormalize(x):
    """Invert `normalize`: back to [0, 1] floats (not clipped)."""
    mean, std = _stats(x)
    return x * std + mean


def image_to_tensor(img):
    """PIL RGB image → float32 tensor [3,H,W] in [0, 1] (like torchvision's ToTensor)."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def resized_size(width, height, res):
    """(width, height) after resizing the shorter side to `res` (torchvision's rule, longer side truncated)."""
    if width <= height:
        return res, int(res * height / width)
    return int(res * width / height), res


def center_crop_box(width, height, res):
    """(left, top, right, bottom) of the centred res×res crop, offsets rounded as torchvision does."""
    left = int(round((width - res) / 2.0))
    top = int(round((height - res) / 2.0))
    return left, top, left + res, top + res


def resize_center_crop(img, label, res):
    """Resize the shorter side of `img` (and `label`, if not None) to `res` with NEAREST, then centre-crop.

    img: PIL image; label: integer array [H,W] matching the image size, or None.
    Returns (PIL image res×res, np.int64 array [res,res] or None).
    """
    width, height = img.size
    if label is not None and np.shape(label) != (height, width):
        raise StegoError(f"label shape {np.shape(label)} does not match image size {height}x{width} (HxW); "
                         "pass the label that belongs to this image")
    size = resized_size(width, height, res)
    box = center_crop_box(*size, res)
    img = img.resize(size, Image.NEAREST).crop(box)
    if label is not None:
        label = np.asarray(label)
        if label.dtype == np.uint8:
            as_image = Image.fromarray(label)
        else:
            if label.min(initial=0) < np.iinfo(np.int32).min or label.max(initial=0) > np.iinfo(np.int32).max:
                raise StegoError("label values do not fit in int32; class ids must be small integers")
            as_image = Image.fromarray(label.astype(np.int32))
        label = np.asarray(as_image.resize(size, Image.NEAREST).crop(box), dtype=np.int64)
    return img, label


@dataclass(frozen=True)
class SegTransform:
    """(PIL image, label array or None) → (normalised float32 [3,res,res], int64 [res,res] with -1 ignore)."""

    res: int

    def __call__(self, img, label, lut=None):
        """lut: `label` holds raw uint8 values whose classes are lut[value] (int64[256]), looked up after the
        crop; the result equals mapping first, as nearest resizing and cropping only select pixels."""
        img, label = resize_center_crop(img, label, self.res)
        x = normalize(image_to_tensor(img))
        if label is None:
            y = torch.full((self.res, self.res), IGNORE, dtype=torch.int64)
        else:
            y = torch.from_numpy(label if lut is None else np.take(lut, label))
        return x, y


def default_transform(split):
    """The protocol's transform for a split: 224 for training splits (names containing "train"), else 320."""
    return SegTransform(TRAIN_RES if "train" in str(split) else EVAL_RES)
