"""Synthetic datasets in the real on-disk layouts at the real sizes, for the paper-scale rehearsal.

COCO-Stuff-27: JPEG images (quality 90) at COCO's sizes (longer side 640 or 500, the usual aspect ratios, some
portrait) with single-channel PNG stuffthingmaps of fine ids 0–181 and 255, and the curated lists; Cityscapes-27:
2048×1024 leftImg8bit PNGs and gtFine labelIds PNGs in their city folders. Content is smooth regions (a few blobs
with their own colour and a soft shading) plus fine grain, so the files compress like photographs (~130 KB per
COCO JPEG, ~2.4 MB per Cityscapes PNG) instead of like noise or flat colour.

Everything is written once into a pool (`write_pool`), item by item in a fixed order, each file atomically and
skipped when present, so a pool grows from one size to the next and a killed writer continues. `make_root` gives a
size its own data root of hard links to the first items of the pool: the real readers see exactly that many files.
"""
import argparse
import functools
import os
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

FULL = {"cocostuff27": {"train": 49_629, "val": 2_175}, "cityscapes27": {"train": 2_975, "val": 500}}
"""Image counts of the full splits (docs/protocol.md §6): COCO's curated train list, its val list, Cityscapes."""
COCO_TRAIN = FULL["cocostuff27"]["train"]
MIN_TRAIN = {"cocostuff27": 2, "cityscapes27": 2}
"""Fewest training images at a tiny size: two images give the ten five-crops a KNN table of k ≥ 8 needs."""
COCO_SIZES = ((640, 480, 40), (640, 427, 20), (640, 426, 8), (640, 360, 6), (640, 640, 4), (500, 375, 7),
              (480, 640, 8), (427, 640, 5), (375, 500, 2))
"""(width, height, weight) of the image sizes drawn for COCO: the common sizes of COCO 2017."""
TRAIN_CITIES = ("aachen", "bochum", "bremen", "cologne", "darmstadt", "dusseldorf", "erfurt", "hamburg", "hanover",
                "jena", "krefeld", "monchengladbach", "strasbourg", "stuttgart", "tubingen", "ulm", "weimar", "zurich")
VAL_CITIES = ("frankfurt", "lindau", "munster")
GRAIN = {"cocostuff27": 16.0, "cityscapes27": 1.0}
"""Standard deviation of the fine grain (8-bit levels): sets the JPEG and PNG sizes to the real ones'."""
_SEED = 17
_BANKS = {}


def split_sizes(dataset: str, n: int) -> dict:
    """Images per split at size n (COCO train images): n of COCO's train list and the same fraction of every other
    split, rounded; n = 49,629 gives the full splits."""
    frac = n / COCO_TRAIN
    full = FULL[dataset]
    train = n if dataset == "cocostuff27" else max(MIN_TRAIN[dataset], round(frac * full["train"]))
    return {"train": min(train, full["train"]), "val": min(max(1, round(frac * full["val"])), full["val"])}


@functools.cache
def coco_ids(split: str) -> list[str]:
    """The pool's COCO ids of a split, in list order: distinct 12-digit ids, the same on every call."""
    rng = np.random.default_rng([_SEED, 0 if split == "train" else 1])
    base = 0 if split == "train" else 600_000
    return [f"{base + int(i):012d}" for i in rng.choice(580_000, FULL["cocostuff27"][split], replace=False)]


@functools.cache
def cityscapes_stems(split: str) -> list[tuple[str, str]]:
    """(city, stem) of the pool's Cityscapes frames of a split, in the order sizes take them (round robin)."""
    cities = TRAIN_CITIES if split == "train" else VAL_CITIES
    return [(cities[k % len(cities)], f"{cities[k % len(cities)]}_{k // len(cities):06d}_{19 + k % 7:06d}")
            for k in range(FULL["cityscapes27"][split])]


def item_files(dataset: str, base: Path, split: str, k: int) -> tuple[Path, Path]:
    """(image, label) files of item k of a split under the data root `base`, in the real layout."""
    if dataset == "cocostuff27":
        i, folder = coco_ids(split)[k], f"{split}2017"
        return (base / "cocostuff" / "images" / folder / f"{i}.jpg",
                base / "cocostuff" / "annotations" / folder / f"{i}.png")
    city, stem = cityscapes_stems(split)[k]
    return (base / "cityscapes" / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
            base / "cityscapes" / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")


def _grain(dataset: str) -> np.ndarray:
    """A fixed bank of Gaussian grain, int16 (H+64)×(W+64)×3, cut at a random offset for each image."""
    if dataset not in _BANKS:
        h, w = (704, 704) if dataset == "cocostuff27" else (1088, 2112)
        rng = np.random.default_rng([_SEED, 99])
        _BANKS[dataset] = np.clip(rng.normal(0, GRAIN[dataset], (h, w, 3)), -127, 127).astype(np.int16)
    return _BANKS[dataset]


def _smooth(rng, h, w, channels, cells):
    """`channels` random fields of cells[0]×cells[1] knots, bicubically resized to h×w (float32)."""
    knots = rng.random((channels, *cells)).astype(np.float32)
    return np.stack([np.asarray(Image.fromarray(c, "F").resize((w, h), Image.BICUBIC)) for c in knots])


def scene(rng, height: int, width: int, values: np.ndarray, grain: np.ndarray, down: int = 4):
    """(RGB uint8 H×W×3, label uint8 H×W): 3–8 smooth blobs, each one label value of `values` and one colour with
    soft shading, drawn at 1/`down` resolution and resized (image bilinear, label nearest), plus grain."""
    k = int(rng.integers(3, 9))
    hs, ws = -(-height // down), -(-width // down)
    region = _smooth(rng, hs, ws, k, (4, 5)).argmax(0).astype(np.uint8)
    colours = rng.integers(20, 236, (k, 3)).astype(np.float32)
    shade = _smooth(rng, hs, ws, 1, (3, 3))[0] * 60 - 30
    small = np.clip(colours[region] + shade[..., None], 0, 255).astype(np.uint8)
    img = np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR), dtype=np.int16)
    y, x = rng.integers(0, 64, 2)
    img = np.clip(img + grain[y:y + height, x:x + width], 0, 255).astype(np.uint8)
    region = np.asarray(Image.fromarray(region).resize((width, height), Image.NEAREST))
    return img, rng.choice(values, k).astype(np.uint8)[region]


def _atomic_save(array, path: Path, **params) -> int:
    """Write an image file through a temp file and a rename; returns its size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(array).save(tmp, **params)
    os.replace(tmp, path)
    return path.stat().st_size


def write_item(job) -> int:
    """Write item k of a split into the pool unless both its files exist; returns the bytes written."""
    dataset, pool, split, k = job
    image_file, label_file = item_files(dataset, Path(pool), split, k)
    if image_file.exists() and label_file.exists():
        return 0
    rng = np.random.default_rng([_SEED, 1 if dataset == "cityscapes27" else 0, split == "val", k])
    if dataset == "cocostuff27":
        w, h, _ = COCO_SIZES[rng.choice(len(COCO_SIZES), p=_weights())]
        values = np.r_[np.arange(182), 255, 255]
        img, label = scene(rng, h, w, values, _grain(dataset))
        return (_atomic_save(img, image_file, format="JPEG", quality=90)
                + _atomic_save(label, label_file, format="PNG"))
    img, label = scene(rng, 1024, 2048, np.arange(34), _grain(dataset), down=8)
    return (_atomic_save(img, image_file, format="PNG", compress_level=1)
            + _atomic_save(label, label_file, format="PNG"))


def _weights():
    w = np.array([s[2] for s in COCO_SIZES], dtype=np.float64)
    return w / w.sum()


def _write_lists(dataset: str, base: Path, counts: dict) -> None:
    """COCO's curated lists (both of the release's list names, one id a line) of the first counts[split] ids."""
    if dataset != "cocostuff27":
        return
    for split, n in counts.items():
        folder = base / "cocostuff" / "curated" / f"{split}2017"
        folder.mkdir(parents=True, exist_ok=True)
        text = "".join(f"{i}\n" for i in coco_ids(split)[:n])
        for name in ("Coco164kFull_Stuff_Coarse.txt", "Coco164kFull_Stuff_Coarse_7.txt"):
            (folder / name).write_text(text)


def write_pool(dataset: str, pool, n: int, workers: int = 2) -> int:
    """Write the first items of size n (see `split_sizes`) of every split into `pool`; returns bytes written."""
    counts = split_sizes(dataset, n)
    jobs = [(dataset, str(pool), split, k) for split, m in counts.items() for k in range(m)]
    with Pool(max(1, workers)) as procs:
        written = sum(tqdm(procs.imap_unordered(write_item, jobs, chunksize=16), total=len(jobs),
                           desc=f"write {dataset}", unit="img"))
    _write_lists(dataset, Path(pool), counts)
    return written


def make_root(dataset: str, pool, root, n: int) -> dict:
    """A data root holding hard links to the pool's first items of size n (and the lists); returns the counts.
    Links already present are kept, so a re-run is cheap."""
    pool, root, counts = Path(pool), Path(root), split_sizes(dataset, n)
    for split, m in counts.items():
        for k in range(m):
            for src, dst in zip(item_files(dataset, pool, split, k), item_files(dataset, root, split, k)):
                if not dst.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    os.link(src, dst)
    _write_lists(dataset, root, counts)
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="write the rehearsal's synthetic pool of one dataset up to size N")
    p.add_argument("--dataset", required=True, choices=sorted(FULL))
    p.add_argument("--pool", required=True, type=Path)
    p.add_argument("--n", required=True, type=int, help="size: COCO train images (other splits scale with it)")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    args = p.parse_args(argv)
    written = write_pool(args.dataset, args.pool, args.n, args.workers)
    print(f"{args.pool}: {args.dataset} up to size {args.n}: {split_sizes(args.dataset, args.n)}; "
          f"{written / 1e6:.1f} MB written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
