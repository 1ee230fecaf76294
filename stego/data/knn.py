"""KNN mining: the per-image nearest neighbours that STEGO's KNN loss term draws its partners from.

Each image (or five-crop crop) at 224 goes through the frozen backbone; its feature map is global-average
pooled and L2-normalised, and the cosine top-k (default 30) within the same split is kept, rank 0 being the
image itself. The table is saved with metadata (backbone, weights, dataset, split, crops, res, k, n) and
loading it for anything else is an error.

Dropout: the release computed these features through its head-less featurizer while the module was in
training mode, so its Dropout2d(p=0.1) randomly zeroed ~10% of the channels before pooling. Here the
backbone is frozen in eval mode and no dropout is applied: the table is deterministic (metadata
`dropout: false`).

Memory: the release multiplied N/16 query rows by all N keys at once (N²/16 floats; 15 GB for COCO
five-crop's ~250k crops). `topk_cosine` tiles both sides and keeps a running top-k per query, so its
working memory depends on the tile size, not on N.
"""
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from stego.data.commands import knn_command
from stego.data.files import file_fingerprint
from stego.errors import MissingFileError, StegoError
from stego.io import atomic_write
from stego.config import PRECISIONS
from stego.runtime import autocast, pick_device, set_tf32, worker_count

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""2: tables record the fingerprint of the images they were mined from (`source`)."""
CROPS = ("none", "five")
CHECKED_KEYS = ("backbone", "weights", "dataset", "split", "crops", "crop_ratio", "res", "n", "source", "dropout")


def topk_cosine(feats, k, chunk=1024, key_chunk=16384, device=None):
    """Cosine top-k of every row of `feats` [N, D] against all rows; returns (indices int64 [N, k], sims
    float32 [N, k]) on the CPU, best first, rank 0 always the row itself (even among exact duplicates).

    Rows are L2-normalised here. Queries go in blocks of `chunk` rows and keys in blocks of `key_chunk`
    rows (None: all keys at once); each tile's top-k is merged into a running top-k per query. Peak working
    memory, on `device` (default: feats' device), in bytes:
        4·N·D (the normalised copy) + 4·chunk·key_chunk (one similarity tile)
        + 12·chunk·3k (tile top-k and merge buffers) + 12·N·k (the result),
    e.g. 154 MB + 67 MB + 1 MB + 18 MB for N = 50,000, D = 768, k = 30 with the defaults; never N².
    Ties between equal similarities (other than self) are ordered arbitrarily.
    """
    n = feats.shape[0]
    if feats.dim() != 2 or n == 0:
        raise StegoError(f"topk_cosine needs a non-empty [N, D] feature matrix, got shape {tuple(feats.shape)}")
    if not 1 <= k <= n:
        raise StegoError(f"KNN k={k} must be between 1 and the number of images ({n}); lower --k")
    if chunk < 1 or (key_chunk is not None and key_chunk < 1):
        raise StegoError(f"KNN chunk sizes must be positive, got chunk={chunk}, key_chunk={key_chunk}")
    device = torch.device(device) if device is not None else feats.device
    feats = F.normalize(feats.to(device, torch.float32), dim=1)
    if not torch.isfinite(feats.sum()):  # normalised entries are in [-1, 1]: the sum is finite iff all are
        raise StegoError("KNN features contain NaN or inf; check the backbone weights and the input images")
    key_chunk = n if key_chunk is None else min(key_chunk, n)
    indices = torch.empty(n, k, dtype=torch.int64)
    sims = torch.empty(n, k, dtype=torch.float32)
    for q0 in tqdm(range(0, n, chunk), desc="knn top-k", unit="chunk"):
        top_v, top_i = _query_block_topk(feats, q0, min(q0 + chunk, n), k, key_chunk)
        indices[q0:q0 + len(top_i)] = top_i.cpu()
        sims[q0:q0 + len(top_v)] = top_v.cpu()
    return indices, sims


def _query_block_topk(feats, q0, q1, k, key_chunk):
    """Top-k over all keys for queries q0..q1, one key tile at a time; the self entry is set to +inf so it
    ranks first, then given back its true similarity."""
    n = feats.shape[0]
    queries = feats[q0:q1]
    best_v = best_i = None
    for k0 in range(0, n, key_chunk):
        k1 = min(k0 + key_chunk, n)
        tile = queries @ feats[k0:k1].T
        lo, hi = max(q0, k0), min(q1, k1)
        if lo < hi:
            own = torch.arange(lo, hi, device=feats.device)
            tile[own - q0, own - k0] = math.inf
        v, i = tile.topk(min(k, k1 - k0), dim=1)
        del tile
        i += k0
        if best_v is not None:
            merged = torch.cat([best_v, v], 1)
            v, pos = merged.topk(min(k, merged.shape[1]), dim=1)
            i = torch.cat([best_i, i], 1).gather(1, pos)
        best_v, best_i = v, i
    best_v[:, 0] = (queries * queries).sum(1)
    return best_v, best_i


def embed_dataset(backbone, dataset, batch_size=64, device=None, workers=0, *, precision):
    """Global-average-pooled, L2-normalised backbone features of every item of `dataset`, float32 [N, C] on
    the CPU, in dataset order. The backbone runs in `precision` (train.precision: 'fp32', or 'bf16' autocast);
    pooling and normalisation stay fp32. Rows go into one [N, C] block allocated once: keeping a small tensor per
    batch, each allocated between that batch's large temporaries, pins glibc's heap so it cannot shrink (on the CPU
    1.64 GB instead of 1.01 over 400 COCO batches, benchmarks/perf/knn_embed_memory.py; once 12.9 GB at 248,145)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backbone = backbone.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    n = len(dataset)
    if n == 0:
        raise StegoError(f"{type(dataset).__name__} has no items to embed; check the split's files and lists")
    out, seen = None, 0
    with torch.no_grad(), autocast(device, precision):
        for batch in tqdm(loader, desc="knn features", unit="batch"):
            img = batch["img"]
            if "index" in batch:
                _check_order(dataset, batch["index"], seen)
            fmap = backbone(img.to(device, non_blocking=True)).float()
            pooled = F.normalize(fmap.mean((2, 3)), dim=1)
            if out is None:  # one block for all rows, allocated once (see the docstring)
                out = torch.empty(n, pooled.shape[1], dtype=torch.float32)
            seen += len(img)
            if seen > n:
                break
            out[seen - len(img):seen] = pooled
    if seen != n:
        got = f"more than {n}" if seen > n else str(seen)
        raise StegoError(f"{type(dataset).__name__} gave {got} items but has length {n}; KNN rows must be the "
                         "dataset's items: fix its __len__ or its files")
    return out


def _check_order(dataset, index, seen):
    """Table rows are dataset positions: an item reporting another index (a skipped bad file) is an error."""
    index = index.view(-1).cpu()
    wrong = (index != torch.arange(seen, seen + len(index))).nonzero()
    if len(wrong):
        pos = seen + int(wrong[0])
        where = dataset.path(pos) if hasattr(dataset, "path") else f"{type(dataset).__name__} item {pos}"
        raise StegoError(f"{where}: item {pos} came back as item {int(index[int(wrong[0])])} (a bad file skipped?); "
                         "KNN rows must match dataset positions: fix or remove the bad file and re-run")


def weights_id(weights):
    """A short identity of backbone weights for the table metadata: "random", a file name with the first
    16 hex digits of its sha256, or "state_dict:" with a hash of the tensors."""
    if isinstance(weights, dict):
        h = hashlib.sha256()
        _hash_state(h, weights)
        return f"state_dict:sha256:{h.hexdigest()[:16]}"
    if weights == "random":
        return "random"
    path = Path(weights)
    if not path.is_file():
        raise MissingFileError(f"backbone weights {path} not found; pass an existing file with --weights")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{path.name}:sha256:{h.hexdigest()[:16]}"


def _hash_state(h, obj):
    """Feed a (nested) state dict into hash `h`: keys in sorted order, tensors by their bytes."""
    if isinstance(obj, dict):
        for key in sorted(obj, key=str):
            h.update(str(key).encode())
            _hash_state(h, obj[key])
    elif isinstance(obj, torch.Tensor):
        h.update(f"{obj.dtype}{tuple(obj.shape)}".encode())
        h.update(obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    else:
        h.update(repr(obj).encode())


def knn_meta(backbone, weights, dataset, split, crops="none", res=224, crop_ratio=0.5, seed=0):
    """The metadata that identifies a KNN table (what it was made from), without k and n. `weights` as for
    `build_backbone`: None stands for the official file, which is located and hashed; "random" is the init drawn
    after torch.manual_seed(seed), recorded as "random:seed<k>" for seeds other than 0. Five-crop tables record
    their crop ratio (crops of another ratio are other images, in the same number)."""
    if crops not in CROPS:
        raise StegoError(f"unknown crop type {crops!r}; use one of {', '.join(CROPS)}")
    if weights is None:
        from stego.backbones import resolve_weight_file
        weights = resolve_weight_file(backbone)
    tag = _seed_tag(weights, seed)
    meta = dict(backbone=backbone, weights=f"random:{tag}" if tag else weights_id(weights), dataset=dataset,
                split=split, crops=crops, res=int(res))
    if crops == "five":
        meta["crop_ratio"] = float(crop_ratio)
    return meta


def _seed_tag(weights, seed) -> str:
    """"seed<k>" for a random init drawn from a seed other than 0 (another backbone than seed 0's), else ""."""
    return f"seed{int(seed)}" if isinstance(weights, str) and weights == "random" and seed else ""


def table_path(root, backbone, dataset, split, crops="none", res=224, crop_ratio=0.5, weights=None, seed=0):
    """Where a KNN table lives by default: <root>/nns/nns_<backbone>_<dataset>_<split>_<crops>_<res>.pt (the
    release's name, with .npz there); five-crops of a ratio other than the release's 0.5 say it: five0.3; a
    random init (`weights` "random") drawn from a seed other than 0 is another backbone: _seed3."""
    if crops == "five" and float(crop_ratio) != 0.5:
        crops = f"five{float(crop_ratio):g}"
    tag = _seed_tag(weights, seed)
    return Path(root) / "nns" / f"nns_{backbone}_{dataset}_{split}_{crops}_{res}{'_' + tag if tag else ''}.pt"


@dataclass(frozen=True)
class TableSpec:
    """A split's KNN table as training and `stego data knn` both name it: what it is mined from (its metadata)
    and where it lives (under the data root)."""

    root: str
    backbone: str
    weights: str | None
    dataset: str
    split: str
    crops: str = "none"
    res: int = 224
    crop_ratio: float = 0.5
    seed: int = 0

    @property
    def path(self) -> Path:
        return table_path(self.root, self.backbone, self.dataset, self.split, self.crops, self.res, self.crop_ratio,
                          self.weights, self.seed)

    def meta(self) -> dict:
        """The metadata a table for this spec records (the official weights are located and hashed)."""
        return knn_meta(self.backbone, self.weights or None, self.dataset, self.split, self.crops, self.res,
                        self.crop_ratio, self.seed)


def _remine_hint(meta, root, force=True):
    """What to run about a missing or unusable table, for error messages."""
    if not meta or "dataset" not in meta:
        return "mine it with stego data knn (its options: `stego data knn --help`, docs/data.md)"
    custom = ("" if str(meta.get("weights", "")).startswith("random")
              else " (plus --weights PATH if model.weights is set)")
    return f"{'re-run' if force else 'mine it with'} `{knn_command(meta, root, force)}`{custom}"


def source_fingerprint(dataset) -> str:
    """'<n>:<hash>' of the dataset's image files (name, size, modification time, in order): a table mined from
    other or rewritten images no longer matches. A dataset without files (held in memory) is '<n>:in-memory'."""
    if not hasattr(dataset, "path"):
        return f"{len(dataset)}:in-memory"
    return file_fingerprint([dataset.path(i) for i in range(len(dataset))])


@dataclass
class KnnTable:
    """Neighbour indices [N, k] (rank 0 = self), their cosine similarities [N, k], and what made them."""

    indices: torch.Tensor
    sims: torch.Tensor
    meta: dict

    @property
    def n(self):
        return self.indices.shape[0]

    @property
    def k(self):
        return self.indices.shape[1]

    def save(self, path):
        """Write the table atomically as a torch file of plain tensors and a plain dict (weights_only-safe)."""
        with atomic_write(path, "wb") as f:
            torch.save(dict(indices=self.indices.contiguous(), sims=self.sims.contiguous(), meta=self.meta), f)

    @classmethod
    def load(cls, path, expect=None, min_k=None, root="DATA_ROOT"):
        """Read and check a table; every key of `expect` (e.g. dataset, split, n, source) must match its metadata
        and it must keep at least `min_k` neighbours. `root` (the data root) goes into the re-mine hints."""
        path = Path(path)
        wanted = dict(expect or {}, **({"k": min_k} if min_k else {}))
        hint = _remine_hint(wanted, root)
        if not path.is_file():
            raise MissingFileError(f"KNN table {path} not found; {_remine_hint(wanted, root, force=False)}")
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
            table = cls(raw["indices"], raw["sims"], dict(raw["meta"]))
        except Exception as e:
            raise StegoError(f"KNN table {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0]}); "
                             f"{hint}") from None
        table._check(path, hint)
        found = table.meta.get("format")
        if found != FORMAT_VERSION:
            raise StegoError(f"KNN table {path} has format {found!r}, this version reads {FORMAT_VERSION}; {hint}")
        diff = [f"{key} expected {value!r} found {table.meta.get(key)!r}"
                for key, value in (expect or {}).items() if table.meta.get(key) != value]
        if diff:
            what = ("other or changed images" if [d for d in diff if d.startswith("source")] == diff
                    else "something else")
            raise StegoError(f"KNN table {path} was made from {what} ({'; '.join(diff)}); {hint}")
        if min_k and table.k < min_k:
            raise StegoError(f"KNN table {path} keeps {table.k} neighbours, fewer than the {min_k} needed "
                             f"(data.num_neighbors + 1); {hint}")
        return table

    def _check(self, path, hint):
        """Structural integrity: shapes, dtypes, index range, self at rank 0, metadata consistent."""
        idx, sims, meta = self.indices, self.sims, self.meta
        problem = None
        if idx.dtype != torch.int64 or sims.dtype != torch.float32 or idx.dim() != 2 or idx.shape != sims.shape:
            problem = f"indices {idx.dtype} {tuple(idx.shape)} / sims {sims.dtype} {tuple(sims.shape)}"
        elif meta.get("n") != idx.shape[0] or meta.get("k") != idx.shape[1]:
            problem = f"metadata n={meta.get('n')}, k={meta.get('k')} but table shape {tuple(idx.shape)}"
        elif idx.numel() and (idx.min() < 0 or idx.max() >= idx.shape[0]):
            problem = "neighbour indices out of range"
        elif not torch.equal(idx[:, 0], torch.arange(idx.shape[0])):
            problem = "rank 0 is not the image itself"
        if problem:
            raise StegoError(f"KNN table {path} is corrupt ({problem}); {hint}")


def table_expect(meta, n, source):
    """Everything a table for `meta` (from `knn_meta`) over n images with fingerprint `source` must record."""
    return dict(meta, n=n, source=source, dropout=False)


def existing_table(path, expect, min_k, root, precision):
    """The valid table already at `path` (None if there is no file); one made for something else is an error, one
    mined in another precision than `precision` serves with a warning."""
    if not Path(path).exists():
        return None
    table = KnnTable.load(path, expect, min_k, root)
    log.info("KNN table %s already exists and matches its images (k=%d); not re-mining (use --force to redo it)",
             path, table.k)
    if table.meta.get("precision") != precision:
        log.warning("KNN table %s was mined in %s, not in this run's %s; re-mine it with `%s --precision %s` for "
                    "neighbours of this precision", path, table.meta.get("precision"), precision,
                    knn_command(table.meta, root), precision)
    return table


def mine_knn(backbone, dataset, path, meta, k=30, batch_size=64, chunk=1024, key_chunk=16384, device=None,
             workers=0, *, precision, force=False, min_k=None, root="DATA_ROOT"):
    """Embed `dataset` in `precision`, mine its cosine top-k and save the table at `path` with `meta` (from
    `knn_meta`; the table records the precision).
    A valid table already at `path` with at least `min_k` (default k) neighbours is returned as is; one made
    for something else, or from other images, is an error unless `force`."""
    expect = table_expect(meta, len(dataset), source_fingerprint(dataset))
    path = Path(path)
    table = None if force else existing_table(path, expect, min_k or k, root, precision)
    if table is not None:
        return table
    if not 1 <= k <= len(dataset):
        raise StegoError(f"KNN k={k} must be between 1 and the number of images ({len(dataset)}); lower --k "
                         f"(data.knn_k)")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    start = time.perf_counter()
    feats = embed_dataset(backbone, dataset, batch_size=batch_size, device=device, workers=workers,
                          precision=precision)
    log.info("KNN: top-%d of %d images by cosine (%d-d features)", k, len(dataset), feats.shape[1])
    indices, sims = topk_cosine(feats, k, chunk=chunk, key_chunk=key_chunk, device=device)
    table = KnnTable(indices, sims, dict(expect, k=k, format=FORMAT_VERSION, precision=precision))
    table.save(path)
    log.info("mined KNN table %s (n=%d, k=%d) in %.1f s", path, table.n, table.k, time.perf_counter() - start)
    return table


def add_split_arguments(p, goes_to: str, verb: str) -> None:
    """The options naming a split and the backbone run over it, shared by `stego data knn` and `stego data
    features`: dataset, root, split, backbone, weights, seed, res, crop, batch size, workers, device, precision."""
    p.add_argument("--dataset", required=True, help="dataset name (cocostuff27, cityscapes27, potsdam3, ...)")
    p.add_argument("--root", required=True, type=Path, help=f"data root; {goes_to}")
    p.add_argument("--split", required=True, help=f"split to {verb.split()[0]} (train, val, ...)")
    p.add_argument("--backbone", required=True, help="backbone name (dino_vitb8, dino_vits8, ...)")
    p.add_argument("--weights", default=None, help="weight file, or 'random' (default: the official file)")
    p.add_argument("--seed", type=int, default=0,
                   help="with --weights random: torch seed of the init (train.seed of the run that uses it)")
    p.add_argument("--res", type=int, default=224, help="image size fed to the backbone (default 224)")
    p.add_argument("--crop", choices=CROPS, default="none", help=f"{verb} five-crops or whole images")
    p.add_argument("--crop-ratio", type=float, default=0.5, help="five-crop ratio (data.crop_ratio; default 0.5)")
    p.add_argument("--batch-size", type=int, default=64, help="images per backbone forward")
    p.add_argument("--workers", type=int, default=-1,
                   help="data-loading worker processes (default -1: one per CPU this process may use, less one)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="backbone arithmetic: fp32 (default; TF32 off on CUDA) or bf16 autocast (train.precision)")


def add_cli(data_subparsers):
    """Register `knn` (under `stego data`): mine and save the KNN table of one dataset split."""
    p = data_subparsers.add_parser(
        "knn", help="mine the cosine top-k nearest-neighbour table of a split",
        description="Embed every image (or five-crop) of a split with a frozen backbone, global-average-pool and "
                    "L2-normalise the features, and keep each one's K most similar (rank 0: itself) in "
                    "ROOT/nns/. Training mines its table on first use; this command mines it ahead (e.g. on a GPU "
                    "node). A table already there is kept when it matches the images and keeps at least K.")
    add_split_arguments(p, "the table goes to ROOT/nns/", "mine over")
    p.add_argument("--k", type=int, default=30, help="neighbours kept per image, self included (default 30)")
    p.add_argument("--chunk", type=int, default=1024, help="query rows per similarity tile")
    p.add_argument("--key-chunk", type=int, default=16384, help="key rows per similarity tile")
    p.add_argument("--out", type=Path, default=None, help="table file (default ROOT/nns/nns_<...>.pt)")
    p.add_argument("--force", action="store_true", help="re-mine even if a table exists")
    p.set_defaults(func=run_knn)
    return p


def run_knn(args):
    """The `stego data knn` command: build the backbone and dataset named in `args`, mine and save their
    table (or keep the valid one already there); exit code 0."""
    from stego.backbones import build_backbone
    from stego.data.datasets import build_dataset

    spec = TableSpec(str(args.root), args.backbone, args.weights, args.dataset, args.split, args.crop, args.res,
                     args.crop_ratio, args.seed)
    meta = spec.meta()
    dataset = build_dataset(args.dataset, args.root, args.split, args.res, crop=args.crop == "five",
                            crop_ratio=args.crop_ratio)
    path = args.out or spec.path
    expect = table_expect(meta, len(dataset), source_fingerprint(dataset))
    table = None if args.force else existing_table(path, expect, args.k, args.root, args.precision)
    if table is None:  # build the backbone only when there is work for it
        backbone = build_backbone(args.backbone, weights=args.weights, seed=args.seed)
        device = pick_device(args.device or "auto")
        set_tf32(device, args.precision)
        table = mine_knn(backbone, dataset, path, meta, k=args.k,
                         batch_size=args.batch_size, chunk=args.chunk, key_chunk=args.key_chunk,
                         device=device, workers=worker_count(args.workers), precision=args.precision, force=True,
                         root=args.root)
    print(f"{path}: {table.n} images, k={table.k}")
    return 0

