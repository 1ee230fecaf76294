"""Data files and their errors: one-line errors that name the file and the fix; listed entries, id lists and
existence checks; the readers of images, label images and .mat files; the checks of raw 8-bit label values
against a dataset's valid ones."""
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from stego.errors import MissingFileError, StegoError


def _one_line(exc):
    return " ".join(str(exc).split()) or type(exc).__name__


class DataFileError(StegoError):
    """A data file is unreadable or inconsistent; `path` names it, `problem` says what is wrong."""

    def __init__(self, path, problem, fix):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}; {fix}")


class CorruptFileError(DataFileError):
    """An image, label or .mat file cannot be decoded (corrupt, truncated, wrong format)."""


class LabelRangeError(DataFileError):
    """A label file holds values that are no class id of its dataset."""


class SizeMismatchError(DataFileError):
    """An image and its label differ in size."""


class MissingDataError(MissingFileError):
    """A data file, list or folder is not where the layout says; the message says where to get it."""

    def __init__(self, path, problem, fix):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}; {fix}")


class EmptySplitError(StegoError):
    """A split has no entries (or none left after skipping); `skipped` holds what was skipped."""

    def __init__(self, path, problem, fix, skipped=()):
        self.path, self.problem, self.skipped = str(path), problem, list(skipped)
        super().__init__(f"{path}: {problem}; {fix}")


@dataclass(frozen=True)
class Item:
    """One listed entry: its image file, its label file (None: never labelled), where it was listed."""

    image: str
    label: str | None
    label_required: bool
    source: str


class DirListing:
    """Existence checks through one directory listing per folder (fast for 100k-file folders)."""

    def __init__(self):
        self._names = {}

    def exists(self, path):
        folder, name = os.path.split(path)
        if folder not in self._names:
            try:
                self._names[folder] = set(os.listdir(folder))
            except (FileNotFoundError, NotADirectoryError):
                self._names[folder] = set()
        return name in self._names[folder]


def file_fingerprint(paths) -> str:
    """'<n>:<16 hex digits>' hashing each file's name, size and modification time in order: it changes when a file
    is rewritten or replaced, or another file set takes the place of this one (a copy that keeps modification
    times, e.g. rsync -a or cp -p, keeps it)."""
    h = hashlib.sha256()
    for path in paths:
        st = os.stat(path)
        h.update(f"{os.path.basename(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return f"{len(paths)}:{h.hexdigest()[:16]}"


def read_id_list(path, get_it):
    """Ids listed one a line in `path` (blank lines dropped); missing or empty list → one-line error."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(path, "split list is missing", get_it)
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise EmptySplitError(path, "split list has no entries", get_it)
    return ids


def value_runs(table):
    """[(first, last)] of each run of consecutive values that a boolean table marks True."""
    values = np.flatnonzero(table)
    if not len(values):
        return []
    runs = np.split(values, np.flatnonzero(np.diff(values) != 1) + 1)
    return [(int(r[0]), int(r[-1])) for r in runs]


def ranges_text(valid):
    """'0-181, 255' for a boolean table of valid raw values."""
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in value_runs(valid))


MAX_RUN_CHECKS = 8
"""Above this many runs of invalid values, 8-bit labels are checked with one table lookup instead."""


def only_valid_8bit(raw, valid, invalid_runs):
    """True when the uint8 array `raw` holds only values that `valid` (bool[256]) allows.

    invalid_runs: `value_runs(~valid)`. Each run [a, b] costs one wrapping uint8 subtraction and a min (raw − a
    mod 256 ≤ b − a exactly for the values in the run): no int64 copy, ~20× faster than indexing the table.
    """
    if len(invalid_runs) > MAX_RUN_CHECKS:
        return bool(np.take(valid, raw).all())
    return all(np.subtract(raw, np.uint8(a)).min() > b - a for a, b in invalid_runs)


def read_rgb(path, bad_fix, missing_fix):
    """Decode an image file fully (truncation is caught here, not later) and convert it to RGB."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise MissingDataError(path, "image file is missing", missing_fix) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CorruptFileError(path, f"cannot decode image ({_one_line(exc)})", bad_fix) from exc


def read_label_png(path, bad_fix, missing_fix):
    """A single-channel label image as a 2-D integer array (palette PNGs give their indices)."""
    try:
        with Image.open(path) as im:
            im.load()
            mode, arr = im.mode, np.asarray(im)
    except FileNotFoundError:
        raise MissingDataError(path, "label file is missing", missing_fix) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CorruptFileError(path, f"cannot decode label image ({_one_line(exc)})", bad_fix) from exc
    if arr.ndim != 2:
        raise CorruptFileError(path, f"label image has mode {mode}; it must hold one class id per pixel "
                                     "(a single-channel PNG)", bad_fix)
    return arr


def read_mat(path, key, bad_fix, missing_fix):
    """Array stored under `key` in a MATLAB .mat file."""
    from scipy.io import loadmat

    if not os.path.isfile(path):
        raise MissingDataError(path, ".mat file is missing", missing_fix)
    try:
        contents = loadmat(path)
    except Exception as exc:  # scipy raises many types for corrupt files; all mean the same here
        raise CorruptFileError(path, f"cannot read .mat file ({_one_line(exc)})", bad_fix) from exc
    if key not in contents:
        keys = sorted(k for k in contents if not k.startswith("__"))
        raise CorruptFileError(path, f".mat file has no key {key!r} (keys: {keys})", bad_fix)
    return np.asarray(contents[key])
