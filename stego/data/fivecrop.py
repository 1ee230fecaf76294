"""Five-crop a dataset split the way the STEGO release did, resumably and in parallel.

Crop k of source image i (k = top-left, top-right, bottom-left, bottom-right, centre: the order and centre
rounding of torchvision's `five_crop`) has size (⌊H·r⌋, ⌊W·r⌋) and is stored as img/<split>/<5i+k>.jpg
(JPEG quality 75) and label/<split>/<5i+k>.png (label + 1 as uint8, so ignore = -1 is stored as 0).
Every file is written atomically, so a crop whose two files exist is finished and a re-run skips it.
"""
import contextlib
import functools
import logging
import multiprocessing
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from stego.data.commands import fivecrop_command
from stego.data.datasets import DATASETS, build_dataset, cropped_dir
from stego.errors import StegoError
from stego.io import atomic_save_json, atomic_write, read_json
from stego.runtime import worker_count

log = logging.getLogger(__name__)

JPEG_QUALITY = 75
BAD_INPUT = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
"""What a corrupt or mismatched source file raises (StegoError is a ValueError); --skip-bad records these."""


def crop_boxes(height, width, crop_ratio=0.5):
    """(top, left, h, w) of the five crops, in torchvision `five_crop` order with its centre rounding."""
    ch, cw = int(height * crop_ratio), int(width * crop_ratio)
    if not (0 < ch <= height and 0 < cw <= width):
        raise StegoError(f"five-crop: ratio {crop_ratio} of a {height}x{width} image gives a {ch}x{cw} crop; "
                         f"use a ratio in (0, 1] and images of at least 2x2 pixels")
    top, left = int(round((height - ch) / 2.0)), int(round((width - cw) / 2.0))
    return [(0, 0, ch, cw), (0, width - cw, ch, cw), (height - ch, 0, ch, cw),
            (height - ch, width - cw, ch, cw), (top, left, ch, cw)]


def crop_files(out_dir, split, index):
    """The (image, label) files of crop `index` (= 5i + k) of `split` under `out_dir`."""
    out_dir = Path(out_dir)
    return out_dir / "img" / split / f"{index}.jpg", out_dir / "label" / split / f"{index}.png"


def encode_label(label, shape, where):
    """Label array (-1 ignore) → uint8 label + 1; None (an unlabelled split) → all ignore."""
    if label is None:
        return np.zeros(shape, np.uint8)
    label = np.asarray(label)
    if label.shape != shape:
        raise StegoError(f"{where}: label is {label.shape[0]}x{label.shape[1]} but the image is "
                         f"{shape[0]}x{shape[1]}; the label file does not belong to this image")
    if label.size and (label.min() < -1 or label.max() > 254):
        raise StegoError(f"{where}: label values span {label.min()}..{label.max()}, outside -1..254; "
                         f"check the dataset's label mapping")
    return (label.astype(np.int64) + 1).astype(np.uint8)


@dataclass
class FiveCropSummary:
    """What one five-crop run found and did."""

    out_dir: Path
    split: str
    n_images: int
    n_done_before: int
    n_cropped: int = 0
    n_files_written: int = 0
    bad: list = field(default_factory=list)
    """(source index, reason) of the images skipped with --skip-bad; index None: dropped by the reader."""


class _Cropper:
    """Crops source images into the output folder; one per process (the source is built in the process)."""

    def __init__(self, make_source, out_dir, split, crop_ratio):
        self.source = make_source()
        self.out_dir, self.split, self.crop_ratio = Path(out_dir), split, crop_ratio

    def __call__(self, i):
        """Write the missing crops of source image i; return (i, files written, reason it is bad or None)."""
        where = str(self.source.path(i))
        try:
            image, label = self.source.load(i)
            pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
            encoded = encode_label(label, pixels.shape[:2], where)
            boxes = crop_boxes(*pixels.shape[:2], self.crop_ratio)
        except BAD_INPUT as exc:
            reason = " ".join(str(exc).split())
            return i, 0, reason if hasattr(exc, "path") else f"{where}: {reason}"
        written = 0
        for k, (top, left, h, w) in enumerate(boxes):
            img_file, lbl_file = crop_files(self.out_dir, self.split, 5 * i + k)
            if not img_file.exists():
                _save(pixels[top:top + h, left:left + w], img_file, format="JPEG", quality=JPEG_QUALITY)
                written += 1
            if not lbl_file.exists():
                _save(encoded[top:top + h, left:left + w], lbl_file, format="PNG")
                written += 1
        return i, written, None


def _save(array, path, **params):
    with atomic_write(path, "wb", durable=False) as f:
        Image.fromarray(np.ascontiguousarray(array)).save(f, **params)


_WORKER = None


def _init_worker(*args):
    """A pool worker: Ctrl-C is the parent's to handle (it stops the pool), so no traceback per worker."""
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER = _Cropper(*args)


def _work(i):
    return _WORKER(i)


def _pending(out_dir, split, n):
    """Source indices with at least one of their ten crop files missing (stray temp files do not count)."""
    img_dir, lbl_dir = (Path(out_dir) / sub / split for sub in ("img", "label"))
    have_img, have_lbl = set(os.listdir(img_dir)), set(os.listdir(lbl_dir))
    return [i for i in range(n)
            if not all(f"{5 * i + k}.jpg" in have_img and f"{5 * i + k}.png" in have_lbl for k in range(5))]


MANIFEST = "sources_{split}.json"
"""What a split's crops were made from: each source image and label, its size and modification time."""
LEGACY_MANIFEST = "sources_{split}.txt"
"""The older manifest: source paths only."""
MANIFEST_FORMAT = "stego-fivecrop-sources/2"


def _stat(path) -> list:
    try:
        st = os.stat(path)
    except OSError:
        return [None, None]
    return [st.st_size, st.st_mtime_ns]


def source_entries(source, out_dir) -> list:
    """[image, size, mtime_ns, label, size, mtime_ns] per source item, paths relative to `out_dir` (so a data
    root moved with its crops still matches); label None for unlabelled items."""
    entries = []
    for i in range(len(source)):
        image = source.path(i)
        label = source.label_path(i) if hasattr(source, "label_path") else None
        label_entry = [None, None, None] if label is None else [os.path.relpath(label, out_dir), *_stat(label)]
        entries.append([os.path.relpath(image, out_dir), *_stat(image), *label_entry])
    return entries


def _differences(recorded: list, now: list, path: Path, rebuild: str) -> str | None:
    """Why crops made from `recorded` sources do not belong to `now`'s, or None when they do."""
    names = [(e[0], e[3]) for e in recorded]
    if names != [(e[0], e[3]) for e in now]:
        j = next((j for j, (a, b) in enumerate(zip(names, now)) if a != (b[0], b[3])), min(len(names), len(now)))
        return (f"{path}: these crops came from another list of source images ({len(recorded)} then, {len(now)} now, "
                f"first difference at index {j}); crop into another --out-root, or redo them: `{rebuild}`")
    changed = [(old, new) for old, new in zip(recorded, now) if old != new]
    if not changed:
        return None
    old, new = changed[0]
    which = old[0] if old[1:3] != new[1:3] else old[3]
    return (f"{path}: {len(changed)} source file(s) changed since they were cropped (first: {which}); the crops "
            f"are stale: redo them with `{rebuild}`")


def _check_manifest(out_dir: Path, split: str, entries: list, rebuild: str) -> None:
    """Crops are found by index, so a re-run must see the sources they were made from: record them, or compare."""
    path = out_dir / MANIFEST.format(split=split)
    legacy = out_dir / LEGACY_MANIFEST.format(split=split)
    if path.exists():
        problem = _differences(read_json(path)["sources"], entries, path, rebuild)
        if problem:
            raise StegoError(problem)
        return
    if legacy.exists():
        recorded = legacy.read_bytes().decode("utf-8", "surrogateescape").splitlines()
        if recorded != [e[0] for e in entries]:
            raise StegoError(_differences([[r, None, None, None] for r in recorded],
                                          [[e[0], None, None, None] for e in entries], legacy, rebuild))
        log.warning("%s predates source fingerprints: whether its sources changed cannot be told; they are "
                    "recorded as they are now (redo the crops with `%s` to be sure)", legacy, rebuild)
    atomic_save_json({"format": MANIFEST_FORMAT, "sources": entries}, path)
    legacy.unlink(missing_ok=True)


def check_crops_current(out_dir, split: str, rebuild: str) -> None:
    """Refuse crops whose source files changed since they were made; `rebuild` is the command that redoes them."""
    out_dir = Path(out_dir)
    path = out_dir / MANIFEST.format(split=split)
    if path.exists():
        recorded = read_json(path)["sources"]
        problem = _differences(recorded, [_current(out_dir, entry) for entry in recorded], path, rebuild)
        if problem:
            raise StegoError(problem)


def _current(out_dir: Path, entry: list) -> list:
    """A manifest entry with the sizes and times its files have now; a file that is gone keeps its recorded
    values (the originals may be deleted once cropped)."""
    out = list(entry)
    for at in (0, 3):  # the image, then the label
        if out[at] is not None and out[at + 1] is not None:
            now = _stat(out_dir / out[at])
            if now[0] is not None:
                out[at + 1:at + 3] = now
    return out


def _remove_temps(out_dir: Path, split: str) -> None:
    """Delete temp files (atomic writes cut short when a worker was killed): never valid outputs."""
    for sub in ("img", "label"):
        for tmp in (out_dir / sub / split).glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def _clear(out_dir: Path, split: str) -> None:
    """--force: remove a split's crops, manifests and report, so it is cropped anew."""
    for sub in ("img", "label"):
        shutil.rmtree(out_dir / sub / split, ignore_errors=True)
    for name in (MANIFEST, LEGACY_MANIFEST, "skipped_{split}.txt"):
        (out_dir / name.format(split=split)).unlink(missing_ok=True)


def crop_split(make_source, out_dir, split, crop_ratio=0.5, workers=1, skip_bad=False, rebuild=None,
               force=False):
    """Five-crop every image of the source made by `make_source()` (a picklable factory) into `out_dir`.

    Resumable: source images whose ten files exist are skipped, provided the sources are those recorded in
    out_dir/sources_<split>.json (same files, sizes and modification times); otherwise a one-line error gives
    `rebuild` (the command that redoes them; `force` does). A bad source image raises a one-line StegoError, or
    with skip_bad is listed in out_dir/skipped_<split>.txt (with entries the reader itself dropped) and the run
    goes on. Ctrl-C stops the workers and leaves no partial file; a re-run continues.
    """
    out_dir = Path(out_dir)
    rebuild = rebuild or f"delete {out_dir} and crop again"
    if force:
        _clear(out_dir, split)
    for sub in ("img", "label"):
        (out_dir / sub / split).mkdir(parents=True, exist_ok=True)
    _remove_temps(out_dir, split)
    source = make_source()
    n = len(source)
    _check_manifest(out_dir, split, source_entries(source, out_dir), rebuild)
    pending = _pending(out_dir, split, n)
    summary = FiveCropSummary(out_dir, split, n, n - len(pending))
    summary.bad = [(None, f"{path}: {reason}") for path, reason in getattr(source, "skipped", [])]
    log.info("five-crop %s/%s: %d of %d images already done", out_dir, split, summary.n_done_before, n)
    args = (make_source, out_dir, split, crop_ratio)
    workers = max(1, min(workers, len(pending)))
    try:
        with _results(args, pending, workers) as results:
            for i, written, reason in tqdm(results, total=len(pending), desc=f"five-crop {split}", unit="img"):
                if reason is not None and not skip_bad:
                    hint = "" if "--skip-bad" in reason else "; fix or remove the file, or re-run with --skip-bad"
                    raise StegoError(reason + hint)
                if reason is not None:
                    summary.bad.append((i, reason))
                else:
                    summary.n_cropped += 1
                summary.n_files_written += written
    except KeyboardInterrupt:
        _remove_temps(out_dir, split)
        log.warning("five-crop %s interrupted: %d of %d images done; run the same command again to continue",
                    split, summary.n_done_before + summary.n_cropped, n)
        raise
    summary.bad.sort(key=lambda b: -1 if b[0] is None else b[0])
    _write_report(out_dir / f"skipped_{split}.txt", summary.bad)
    return summary


@contextlib.contextmanager
def _results(args, pending, workers):
    """Yield an iterator of crop results, computed here (workers == 1) or by a pool that is always closed."""
    if workers == 1:
        yield map(_Cropper(*args), pending)
        return
    pool = multiprocessing.Pool(workers, initializer=_init_worker, initargs=args)
    try:
        yield pool.imap_unordered(_work, pending, chunksize=max(1, min(16, len(pending) // (8 * workers))))
    finally:
        pool.terminate()
        pool.join()


def _write_report(path, bad):
    """List the skipped images as 'index<TAB>reason' ('-' for entries the reader dropped), or remove a stale
    list when none were bad."""
    if not bad:
        path.unlink(missing_ok=True)
        return
    with atomic_write(path, "w") as f:
        f.writelines(f"{'-' if i is None else i}\t{reason}\n" for i, reason in bad)
    log.warning("five-crop skipped %d bad images; see %s", len(bad), path)


def five_crop(dataset_name, root, split, crop_ratio=0.5, workers=None, skip_bad=False, out_root=None, force=False,
              **reader_options):
    """Five-crop split `split` of dataset `dataset_name` under `root` into cropped_dir(out_root or root, ...).

    reader_options go to the reader (list_name for cocostuff27, n_classes for imagefolder); workers None: one per
    CPU this process may use.
    """
    out_dir = cropped_dir(out_root if out_root is not None else root, dataset_name, crop_ratio)
    make_source = functools.partial(build_dataset, dataset_name, root, split, skip_bad=skip_bad, **reader_options)
    workers = workers if workers is not None else worker_count(-1, "crf")
    rebuild = fivecrop_command(dataset_name, root, split, crop_ratio, force=True,
                               n_classes=reader_options.get("n_classes"))
    if out_root is not None:
        rebuild += f" --out-root {out_root}"
    return crop_split(make_source, out_dir, split, crop_ratio, workers, skip_bad, rebuild, force)


def add_cli(data_subparsers):
    """Register `fivecrop` (under `stego data`): five-crop one split of a dataset at full resolution."""
    p = data_subparsers.add_parser(
        "fivecrop", help="five-crop a dataset split for training (resumable, parallel)",
        description="Cut every image of one split (and its label) into the five crops STEGO trains on: four "
                    "corners and the centre, each CROP_RATIO of the image's sides, written under "
                    "ROOT/cropped/<name>_five_crop_<ratio>/. Finished crops are kept on a re-run; crops whose "
                    "source images changed are refused (redo them with --force).")
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    p.add_argument("--root", required=True, type=Path, help="data root; crops go to ROOT/cropped/")
    p.add_argument("--split", required=True, help="split to crop (train, val, ...)")
    p.add_argument("--crop-ratio", type=float, default=0.5, help="crop side as a fraction of the image's")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: one per CPU this process may use)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable or mismatched images, listing them in skipped_<split>.txt")
    p.add_argument("--out-root", type=Path, default=None, help="write under this root instead of --root")
    p.add_argument("--force", action="store_true", help="delete this split's crops and crop it again")
    p.add_argument("--list-name", help="cocostuff27: curated list file (default: the release's per split)")
    p.add_argument("--n-classes", type=int, help="imagefolder: number of classes when there is no classes.txt")
    p.set_defaults(func=run_fivecrop)
    return p


def run_fivecrop(args):
    """The `stego data fivecrop` command; exit code 0 (bad images are an error unless --skip-bad)."""
    options = {k: v for k, v in (("list_name", args.list_name), ("n_classes", args.n_classes)) if v is not None}
    s = five_crop(args.dataset, args.root, args.split, args.crop_ratio, args.workers, args.skip_bad,
                  args.out_root, args.force, **options)
    print(f"{s.out_dir}: {s.split}: {s.n_images} images, {s.n_done_before} already done, {s.n_cropped} "
          f"cropped, {len(s.bad)} skipped as bad" + (f" (see skipped_{s.split}.txt)" if s.bad else ""))
    return 0
