"""Data loading per image: our reader + transform (decode with checks, label mapping, nearest resize, centre
crop, normalise) against the torchvision-style recipe of the same steps (PIL open, `Resize(res, NEAREST)`,
`CenterCrop`, `ToTensor`, `Normalize`, a lookup table on the cropped labels). All forms give the same tensors.

Timed as CPU time with one torch thread, as DataLoader workers run. Files: 640×480 JPEGs (COCO's usual size)
with 8-bit PNG labels, in an image-folder layout. `proposed_item` is the order proposed for
`SegmentationDataset.__getitem__`: validate the raw 8-bit label with one table lookup, resize and crop it as an
8-bit image, map classes after the crop (nearest resizing only selects pixels, so mapping commutes with it);
today every full-resolution label pixel is range-checked, mapped to int64 and converted to int32 before the
resize.
"""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from stego.constants import IGNORE, IMAGENET_MEAN, IMAGENET_STD
from stego.data.datasets import ImageFolder
from stego.data.transforms import center_crop_box, image_to_tensor, normalize, resized_size

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


def proposed_item(dataset, i):
    """`dataset[i]` in the proposed order (8-bit labels; anything else goes the current way, which also raises
    the one-line errors for bad files)."""
    image_path, label_path = dataset.items[i]
    img = dataset._read_image(image_path)
    raw = dataset._read_label(label_path)
    if raw.dtype != np.uint8 or raw.shape != (img.height, img.width) or not np.take(dataset._valid, raw).all():
        return dataset[i]
    size = resized_size(img.width, img.height, RES)
    box = center_crop_box(*size, RES)
    label = np.asarray(Image.fromarray(raw).resize(size, Image.NEAREST).crop(box))
    img = img.resize(size, Image.NEAREST).crop(box)
    return dict(img=normalize(image_to_tensor(img)), label=torch.from_numpy(np.take(dataset._lut, label)), index=i)


def test_same_tensors_every_way(folder):
    dataset = ImageFolder(folder, "train")
    reference = torchvision_style(dataset)
    for i in range(len(dataset)):
        item, proposed = dataset[i], proposed_item(dataset, i)
        img, label = reference(i)
        torch.testing.assert_close(item["img"], img, rtol=0, atol=1e-6)
        assert torch.equal(item["label"], label) and torch.equal(proposed["label"], label)
        assert torch.equal(proposed["img"], item["img"])
        assert (label == IGNORE).any() and (label >= 0).any()


@pytest.mark.benchmark(group="data-loading")
def test_proposed_loading_speed(benchmark, folder):
    dataset = ImageFolder(folder, "train")
    reference = torchvision_style(dataset)
    row = compare(benchmark, "data loading", f"{WIDTH}×{HEIGHT} JPEG + PNG label → {RES}×{RES}",
                  lambda: [proposed_item(dataset, i) for i in range(IMAGES)],
                  lambda: [reference(i) for i in range(IMAGES)],
                  ours_name="proposed order (map labels after the crop)", reference_name="torchvision recipe",
                  rounds=7, units=IMAGES, unit="image", clock="cpu")
    assert row.ratio >= MIN_RATIO, f"proposed loading slower than the torchvision recipe: {row}"


@pytest.mark.xfail(reason="SegmentationDataset checks, maps and converts every full-resolution label pixel "
                          "before the resize (~0.7× the torchvision recipe); drop this mark once the "
                          "proposed_item order is in stego/data")
@pytest.mark.benchmark(group="data-loading")
def test_current_loading_speed(benchmark, folder):
    dataset = ImageFolder(folder, "train")
    reference = torchvision_style(dataset)
    row = compare(benchmark, "data loading", f"{WIDTH}×{HEIGHT} JPEG + PNG label → {RES}×{RES}",
                  lambda: [dataset[i] for i in range(IMAGES)], lambda: [reference(i) for i in range(IMAGES)],
                  ours_name="ImageFolder reader + SegTransform (current)", reference_name="torchvision recipe",
                  rounds=7, units=IMAGES, unit="image", clock="cpu")
    assert row.ratio >= MIN_RATIO, f"our loading is slower than the torchvision recipe: {row}"
