"""Data loading per image: our reader + transform (decode with checks, nearest resize, centre crop, label
mapping, normalise) against the torchvision-style recipe of the same steps (PIL open, `Resize(res, NEAREST)`,
`CenterCrop`, `ToTensor`, `Normalize`, a lookup table on the cropped labels). Both give the same tensors.

Timed as CPU time with one torch thread, as DataLoader workers run. Files: 640×480 JPEGs (COCO's usual size)
with 8-bit PNG labels, in an image-folder layout. The reader checks the raw 8-bit label's values, resizes and
crops it as an 8-bit image and maps classes after the crop (the earlier order, range-checking, mapping to int64
and converting to int32 every full-resolution pixel before the resize, measured 0.69–0.70× the recipe).
"""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from stego.constants import IGNORE, IMAGENET_MEAN, IMAGENET_STD
from stego.data.datasets import ImageFolder

from .report import compare

WIDTH, HEIGHT, RES, N_CLASSES, IMAGES = 640, 480, 224, 27, 4
MIN_RATIO = 0.8


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An image folder of IMAGES smooth colour images and their labels (class ids, 255 unlabelled)."""
    root = tmp_path_factory.mktemp("loading")
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    for i in range(IMAGES):
        rgb = np.stack([(x * (1 + c) + y * (3 - c) + 60 * i) % 256 for c in range(3)], -1)
        rgb = np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(root / "images" / "train" / f"{i}.jpg", quality=90)
        label = ((x // 40 + y // 40 + i) % N_CLASSES).astype(np.uint8)
        label[HEIGHT // 2 - 10:HEIGHT // 2 + 10] = 255
        Image.fromarray(label).save(root / "labels" / "train" / f"{i}.png")
    (root / "classes.txt").write_text("\n".join(f"class{c}" for c in range(N_CLASSES)) + "\n")
    return root


def torchvision_style(dataset):
    """Load item i the way a torchvision pipeline would (reference for the speed ratio)."""
    image_tf = T.Compose([T.Resize(RES, T.InterpolationMode.NEAREST), T.CenterCrop(RES), T.ToTensor(),
                          T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    label_tf = T.Compose([T.Resize(RES, T.InterpolationMode.NEAREST), T.CenterCrop(RES)])
    lut = torch.full((256,), IGNORE, dtype=torch.int64)
    lut[:N_CLASSES] = torch.arange(N_CLASSES)

    def load(i):
        img = image_tf(Image.open(dataset.path(i)).convert("RGB"))
        label = lut[torch.from_numpy(np.array(label_tf(Image.open(dataset.label_path(i))))).long()]
        return img, label

    return load


def test_same_tensors_as_torchvision(folder):
    dataset = ImageFolder(folder, "train")
    reference = torchvision_style(dataset)
    for i in range(len(dataset)):
        assert dataset.load(i, raw_8bit=True)[1].dtype == np.uint8  # the timed path maps after the crop
        item = dataset[i]
        img, label = reference(i)
        torch.testing.assert_close(item["img"], img, rtol=0, atol=1e-6)
        assert torch.equal(item["label"], label)
        assert (label == IGNORE).any() and (label >= 0).any()


@pytest.mark.benchmark(group="data-loading")
def test_loading_speed(benchmark, folder):
    dataset = ImageFolder(folder, "train")
    reference = torchvision_style(dataset)
    row = compare(benchmark, "data loading", f"{WIDTH}×{HEIGHT} JPEG + PNG label → {RES}×{RES}",
                  lambda: [dataset[i] for i in range(IMAGES)], lambda: [reference(i) for i in range(IMAGES)],
                  ours_name="ImageFolder reader + SegTransform", reference_name="torchvision recipe",
                  rounds=7, units=IMAGES, unit="image", clock="cpu")
    assert row.ratio >= MIN_RATIO, f"our loading is slower than the torchvision recipe: {row}"
