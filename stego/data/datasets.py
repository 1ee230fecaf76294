"""Dataset readers: CocoStuff-27, Cityscapes-27, Potsdam-3, a plain image folder, and five-crop output.

The on-disk layouts (the authors' release's, so its folders work as they are) are documented in docs/data.md
("Layouts"): ROOT/cocostuff/, ROOT/cityscapes/, ROOT/potsdam/, ROOT/images/ (your own images), ROOT/cropped/.

Every reader returns labels as int64 with IGNORE (-1) for unlabelled pixels. Bad input (missing, corrupt or
truncated file, label out of range, image/label size mismatch, missing list entry, empty split) raises a
one-line StegoError naming the file. With `skip_bad=True`, missing entries are dropped when the dataset is
built, and files that fail to load are skipped when read (`try_load` returns None, `__getitem__` moves on to
the next good item); every skipped file is recorded in `skipped` as (path, reason) and `write_skip_report`
saves them as JSON. With a multi-worker DataLoader each worker keeps its own record; the warnings are logged.
"""
import inspect
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from stego.data import mappings
from stego.data.commands import check_command, download_hint, fivecrop_command
from stego.data.transforms import SegTransform, default_transform
from stego.data.files import (CorruptFileError, DataFileError, DirListing, EmptySplitError, Item, LabelRangeError,
                              MissingDataError, SizeMismatchError, only_valid_8bit, ranges_text, read_id_list,
                              read_label_png, read_mat, read_rgb, value_runs)
from stego.constants import IGNORE
from stego.errors import StegoError
from stego.io import atomic_save_json

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _unknown_split(name, split, known):
    return StegoError(f"unknown {name} split {split!r}; choose one of {', '.join(known)}")


class SegmentationDataset(Dataset):
    """A list of (image, label) files, read with checks and mapped to class ids; see the module docstring."""

    name = "dataset"
    n_classes = None
    class_names = None
    cropped = False
    get_it = "see the layouts in docs/data.md"
    repair = "replace it with an intact copy from the original download"
    relabel = None
    """The fix for label values outside the dataset's (None: `repair`)."""

    def __init__(self, items, split, *, lut, valid, root, transform=None, skip_bad=False, labels=True):
        self.split, self.root = split, root
        self.transform = transform if transform is not None else default_transform(split)
        self.skip_bad = skip_bad
        self.labels = labels
        """False: label files are never opened, not even looked for (label-free work such as stego tune-shifts)."""
        self._lut, self._valid = lut, valid
        self._invalid_runs = value_runs(~valid)
        classes, unlabelled = ranges_text(valid & (lut != IGNORE)), ranges_text(valid & (lut == IGNORE))
        self._allowed = f"{classes} (classes)" + (f" and {unlabelled} (unlabelled)" if unlabelled else "")
        self._skipped = {}
        self.items = self._resolve(items)
        if not self.items:
            source = items[0].source if items else "?"
            raise EmptySplitError(source, f"none of the {len(items)} entries of split {split!r} has its files",
                                  self.get_it, skipped=self.skipped)

    def _skip_hint(self):
        check = check_command(self.name, self.root, self.split, getattr(self, "crop_ratio", None) if self.cropped
                              else None)
        return f"`{check}` lists every such file (five-crop and data check can skip them with --skip-bad)"

    def _missing_fix(self):
        return f"{self.get_it}; {self._skip_hint()}"

    def _bad_fix(self):
        return f"{self.repair}; {self._skip_hint()}"

    def _resolve(self, items):
        listing, kept = DirListing(), []
        for item in items:
            label = item.label if self.labels else None
            if not listing.exists(item.image):
                self._fail(MissingDataError(item.image, f"image listed in {item.source} is missing",
                                            self._missing_fix()))
                continue
            if label is not None and not listing.exists(label):
                if item.label_required:
                    self._fail(MissingDataError(label, f"label of {item.image} is missing", self._missing_fix()))
                    continue
                label = None
            kept.append((item.image, label))
        return kept

    def _fail(self, exc):
        """Raise `exc`, or with skip_bad record its file as skipped."""
        if not self.skip_bad:
            raise exc
        if exc.path not in self._skipped:
            log.warning("skipping %s: %s", exc.path, exc.problem)
            self._skipped[exc.path] = exc.problem

    @property
    def skipped(self):
        """[(path, reason)] of files skipped so far (skip_bad only)."""
        return list(self._skipped.items())

    def __len__(self):
        return len(self.items)

    def path(self, i):
        """Image file of item i."""
        return Path(self.items[i][0])

    def label_path(self, i):
        """Label file of item i, or None when it is unlabelled."""
        label = self.items[i][1]
        return None if label is None else Path(label)

    def _read_image(self, path):
        return read_rgb(path, self._bad_fix(), self._missing_fix())

    def _read_label(self, path):
        return read_label_png(path, self._bad_fix(), self._missing_fix())

    def _map_label(self, raw, path):
        if raw.ndim != 2 or raw.size == 0 or raw.dtype.kind not in "iub":
            raise CorruptFileError(path, f"label must be a 2-D integer map, got shape {raw.shape} "
                                         f"dtype {raw.dtype}", self._bad_fix())
        raw = raw.astype(np.int64, copy=False)
        inside = (raw >= 0) & (raw <= 255)
        bad = ~inside
        bad[inside] = ~self._valid[raw[inside]]
        if bad.any():
            values = np.unique(raw[bad])
            shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
            raise LabelRangeError(path, f"holds label values {shown}, outside {self._allowed}",
                                  f"{self.relabel or self.repair}; {self._skip_hint()}")
        return self._lut[raw]

    def load(self, i, raw_8bit=False):
        """(PIL RGB image, int64 label [H,W] with -1 ignore, or None when unlabelled); bad files raise.

        raw_8bit: a 2-D uint8 label file holding only valid values comes back unmapped (uint8; its classes are
        `self._lut[label]`), so a transform can resize and crop it before mapping; other labels are mapped.
        """
        image_path, label_path = self.items[i]
        img = self._read_image(image_path)
        if label_path is None:
            return img, None
        raw = self._read_label(label_path)
        label = raw if raw_8bit and self._valid_8bit(raw) else self._map_label(raw, label_path)
        if label.shape != (img.height, img.width):
            raise SizeMismatchError(label_path, f"label is {label.shape[0]}x{label.shape[1]} (HxW) but its image "
                                                f"{image_path} is {img.height}x{img.width}", self._bad_fix())
        return img, label

    def _valid_8bit(self, raw):
        """True for a non-empty 2-D uint8 label whose every value is valid (else `_map_label` says what is wrong)."""
        return (raw.dtype == np.uint8 and raw.ndim == 2 and raw.size > 0
                and only_valid_8bit(raw, self._valid, self._invalid_runs))

    def try_load(self, i, raw_8bit=False):
        """`load(i, raw_8bit)`, or None for a bad file when skip_bad (the file is recorded in `skipped`)."""
        try:
            return self.load(i, raw_8bit)
        except (DataFileError, MissingDataError) as exc:
            self._fail(exc)
            return None

    def __getitem__(self, i):
        """dict(img=float32 [3,res,res], label=int64 [res,res], index=k) where k = i unless item i was skipped,
        in which case k is the next good item.

        With a SegTransform, valid 8-bit labels are mapped to classes after its resize and crop: nearest
        resizing only selects pixels, so the result is the same and only res² pixels are mapped, not H·W.
        """
        n = len(self)
        deferred = isinstance(self.transform, SegTransform)
        for step in range(n):
            k = (i + step) % n
            pair = self.try_load(k, raw_8bit=deferred)
            if pair is not None:
                img, label = pair
                if label is not None and label.dtype == np.uint8:  # left raw by load(raw_8bit=True)
                    img, label = self.transform(img, label, lut=self._lut)
                else:
                    img, label = self.transform(img, label)
                return dict(img=img, label=label, index=k)
        raise EmptySplitError(self.items[0][0], f"every file of split {self.split!r} failed to load",
                              self._bad_fix(), skipped=self.skipped)

    def write_skip_report(self, path):
        """Save the skipped files as JSON: {dataset, split, skipped: [{path, reason}]}."""
        atomic_save_json(dict(dataset=self.name, split=self.split,
                              skipped=[dict(path=p, reason=r) for p, r in self.skipped]), path)


class CocoStuff27(SegmentationDataset):
    """COCO-Stuff 164k with IIC's curated lists, fine labels mapped to the 27 coarse classes."""

    name = "cocostuff27"
    n_classes = 27
    class_names = mappings.COCO_27_NAMES
    manual = ("get COCO 2017 images (images.cocodataset.org/zips/{train,val}2017.zip), stuffthingmaps_trainval2017"
              ".zip (github.com/nightrome/cocostuff) and the curated lists (the STEGO release's cocostuff.zip) "
              "into ROOT/cocostuff/ as docs/data.md documents")
    SPLIT_DIRS = {"train": "train2017", "val": "val2017"}
    DEFAULT_LISTS = {"train": "Coco164kFull_Stuff_Coarse.txt", "val": "Coco164kFull_Stuff_Coarse_7.txt"}

    def __init__(self, root, split, list_name=None, transform=None, skip_bad=False, labels=True):
        self.get_it = download_hint(self.name, root, self.manual)
        if split not in self.SPLIT_DIRS:
            raise _unknown_split(self.name, split, self.SPLIT_DIRS)
        base, folder = Path(root) / "cocostuff", self.SPLIT_DIRS[split]
        list_file = base / "curated" / folder / (list_name or self.DEFAULT_LISTS[split])
        items = [Item(str(base / "images" / folder / f"{i}.jpg"), str(base / "annotations" / folder / f"{i}.png"),
                      True, str(list_file)) for i in read_id_list(list_file, self.get_it)]
        super().__init__(items, split, root=root, lut=mappings.COCO_FINE_TO_27, valid=mappings.COCO_VALID_RAW,
                         transform=transform, skip_bad=skip_bad, labels=labels)


class Cityscapes27(SegmentationDataset):
    """Cityscapes gtFine, labelIds 7–33 as the 27 classes (labelId − 7)."""

    name = "cityscapes27"
    n_classes = 27
    class_names = mappings.CITYSCAPES_27_NAMES
    manual = ("get leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from www.cityscapes-dataset.com "
              "(or the STEGO release's cityscapes.zip) into ROOT/cityscapes/ as docs/data.md documents")

    def __init__(self, root, split, transform=None, skip_bad=False, labels=True):
        self.get_it = download_hint(self.name, root, self.manual)
        base = Path(root) / "cityscapes"
        img_dir = base / "leftImg8bit" / split
        if not img_dir.is_dir():
            raise MissingDataError(img_dir, f"split folder of {split!r} is missing", self.get_it)
        suffix = "_leftImg8bit.png"
        images = sorted(img_dir.glob(f"*/*{suffix}"))
        if not images:
            raise EmptySplitError(img_dir, f"no <city>/*{suffix} files", self.get_it)
        items = [Item(str(p), str(base / "gtFine" / split / p.parent.name / (p.name[:-len(suffix)]
                                                                             + "_gtFine_labelIds.png")),
                      True, str(img_dir)) for p in images]
        super().__init__(items, split, root=root, lut=mappings.CITYSCAPES_LABELID_TO_27,
                         valid=mappings.CITYSCAPES_VALID_RAW, transform=transform, skip_bad=skip_bad, labels=labels)


class Potsdam3(SegmentationDataset):
    """IIC's Potsdam tiles (.mat), RGB of the RGB-IR image, 6 fine labels mapped to 3."""

    name = "potsdam3"
    n_classes = 3
    class_names = mappings.POTSDAM_3_NAMES
    manual = ("get the IIC Potsdam tiles (the STEGO release's potsdam.zip) into ROOT/potsdam/ as "
              "docs/data.md documents")
    SPLITS = {
        "train": ("labelled_train.txt",),
        "val": ("labelled_test.txt",),
        "unlabelled_train": ("unlabelled_train.txt",),
        "train+val": ("labelled_train.txt", "labelled_test.txt"),
        "train+unlabelled": ("labelled_train.txt", "unlabelled_train.txt"),
        "all": ("all.txt",),
    }

    def __init__(self, root, split, transform=None, skip_bad=False, labels=True):
        self.get_it = download_hint(self.name, root, self.manual)
        if split not in self.SPLITS:
            raise _unknown_split(self.name, split, self.SPLITS)
        base = Path(root) / "potsdam"
        items = []
        for list_name in self.SPLITS[split]:
            list_file = base / list_name
            items += [Item(str(base / "imgs" / f"{i}.mat"), str(base / "gt" / f"{i}.mat"),
                           list_name.startswith("labelled"), str(list_file))
                      for i in read_id_list(list_file, self.get_it)]
        super().__init__(items, split, root=root, lut=mappings.POTSDAM_6_TO_3, valid=mappings.POTSDAM_VALID_RAW,
                         transform=transform, skip_bad=skip_bad, labels=labels)

    def _read_image(self, path):
        arr = read_mat(path, "img", self._bad_fix(), self._missing_fix())
        if arr.ndim != 3 or arr.shape[2] < 3:
            raise CorruptFileError(path, f"'img' must be H×W×C with C ≥ 3 (channel last), got shape {arr.shape}",
                                   self._bad_fix())
        rgb = arr[:, :, :3]
        if rgb.dtype.kind in "iu" and rgb.min() >= 0 and rgb.max() <= 255:
            rgb = rgb.astype(np.uint8)
        elif rgb.dtype.kind == "f" and rgb.min() >= 0 and rgb.max() <= 1:
            rgb = (rgb * 255).astype(np.uint8)  # torchvision's to_pil_image rule for floats: mul(255), truncate
        else:
            raise CorruptFileError(path, f"'img' must be uint8 0–255 or float 0–1, got {rgb.dtype}",
                                   self._bad_fix())
        return Image.fromarray(np.ascontiguousarray(rgb), "RGB")

    def _read_label(self, path):
        return read_mat(path, "gt", self._bad_fix(), self._missing_fix())


def _read_classes(path):
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not names:
        raise StegoError(f"{path}: classes.txt is empty; write one class name a line or delete it")
    return tuple(names)


class ImageFolder(SegmentationDataset):
    """Your own images, optionally with label PNGs (class ids, 255 unlabelled) and a classes.txt."""

    name = "imagefolder"
    get_it = ("put images in ROOT/images/<split>/ and, optionally, a label for every one of them in "
              "ROOT/labels/<split>/<stem>.png (delete that folder for an unlabelled split)")
    repair = "fix or replace the file (labels: one class id per pixel, 255 unlabelled, the size of its image)"
    relabel = ("map them to class ids or 255 (unlabelled), or declare more classes (data.n_classes, one line each in "
               "ROOT/classes.txt)")

    def __init__(self, root, split, n_classes=None, transform=None, skip_bad=False, labels=True):
        root = Path(root)
        img_dir = image_folder_dir(root) / split
        if not img_dir.is_dir():
            raise MissingDataError(img_dir, f"image folder of split {split!r} is missing", self.get_it)
        classes_file = root / "classes.txt"
        if classes_file.is_file():
            self.class_names = _read_classes(classes_file)
            if n_classes is not None and n_classes != len(self.class_names):
                raise StegoError(f"{classes_file}: lists {len(self.class_names)} classes but n_classes={n_classes}; "
                                 "make them agree")
            n_classes = len(self.class_names)
        self.n_classes = n_classes
        label_dir = root / "labels" / split
        images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise EmptySplitError(img_dir, f"no {'/'.join(IMAGE_SUFFIXES)} images", self.get_it)
        has_labels = label_dir.is_dir()
        items = [Item(str(p), str(label_dir / f"{p.stem}.png") if has_labels else None, True, str(img_dir))
                 for p in images]
        lut, valid = mappings.identity_lut(n_classes)
        super().__init__(items, split, root=root, lut=lut, valid=valid, transform=transform, skip_bad=skip_bad,
                         labels=labels)


def image_folder_dir(root):
    """ROOT/images, or ROOT/imgs (the release's directory-dataset name) when only that exists."""
    root = Path(root)
    return root / "imgs" if not (root / "images").is_dir() and (root / "imgs").is_dir() else root / "images"


DATASETS = {"cocostuff27": CocoStuff27, "cityscapes27": Cityscapes27, "potsdam3": Potsdam3,
            "imagefolder": ImageFolder}

_RELEASE_CROP_NAMES = {"cityscapes27": "cityscapes", "potsdam3": "potsdam"}


def cropped_dir(root, dataset, crop_ratio=0.5):
    """Folder of a dataset's five-crop output: ROOT/cropped/<release name>_five_crop_<ratio>."""
    return Path(root) / "cropped" / f"{_RELEASE_CROP_NAMES.get(dataset, dataset)}_five_crop_{float(crop_ratio)}"


class CroppedDataset(SegmentationDataset):
    """Five-crop output of a dataset: <index>.jpg images and <index>.png labels storing label + 1."""

    cropped = True

    def __init__(self, root, dataset, split, crop_ratio=0.5, n_classes=None, transform=None, skip_bad=False,
                 labels=True):
        if dataset not in DATASETS:
            raise StegoError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
        self.name, self.crop_ratio = dataset, float(crop_ratio)
        self.n_classes = DATASETS[dataset].n_classes if n_classes is None else n_classes
        self.class_names = DATASETS[dataset].class_names
        folder = cropped_dir(root, dataset, crop_ratio)
        n_opt = n_classes if dataset == "imagefolder" else None
        self.get_it = f"write them with `{fivecrop_command(dataset, root, split, crop_ratio, n_classes=n_opt)}`"
        self.repair = f"redo the crops with `{fivecrop_command(dataset, root, split, crop_ratio, True, n_opt)}`"
        img_dir, label_dir = folder / "img" / split, folder / "label" / split
        if not img_dir.is_dir():
            raise MissingDataError(img_dir, f"five-crop images of split {split!r} are missing", self.get_it)
        indices = sorted(int(p.stem) for p in img_dir.glob("*.jpg") if p.stem.isdigit())
        if not indices:
            raise EmptySplitError(img_dir, "no <index>.jpg crops", self.get_it)
        items = [Item(str(img_dir / f"{k}.jpg"), str(label_dir / f"{k}.png"), True, str(img_dir)) for k in indices]
        lut, valid = mappings.shifted_lut(self.n_classes)
        super().__init__(items, split, root=root, lut=lut, valid=valid, transform=transform, skip_bad=skip_bad,
                         labels=labels)


def reader_class(name, crop=False, options=()):
    """The reader class for a dataset name (its CroppedDataset with crop), checking the option names."""
    if name not in DATASETS:
        raise StegoError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    cls = CroppedDataset if crop else DATASETS[name]
    unknown = sorted(set(options) - set(inspect.signature(cls).parameters))
    if unknown:
        raise StegoError(f"{name}{' crops' if crop else ''} takes no option {', '.join(unknown)}")
    return cls


def build_dataset(name, root, split, res=None, *, crop=False, crop_ratio=0.5, transform=None, skip_bad=False,
                  **kwargs):
    """A reader by name (cocostuff27, cityscapes27, potsdam3, imagefolder), or its five-crop output with crop=True.

    res: output size of the default transform (None: 224 for training splits, 320 otherwise); `transform`
    replaces it. kwargs go to the reader (list_name for cocostuff27, n_classes for imagefolder and crops).
    """
    cls = reader_class(name, crop, kwargs)
    if transform is None:
        transform = default_transform(split) if res is None else SegTransform(int(res))
    if crop:
        return CroppedDataset(root, name, split, crop_ratio, transform=transform, skip_bad=skip_bad, **kwargs)
    return cls(root, split, transform=transform, skip_bad=skip_bad, **kwargs)
