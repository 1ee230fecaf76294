"""The backbone-feature cache: the frozen backbone's patch features [C, h, w] of every item of a split, computed
once, so training with data.features=cached reads them instead of running the backbone (docs/features.md).

A store is a folder ROOT/features/<name>/ of chunks (feats_<c>.npy [n_c, C, h, w] in float16 or float32, or
[n_c, 2, C, h, w] for a flip store: each image's and its horizontal flip's features, what evaluation's TTA averages;
labels_<c>.npy [n_c, H, W] uint8, label + 1 with 0 unlabelled) and index.json. Its metadata is the KNN table's
(stego.data.knn: backbone, weights id, dataset, split, crops, res, n, source fingerprint) plus dtype, precision,
flip and labels. Building is resumable and atomic: a chunk file appears only whole, chunks already written are kept,
index.json comes last. A store made for anything else than what is asked is a one-line error with the command
that rebuilds it.
"""
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from stego.config import FEATURE_DTYPES, PRECISIONS
from stego.constants import IGNORE
from stego.data.commands import knn_command
from stego.data.knn import TableSpec, add_split_arguments, source_fingerprint
from stego.errors import MissingFileError, StegoError
from stego.inference import flip_features
from stego.io import atomic_save_json, atomic_write, read_json, waiting_lock
from stego.runtime import autocast, pick_device, set_tf32, worker_count

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX, BUILDING = "index.json", "building.json"
"""index.json: a finished store (written last); building.json: what the chunks of an unfinished build belong to."""


@dataclass(frozen=True)
class FeatureSpec:
    """A split's feature store as training, evaluation and `stego data features` name it: its KNN table's identity
    (what it is made from) plus dtype, precision and flip (evaluation's stores hold each image's flip too), and where
    it lives: ROOT/features/<table name>_<dtype>[_bf16][_flip]."""

    table: TableSpec
    dtype: str = "float16"
    precision: str = "fp32"
    flip: bool = False

    @property
    def folder(self) -> Path:
        tail = ("" if self.precision == "fp32" else f"_{self.precision}") + ("_flip" if self.flip else "")
        return Path(self.table.root) / "features" / f"{self.table.path.stem.removeprefix('nns_')}_{self.dtype}{tail}"

    def meta(self) -> dict:
        """What a store for this spec records (the official weights are located and hashed); `flip` only when set,
        so stores of training items keep the metadata they had before flip stores existed."""
        return dict(self.table.meta(), dtype=self.dtype, precision=self.precision, **({"flip": True} if self.flip
                                                                                       else {}))


def features_command(meta: dict, root, force: bool = True) -> str:
    """Build (or, with `force`, rebuild) the store that metadata `meta` describes (knn_command's flags, plus
    dtype and precision)."""
    line = knn_command(meta, root, force=False).replace("stego data knn", "stego data features", 1)
    line += f" --dtype {meta.get('dtype', 'float16')} --precision {meta.get('precision', 'fp32')}"
    line += " --flip" if meta.get("flip") else ""
    random = str(meta.get("weights", "")).startswith("random")
    custom = "" if random else " (plus --weights PATH if model.weights is set)"
    return f"`{line}{' --force' if force else ''}`{custom}"


def store_expect(meta: dict, dataset) -> dict:
    """Everything a store for `meta` (FeatureSpec.meta) over `dataset` must record."""
    return dict(meta, n=len(dataset), source=source_fingerprint(dataset))


class FeatureStore:
    """A finished store, read through memory maps opened on first use in each process (DataLoader workers
    included: the maps are not pickled)."""

    def __init__(self, folder, index: dict):
        self.folder, self.index, self.meta = Path(folder), index, index["meta"]
        self.chunk = int(index["chunk"])
        self._maps = {}

    def __len__(self):
        return int(self.meta["n"])

    def __getstate__(self):
        return dict(self.__dict__, _maps={})

    @classmethod
    def open(cls, folder, expect: dict, root, labels: bool = False) -> "FeatureStore":
        """Read and check the store in `folder`: every key of `expect` must match its metadata, it must hold
        labels if `labels`, and every chunk must be there whole; otherwise a one-line error with the rebuild
        command (`root`, the data root, goes into it)."""
        folder = Path(folder)
        path = folder / INDEX
        if not path.is_file():
            raise MissingFileError(f"feature store {path} not found; build it with "
                                   f"{features_command(expect, root, force=False)}")
        fix = f"rebuild it with {features_command(expect, root)}"
        index = read_json(path, fix)
        meta = index.get("meta", {})
        if index.get("format") != FORMAT_VERSION:
            raise StegoError(f"feature store {path} has format {index.get('format')!r}, this version reads "
                             f"{FORMAT_VERSION}; {fix}")
        diff = [f"{key} expected {value!r} found {meta.get(key)!r}" for key, value in expect.items()
                if meta.get(key) != value]
        if diff:
            what = "other or changed images" if all(d.startswith("source") for d in diff) else "something else"
            raise StegoError(f"feature store {path} was made from {what} ({'; '.join(diff)}); {fix}")
        if labels and not meta.get("labels"):
            raise StegoError(f"feature store {path} holds no labels (built label-free) but this run trains the "
                             f"linear probe; {fix}")
        store = cls(folder, index)
        for c in range(store.chunks):
            for kind in ("feats", "labels"):
                problem = store._chunk_problem(c, kind)
                if problem:
                    raise StegoError(f"feature store {folder / _chunk_name(kind, c)} is {problem}; {fix}")
        return store

    @property
    def chunks(self) -> int:
        return math.ceil(len(self) / self.chunk)

    def _chunk_problem(self, c: int, kind: str) -> str | None:
        """Why chunk `c`'s `kind` file is unusable (missing, unreadable, wrong shape or dtype), or None."""
        return chunk_problem(self.folder / _chunk_name(kind, c), self._chunk_shape(c, kind),
                             self.meta["dtype"] if kind == "feats" else "uint8")

    def _chunk_shape(self, c: int, kind: str) -> tuple:
        rows = min(self.chunk, len(self) - c * self.chunk)
        return (rows, *self.index["shape" if kind == "feats" else "label_shape"])

    def _rows(self, kind: str, i: int):
        if not 0 <= int(i) < len(self):
            raise IndexError(f"feature store {self.folder}: item {i} out of range for {len(self)} items")
        c, row = divmod(int(i), self.chunk)
        if (kind, c) not in self._maps:
            self._maps[kind, c] = np.load(self.folder / _chunk_name(kind, c), mmap_mode="r")
        return self._maps[kind, c][row]

    def features(self, indices) -> torch.Tensor:
        """The stored features of items `indices` (dataset positions), float32 [len, C, h, w] ([len, 2, C, h, w]
        in a flip store)."""
        return torch.from_numpy(np.stack([np.asarray(self._rows("feats", i), dtype=np.float32) for i in indices]))

    def labels(self, indices) -> torch.Tensor:
        """The stored labels of items `indices`, int64 [len, H, W], IGNORE (-1) where unlabelled."""
        return torch.from_numpy(np.stack([self._rows("labels", i).astype(np.int64) for i in indices])) - 1


class CachedItems(Dataset):
    """The store's items in the shape a dataset's have (KnnPairs pairs them as it pairs images): `img` holds the
    item's backbone features [C, h, w] instead of its image; labels are ignored (-1) when `labels` is False."""

    def __init__(self, store: FeatureStore, labels: bool = True):
        self.store, self.with_labels = store, labels

    def __len__(self):
        return len(self.store)

    def __getitem__(self, i):
        label = self.store.labels([i])[0]
        if not self.with_labels:
            label = torch.full_like(label, IGNORE)
        return dict(img=self.store.features([i])[0], label=label, index=int(i))


class CachedViews(Dataset):
    """A flip store's items for evaluation: `feats` [2, C, h, w] (the image's and its horizontal flip's features),
    the stored `label`, and the image itself (`img`, decoded from `dataset`) only when `images`: DenseCRF and the
    example pictures need pixels, scoring does not."""

    def __init__(self, store: FeatureStore, dataset, images: bool = False):
        if not store.meta.get("flip"):
            raise StegoError(f"feature store {store.folder} holds no flipped views; evaluation reads the flip store "
                             f"of the split it scores (its folder name ends in _flip)")
        self.store, self.dataset, self.images = store, dataset, images
        self.class_names = getattr(dataset, "class_names", None)

    def __len__(self):
        return len(self.store)

    def with_images(self) -> "CachedViews":
        """The same items with their images."""
        return CachedViews(self.store, self.dataset, images=True)

    def __getitem__(self, i):
        item = dict(feats=self.store.features([i])[0], label=self.store.labels([i])[0], index=int(i))
        if self.images:
            item["img"] = self.dataset[i]["img"]
        return item


def _chunk_name(kind: str, c: int) -> str:
    return f"{kind}_{c:05d}.npy"


def chunk_problem(path: Path, shape: tuple, dtype: str) -> str | None:
    """Why the .npy at `path` is not a whole array of `shape` and `dtype` (only its header is read), or None."""
    if not path.is_file():
        return "missing"
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:
        return f"unreadable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
        return f"of shape {array.shape} {array.dtype}, not {tuple(shape)} {dtype}"
    return None


def build_store(backbone, dataset, folder, meta: dict, *, root, labels: bool = True, batch_size: int = 64,
                chunk: int = 512, device=None, workers: int = 0, force: bool = False) -> FeatureStore:
    """The store of `dataset`'s features in `folder`, built now (under a lock beside it) unless a valid one is
    there: `meta` from FeatureSpec.meta; chunks of `chunk` items, `batch_size` images per backbone forward in
    meta's precision. A store made for something else is an error unless `force` (then it is rebuilt)."""
    folder = Path(folder)
    expect = store_expect(meta, dataset)
    if meta["dtype"] not in FEATURE_DTYPES or meta["precision"] not in PRECISIONS:
        raise StegoError(f"feature dtype {meta['dtype']!r} / precision {meta['precision']!r}: use one of "
                         f"{', '.join(FEATURE_DTYPES)} / {', '.join(PRECISIONS)}")
    with waiting_lock(folder.parent / f".{folder.name}.lock", f"waiting for another process building {folder}"):
        if (folder / INDEX).exists() and not force:
            return FeatureStore.open(folder, expect, root, labels)
        if force:
            shutil.rmtree(folder, ignore_errors=True)
        building = dict(meta=dict(expect, labels=bool(labels)), chunk=int(chunk))
        if (folder / BUILDING).exists() and read_json(folder / BUILDING, f"delete {folder} and re-run") != building:
            log.info("%s holds chunks of another build: starting over", folder)
            shutil.rmtree(folder)
        atomic_save_json(building, folder / BUILDING)
        started = time.perf_counter()
        shapes = _write_chunks(backbone, dataset, folder, building, batch_size, device, workers)
        index = dict(building, format=FORMAT_VERSION, shape=shapes[0], label_shape=shapes[1])
        atomic_save_json(index, folder / INDEX)
        (folder / BUILDING).unlink()
        log.info("feature store %s: %d items in %.1f s", folder, len(dataset), time.perf_counter() - started)
        return FeatureStore.open(folder, expect, root, labels)


def _write_chunks(backbone, dataset, folder: Path, building: dict, batch_size: int, device, workers: int):
    """Write every chunk not already whole; returns the feature [C, h, w] and label [H, W] shapes."""
    meta, chunk, n = building["meta"], building["chunk"], len(dataset)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backbone = backbone.to(device).eval()
    def featurize(images):  # [B, C, h, w], or [B, 2, C, h, w]: the TTA's forward of [images; flips], as it runs it
        if not meta.get("flip"):
            return backbone(images)
        return torch.stack(flip_features(backbone, images, meta["precision"]).chunk(2), dim=1)

    with torch.no_grad(), autocast(device, meta["precision"]):
        probe = dataset[0]
        shapes = list(featurize(probe["img"][None].to(device)).shape[1:]), list(probe["label"].shape)
    todo = [c for c in range(math.ceil(n / chunk))
            if any(chunk_problem(folder / _chunk_name(kind, c), (min(chunk, n - c * chunk), *shape), dtype)
                   for kind, shape, dtype in (("feats", shapes[0], meta["dtype"]), ("labels", shapes[1], "uint8")))]
    bar = tqdm(total=sum(min(chunk, n - c * chunk) for c in todo), desc="backbone features", unit="item")
    for c in todo:
        part = Subset(dataset, range(c * chunk, min(n, (c + 1) * chunk)))
        feats = np.empty((len(part), *shapes[0]), meta["dtype"])  # one chunk in RAM, in the stored dtype
        labels = np.empty((len(part), *shapes[1]), np.uint8)
        loader = DataLoader(part, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda")
        done = 0
        with torch.no_grad(), autocast(device, meta["precision"]):
            for batch in loader:
                rows = slice(done, done + len(batch["img"]))
                feats[rows] = featurize(batch["img"].to(device, non_blocking=True)).float().cpu().numpy()
                labels[rows] = _label_bytes(batch["label"], dataset).numpy()
                done = rows.stop
                bar.update(len(batch["img"]))
        for kind, array in (("labels", labels), ("feats", feats)):
            with atomic_write(folder / _chunk_name(kind, c), "wb", durable=False) as f:
                np.save(f, array)
    bar.close()
    return shapes


def _label_bytes(label: torch.Tensor, dataset) -> torch.Tensor:
    """Labels as uint8 label + 1 (0 unlabelled), the five-crop convention; more than 254 classes do not fit."""
    if label.numel() and int(label.max()) > 254:
        raise StegoError(f"{type(dataset).__name__}: a label value {int(label.max())} does not fit the feature "
                         f"store's uint8 labels (at most 254 classes); train from images (data.features=images)")
    return (label + 1).to(torch.uint8)


def add_cli(data_subparsers):
    """Register `features` (under `stego data`): build the feature store of one dataset split."""
    p = data_subparsers.add_parser(
        "features", help="cache the frozen backbone's patch features of every item of a split",
        description="Run the frozen backbone once over every image (or five-crop) of a split and keep its patch "
                    "features and labels as chunked memory-mapped .npy files in ROOT/features/<name>/, which "
                    "training with data.features=cached reads instead of running the backbone. Training builds the "
                    "store on first use; this command builds it ahead (e.g. on a GPU node). Resumable: a killed "
                    "run continues where it stopped; a valid store already there is kept.")
    add_split_arguments(p, "the store goes to ROOT/features/", "cache")
    p.add_argument("--dtype", choices=FEATURE_DTYPES, default="float16",
                   help="stored value type (data.features_dtype; default float16, half the size)")
    p.add_argument("--flip", action="store_true",
                   help="also store each image's horizontal flip (evaluation's TTA: what `stego eval` reads with "
                        "data.features=cached; use with --split val --res <eval.res>)")
    p.add_argument("--chunk", type=int, default=512,
                   help="items per chunk file (one chunk is held in RAM while it is computed; default 512)")
    p.add_argument("--force", action="store_true", help="rebuild even if a store exists")
    p.set_defaults(func=run_features)
    return p


def run_features(args):
    """The `stego data features` command: build (or keep) the store of the split named in `args`; exit code 0."""
    from stego.backbones import build_backbone
    from stego.data.datasets import build_dataset

    spec = FeatureSpec(TableSpec(str(args.root), args.backbone, args.weights, args.dataset, args.split, args.crop,
                                 args.res, args.crop_ratio, args.seed), args.dtype, args.precision, args.flip)
    dataset = build_dataset(args.dataset, args.root, args.split, args.res, crop=args.crop == "five",
                            crop_ratio=args.crop_ratio)
    meta = spec.meta()
    if (spec.folder / INDEX).exists() and not args.force:  # build the backbone only when there is work for it
        store = FeatureStore.open(spec.folder, store_expect(meta, dataset), args.root)
    else:
        device = pick_device(args.device or "auto")
        set_tf32(device, args.precision)
        store = build_store(build_backbone(args.backbone, weights=args.weights, seed=args.seed), dataset,
                            spec.folder, meta, root=args.root, batch_size=args.batch_size, chunk=args.chunk,
                            device=device, workers=worker_count(args.workers), force=args.force)
    size = sum(f.stat().st_size for f in spec.folder.iterdir())
    print(f"{spec.folder}: {len(store)} items, features {tuple(store.index['shape'])} {args.dtype}, "
          f"{size / 2**30:.2f} GiB")
    return 0
