"""Small data fixtures in the real on-disk layouts (see stego/data/datasets.py), written into a temp dir.

Each writer returns a `Fixture`: the data root, the ids per split in the order the reader lists them, and the
raw label array written to every label file (keyed by its path), so tests can compute expected labels on
their own. Every label file holds every valid raw value of its dataset at least once (plus 255), so one
image exercises the whole mapping. Also here: helpers that damage files, and the docs/protocol.md §6 tables
transcribed as text, independently of stego/data/mappings.py.
"""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

H, W = 40, 56
"""Size of every fixture image (height, width): small and not square."""


@dataclass
class Fixture:
    root: Path
    ids: dict = field(default_factory=dict)
    raw_labels: dict = field(default_factory=dict)
    images: dict = field(default_factory=dict)
    """Arrays written to non-image files (Potsdam .mat tiles), keyed by id."""


def random_rgb(rng, h=H, w=W):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def covering_labels(values, rng, h=H, w=W, dtype=np.uint8):
    """An h×w label map holding every value of `values` at least once, in random positions."""
    values = np.asarray(values)
    assert len(values) <= h * w
    flat = np.concatenate([values, rng.choice(values, h * w - len(values))])
    return rng.permutation(flat).reshape(h, w).astype(dtype)


def _save_image(path, arr, **kwargs):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kwargs)
    return path


def _write_list(path, ids):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


COCO_VALID = list(range(182)) + [255]


def write_cocostuff(root, n_train=3, n_train_7=2, n_val=2, seed=0):
    """ROOT/cocostuff: images, fine-label PNGs and curated lists for train2017 and val2017.

    ids: "train" (Coco164kFull_Stuff_Coarse.txt), "train_7" (the first n_train_7 of them, listed in
    train2017/Coco164kFull_Stuff_Coarse_7.txt) and "val" (val2017, both lists).
    """
    rng = np.random.default_rng(seed)
    fx, base = Fixture(Path(root)), Path(root) / "cocostuff"
    for split, folder, n in (("train", "train2017", n_train), ("val", "val2017", n_val)):
        ids = [f"{(7 if split == 'val' else 3) * k + 1:012d}" for k in range(n)]
        for i in ids:
            _save_image(base / "images" / folder / f"{i}.jpg", random_rgb(rng), quality=95)
            label = covering_labels(COCO_VALID, rng)
            fx.raw_labels[str(_save_image(base / "annotations" / folder / f"{i}.png", label))] = label
        _write_list(base / "curated" / folder / "Coco164kFull_Stuff_Coarse.txt", ids)
        seven = ids[:n_train_7] if split == "train" else ids
        _write_list(base / "curated" / folder / "Coco164kFull_Stuff_Coarse_7.txt", seven)
        fx.ids[split] = ids
        if split == "train":
            fx.ids["train_7"] = seven
    return fx


CITYSCAPES_VALID = list(range(34)) + [255]


def write_cityscapes(root, cities=("aachen", "bremen"), per_city=2, splits=("train", "val"), seed=0):
    """ROOT/cityscapes: leftImg8bit PNGs and gtFine labelIds PNGs; ids are the stems in sorted order."""
    rng = np.random.default_rng(seed)
    fx, base = Fixture(Path(root)), Path(root) / "cityscapes"
    for split in splits:
        stems = []
        for city in cities:
            for k in range(per_city):
                stem = f"{city}_{k:06d}_{19 * k + 3:06d}"
                _save_image(base / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", random_rgb(rng))
                label = covering_labels(CITYSCAPES_VALID, rng)
                path = _save_image(base / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label)
                fx.raw_labels[str(path)] = label
                stems.append(stem)
        fx.ids[split] = sorted(stems)
    return fx


POTSDAM_VALID = [0, 1, 2, 3, 4, 5, 255]


def write_potsdam(root, n_labelled_train=3, n_unlabelled_train=2, n_test=2, seed=0, float_images=False):
    """ROOT/potsdam: imgs/<id>.mat (uint8 H×W×4 RGB-IR, or float 0–1), gt/<id>.mat (int32) and the lists.

    Unlabelled tiles have no gt file, as in IIC's release. `images` maps id → the 4-channel array written.
    """
    rng = np.random.default_rng(seed)
    fx, base = Fixture(Path(root)), Path(root) / "potsdam"
    (base / "imgs").mkdir(parents=True, exist_ok=True)
    (base / "gt").mkdir(parents=True, exist_ok=True)
    counter = iter(rng.permutation(1000))
    lists = {"labelled_train": n_labelled_train, "unlabelled_train": n_unlabelled_train, "labelled_test": n_test}
    for list_name, n in lists.items():
        ids = [str(next(counter)) for _ in range(n)]
        for i in ids:
            if float_images:
                img = rng.random((H, W, 4)).astype(np.float32)
            else:
                img = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
            savemat(base / "imgs" / f"{i}.mat", {"img": img})
            fx.images[i] = img
            if list_name.startswith("labelled"):
                gt = covering_labels(POTSDAM_VALID, rng, dtype=np.int32)
                savemat(base / "gt" / f"{i}.mat", {"gt": gt})
                fx.raw_labels[str(base / "gt" / f"{i}.mat")] = gt
        _write_list(base / f"{list_name}.txt", ids)
        fx.ids[list_name] = ids
    fx.ids["all"] = [i for name in lists for i in fx.ids[name]]
    _write_list(base / "all.txt", fx.ids["all"])
    return fx


def write_imagefolder(root, splits=("train", "val"), n=3, n_classes=4, labels=True, classes=True,
                      folder="images", seed=0):
    """ROOT/images/<split>/ (a mix of .jpg and .png), ROOT/labels/<split>/<stem>.png, ROOT/classes.txt."""
    rng = np.random.default_rng(seed)
    fx, root = Fixture(Path(root)), Path(root)
    for split in splits:
        stems = [f"img_{k:02d}" for k in range(n)]
        for k, stem in enumerate(stems):
            suffix = ".png" if k % 2 else ".jpg"
            _save_image(root / folder / split / f"{stem}{suffix}", random_rgb(rng))
            if labels:
                label = covering_labels(list(range(n_classes)) + [255], rng)
                fx.raw_labels[str(_save_image(root / "labels" / split / f"{stem}.png", label))] = label
        fx.ids[split] = stems
    if classes:
        (root / "classes.txt").write_text("".join(f"class {c}\n" for c in range(n_classes)))
    return fx


def write_cropped(root, folder_name="cocostuff27_five_crop_0.5", split="train", n=5, n_classes=27, seed=0):
    """ROOT/cropped/<folder_name>/img/<split>/<index>.jpg and label/<split>/<index>.png holding label + 1."""
    rng = np.random.default_rng(seed)
    fx, base = Fixture(Path(root)), Path(root) / "cropped" / folder_name
    for k in range(n):
        _save_image(base / "img" / split / f"{k}.jpg", random_rgb(rng, H // 2, W // 2))
        stored = covering_labels(list(range(n_classes + 1)), rng, H // 2, W // 2)
        fx.raw_labels[str(_save_image(base / "label" / split / f"{k}.png", stored))] = stored
    fx.ids[split] = [str(k) for k in range(n)]
    return fx


def truncate_file(path, keep=0.5):
    """Cut a file to its first `keep` fraction of bytes (a truncated download)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:int(len(data) * keep)])


def corrupt_file(path):
    """Overwrite a file with bytes that are no image or .mat file."""
    Path(path).write_bytes(b"this is not an image file\n" * 8)


# docs/protocol.md §6, CocoStuff-27, copied as text: "class name fine-ids".
PROTOCOL_COCO_27 = """
0 electronic 71–76 · 1 appliance 77–82 · 2 food(things) 51–60 · 3 furniture(things) 61–70 ·
4 indoor 83–90 · 5 kitchen 43–50 · 6 accessory 25–32 · 7 animal 15–24 · 8 outdoor 9–14 · 9 person 0 ·
10 sports 33–42 · 11 vehicle 1–8 · 12 ceiling 101–102 · 13 floor 100, 113–117 ·
14 food(stuff) 120–121, 152, 169 · 15 furniture(stuff) 97, 106–107, 109, 111, 122, 129, 132, 155, 160, 164 ·
16 rawmaterial 99, 131, 138, 142 · 17 textile 91–92, 103–104, 108, 130, 136, 140, 151, 166–167 ·
18 wall 170–176 · 19 window 179–180 · 20 building 94–95, 127, 150, 157, 165 ·
21 ground 110, 124–125, 135, 139, 143–144, 146, 148, 153, 158 · 22 plant 93, 96, 118, 123, 128, 133, 141, 162, 168 ·
23 sky 105, 156 · 24 solid 126, 134, 149, 159, 161, 181 · 25 structural 98, 112, 137, 145, 163 ·
26 water 119, 147, 154, 177–178
"""


def parse_protocol_coco():
    """({fine id: coarse class}, [coarse names]) parsed from the PROTOCOL text above."""
    table, names = {}, []
    for entry in PROTOCOL_COCO_27.replace("\n", " ").split("·"):
        coarse, name, ids = entry.strip().split(" ", 2)
        assert int(coarse) == len(names)
        names.append(name)
        for part in ids.split(","):
            first, _, last = part.strip().partition("–")
            for fine in range(int(first), int(last or first) + 1):
                assert fine not in table, f"fine id {fine} listed twice"
                table[fine] = int(coarse)
    return table, names


def expected_coco(raw):
    """Reference CocoStuff-27 labels of a raw fine label array (255 and unknown ids → -1)."""
    table, _ = parse_protocol_coco()
    return np.vectorize(lambda v: table.get(int(v), -1), otypes=[np.int64])(raw)


def expected_cityscapes(raw):
    """docs/protocol.md §6: class = labelId − 7, below 0 ignored; only labelIds 7–33 are classes."""
    return np.vectorize(lambda v: int(v) - 7 if 7 <= v <= 33 else -1, otypes=[np.int64])(raw)


# docs/protocol.md §6, Potsdam-3: {0,4} roads and cars, {1,5} buildings and clutter, {2,3} trees and vegetation.
PROTOCOL_POTSDAM_3 = {0: 0, 4: 0, 1: 1, 5: 1, 2: 2, 3: 2}


def expected_potsdam(raw):
    return np.vectorize(lambda v: PROTOCOL_POTSDAM_3.get(int(v), -1), otypes=[np.int64])(raw)


# cityscapesScripts labels.py: labelId → name for the 27 classes (labelIds 7–33).
CITYSCAPES_LABEL_NAMES = {
    7: "road", 8: "sidewalk", 9: "parking", 10: "rail track", 11: "building", 12: "wall", 13: "fence",
    14: "guard rail", 15: "bridge", 16: "tunnel", 17: "pole", 18: "polegroup", 19: "traffic light",
    20: "traffic sign", 21: "vegetation", 22: "terrain", 23: "sky", 24: "person", 25: "rider", 26: "car",
    27: "truck", 28: "bus", 29: "caravan", 30: "trailer", 31: "train", 32: "motorcycle", 33: "bicycle",
}
