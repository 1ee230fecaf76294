"""Potsdam-3 from the raw ISPRS tiles, by IIC's recipe (xu-ji/IIC code/datasets/segmentation/util/potsdam_prepare.py).

Each RGB-IR tile (<stem>_RGBIR.tif, 6000×6000×4 uint8), in sorted order, is halved (2×2 mean rounded half
up, what OpenCV's bilinear resize by 0.5 computes) and cut row by row into 200×200 crops (a 400×400 area
each, 15×15 per tile). Its label tile (<stem>_label.tif, RGB colours), when there is one, becomes class ids
0–5 (unknown colours 255), halved by nearest neighbour (the top-left pixel of each 2×2) and cut the same way.
Crop i is saved as imgs/<names[i]>.mat {"img"} and gt/<names[i]>.mat {"gt": int32}, names a random
permutation (seeded here; IIC's was not, so the names differ from its release). int(10% of all crops), drawn
from the labelled ones, are labelled_test; the other labelled crops are labelled_train, the rest
unlabelled_train. Output is gathered in ROOT/.potsdam.partial/ (a re-run keeps finished crops) and renamed
onto ROOT/potsdam when complete.
"""
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat
from tqdm import tqdm

from stego.data.datasets import Potsdam3
from stego.download.sources import IIC_POTSDAM_COUNTS, ISPRS_REQUEST
from stego.errors import StegoError
from stego.io import atomic_write

log = logging.getLogger(__name__)

IMAGE_SUFFIX, LABEL_SUFFIX = "_RGBIR.tif", "_label.tif"
CUT = 400
"""Side of the tile area of one crop, before halving."""
TEST_FRACTION = 0.1
COLOURS = {(255, 255, 255): 0, (0, 0, 255): 1, (0, 255, 255): 2, (0, 255, 0): 3, (255, 255, 0): 4, (255, 0, 0): 5}
"""ISPRS label colours → IIC's ids: roads, buildings, low vegetation, trees, cars, clutter."""
LISTS = tuple(Potsdam3.SPLITS[s][0] for s in ("train", "unlabelled_train", "val"))
"""labelled_train.txt, unlabelled_train.txt, labelled_test.txt: the order all.txt lists them in."""
ALL_LIST = Potsdam3.SPLITS["all"][0]


def write_all_list(folder):
    """Write all.txt (the three lists, in LISTS order) into a Potsdam folder that has none (IIC ships none)."""
    folder = Path(folder)
    if (folder / ALL_LIST).is_file():
        return
    missing = [name for name in LISTS if not (folder / name).is_file()]
    if missing:
        raise StegoError(f"{folder}: has no {', '.join(missing)}, so it is not IIC's Potsdam; check the archive")
    with atomic_write(folder / ALL_LIST, "w") as f:
        f.write("".join((folder / name).read_text() for name in LISTS))
    log.info("wrote %s (%s)", folder / ALL_LIST, " + ".join(LISTS))


def _read_tif(path):
    try:
        import tifffile  # reads every TIFF layout; Pillow covers the usual ones
    except ImportError:
        with Image.open(path) as img:
            return np.asarray(img)
    return tifffile.imread(path)


def _halve_image(img):
    a = img.astype(np.uint16)
    return ((a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2] + 2) // 4).astype(np.uint8)


def _label_ids(rgb, path):
    """Halved class-id map of an RGB label tile (nearest neighbour, then colours → ids, unknown → 255)."""
    rgb = rgb[0::2, 0::2, :3].astype(np.int64)
    keys, inverse = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2], return_inverse=True)
    ids = np.array([COLOURS.get((k >> 16, (k >> 8) & 255, k & 255), 255) for k in keys], np.int32)
    out = ids[inverse.reshape(rgb.shape[:2])]
    unknown = int((out == 255).sum())
    if unknown:
        log.warning("%s: %d pixels of unknown colours, stored as 255 (unlabelled)", path.name, unknown)
    return out


def _crops(arr):
    side = CUT // 2
    rows, cols = arr.shape[0] // side, arr.shape[1] // side
    return [arr[r * side:(r + 1) * side, c * side:(c + 1) * side] for r in range(rows) for c in range(cols)]


def _tiles(raw, root):
    images = sorted(Path(raw).rglob(f"*{IMAGE_SUFFIX}"))
    if not images:
        raise StegoError(f"{raw}: no *{IMAGE_SUFFIX} tiles (ISPRS's 4_Ortho_RGBIR folder); get them with "
                         f"{ISPRS_REQUEST}, unpack them under {raw} and re-run; or use `stego data download "
                         f"potsdam3 --root {root}`")
    labels = {p.name[:-len(LABEL_SUFFIX)]: p for p in Path(raw).rglob(f"*{LABEL_SUFFIX}")}
    tiles = []
    for path in images:
        with Image.open(path) as img:
            w, h = img.size
        if h % CUT or w % CUT:
            raise StegoError(f"{path}: is {w}x{h}, not a multiple of {CUT} (ISPRS tiles are 6000x6000); "
                             "is it an ISPRS Potsdam RGB-IR tile?")
        tiles.append((path, labels.get(path.name[:-len(IMAGE_SUFFIX)]), (h // CUT) * (w // CUT)))
    return tiles


def _save(path, key, arr):
    if not path.is_file():
        with atomic_write(path, "wb", durable=False) as f:
            savemat(f, {key: arr})


def prepare(raw, root, seed=0):
    """Cut the ISPRS tiles under `raw` into ROOT/potsdam (see the module docstring); returns that folder."""
    root = Path(root)
    target, partial = root / "potsdam", root / ".potsdam.partial"
    if target.is_dir():
        log.info("skip: %s already in place", target)
        return target
    tiles = _tiles(raw, root)
    n = sum(k for _, _, k in tiles)
    rng = np.random.default_rng(seed)
    names = rng.permutation(n)
    starts = np.cumsum([0] + [k for _, _, k in tiles])
    labelled = [i for (_, label, k), s in zip(tiles, starts) if label is not None for i in range(s, s + k)]
    test = set(rng.choice(labelled, size=min(len(labelled), int(n * TEST_FRACTION)), replace=False).tolist())
    for sub in ("imgs", "gt"):
        (partial / sub).mkdir(parents=True, exist_ok=True)
    for (image, label, k), s in tqdm(list(zip(tiles, starts)), desc="potsdam tiles", unit="tile"):
        todo = [(partial / "imgs" / f"{names[i]}.mat", partial / "gt" / f"{names[i]}.mat") for i in range(s, s + k)]
        if all(img.is_file() and (label is None or gt.is_file()) for img, gt in todo):
            continue
        rgbir = _read_tif(image)
        if rgbir.ndim != 3 or rgbir.shape[2] != 4 or rgbir.dtype != np.uint8:
            raise StegoError(f"{image}: expected an H×W×4 uint8 RGB-IR tile, got {rgbir.shape} {rgbir.dtype}")
        for (img_path, _), crop in zip(todo, _crops(_halve_image(rgbir))):
            _save(img_path, "img", np.ascontiguousarray(crop))
        if label is not None:
            for (_, gt_path), crop in zip(todo, _crops(_label_ids(_read_tif(label), label))):
                _save(gt_path, "gt", np.ascontiguousarray(crop))
    lists = {name: [] for name in LISTS}
    labelled_set = set(labelled)
    for i in range(n):
        lists[LISTS[2] if i in test else LISTS[0] if i in labelled_set else LISTS[1]].append(f"{names[i]}\n")
    for name, lines in lists.items():
        with atomic_write(partial / name, "w") as f:
            f.write("".join(lines))
    write_all_list(partial)
    os.replace(partial, target)
    counts = {"all": n, "labelled": len(labelled), **{Path(name).stem: len(v) for name, v in lists.items()}}
    if counts != IIC_POTSDAM_COUNTS:
        log.warning("potsdam: %s; IIC's Potsdam has %s (from 38 tiles, 24 labelled)", counts, IIC_POTSDAM_COUNTS)
    log.info("prepared %s from %d tiles (%d labelled): %s", target, len(tiles),
             sum(label is not None for _, label, _ in tiles), counts)
    return target
