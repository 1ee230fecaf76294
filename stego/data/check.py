"""`stego data check`: validate a dataset's on-disk layout, print its counts and every problem found.

Every listed image and label is opened and decoded; sizes, label values, list entries and split sizes are
checked, and all problems are collected (the check never stops at the first). Problems that make a split
unusable (missing list or folder, empty split, nothing readable) are fatal. Without --skip-bad any problem
fails the check; with --skip-bad bad files are only recorded as "to skip", as the readers would skip them.
"""
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from stego.data.datasets import (
    DATASETS,
    DataFileError,
    EmptySplitError,
    MissingDataError,
    build_dataset,
    cropped_dir,
    image_folder_dir,
    reader_class,
)
from stego.download.manifest import verify_manifest
from stego.errors import StegoError
from stego.io import atomic_save_json

DEFAULT_SPLITS = {
    "cocostuff27": ("train", "val"),
    "cityscapes27": ("train", "val"),
    "potsdam3": ("train", "unlabelled_train", "val"),
}

PROTOCOL_COUNTS = {
    ("cocostuff27", "val"): 2175,
    ("cityscapes27", "train"): 2975,
    ("cityscapes27", "val"): 500,
}
"""Image counts of full splits (docs/protocol.md §6), shown beside the counts found; a difference is no problem."""


@dataclass
class SplitCounts:
    """Entries of one split: listed (in its list or folder), readable, labelled (of the readable), bad."""

    listed: int = 0
    readable: int = 0
    labelled: int = 0
    bad: int = 0


@dataclass
class Problem:
    """One problem: the file (or folder) at fault and why; fatal ones make the split unusable."""

    split: str
    path: str
    reason: str
    fatal: bool = False


@dataclass
class CheckReport:
    """Result of `check_dataset`: counts per split and every problem found."""

    dataset: str
    root: str
    skip_bad: bool
    splits: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    expected: dict = field(default_factory=dict)

    @property
    def ok(self):
        """No fatal problem, and no problem at all unless bad files may be skipped."""
        return not any(p.fatal or not self.skip_bad for p in self.problems)

    def to_dict(self):
        return dict(dataset=self.dataset, root=self.root, skip_bad=self.skip_bad, ok=self.ok,
                    splits={s: asdict(c) for s, c in self.splits.items()}, expected=self.expected,
                    problems=[asdict(p) for p in self.problems])


def default_splits(name, root, crop=False, crop_ratio=0.5):
    """The splits a check covers when none are named: the dataset's own, or the sub-folders present."""
    if crop:
        folder = cropped_dir(root, name, crop_ratio) / "img"
    elif name == "imagefolder":
        folder = image_folder_dir(root)
    else:
        return DEFAULT_SPLITS[name]
    return tuple(sorted(p.name for p in folder.iterdir() if p.is_dir())) if folder.is_dir() else ()


def _load_quietly(ds, i):
    try:
        _, label = ds.load(i)
        return label is not None, None
    except (DataFileError, MissingDataError) as exc:
        return False, exc


def _check_split(name, root, split, crop, crop_ratio, workers, dataset_kwargs):
    counts, problems = SplitCounts(), []
    try:
        ds = build_dataset(name, root, split, crop=crop, crop_ratio=crop_ratio, skip_bad=True, **dataset_kwargs)
    except EmptySplitError as exc:
        problems += [Problem(split, path, reason) for path, reason in exc.skipped]
        counts.listed = counts.bad = len(exc.skipped)
        return counts, problems + [Problem(split, exc.path, exc.problem, fatal=True)]
    except StegoError as exc:
        return counts, [Problem(split, getattr(exc, "path", str(root)), getattr(exc, "problem", str(exc)), True)]
    problems += [Problem(split, path, reason) for path, reason in ds.skipped]
    counts.listed, counts.bad = len(ds) + len(problems), len(problems)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(lambda i: _load_quietly(ds, i), range(len(ds)))
        for labelled, exc in tqdm(results, total=len(ds), desc=f"check {name} {split}", leave=False):
            if exc is None:
                counts.readable += 1
                counts.labelled += labelled
            else:
                counts.bad += 1
                problems.append(Problem(split, exc.path, exc.problem))
    if counts.readable == 0:
        problems.append(Problem(split, str(ds.path(0).parent), f"no readable entries in split {split!r}", True))
    return counts, problems


def check_dataset(name, root, splits=None, skip_bad=False, *, crop=False, crop_ratio=0.5, workers=4,
                  verify_downloads=False, **dataset_kwargs):
    """Open every image and label of the named splits (default: all) and collect every problem found, and what
    `stego data download` recorded of the dataset's files that no longer holds (sizes and file counts; their
    SHA-256 too with verify_downloads).

    crop/crop_ratio check the five-crop output instead; dataset_kwargs go to the reader (list_name,
    n_classes). Decoding runs on `workers` threads.
    """
    reader_class(name, crop, dataset_kwargs)
    report = CheckReport(name, str(root), skip_bad)
    splits = tuple(splits) if splits else default_splits(name, root, crop, crop_ratio)
    if not splits:
        where = cropped_dir(root, name, crop_ratio) / "img" if crop else image_folder_dir(root)
        report.problems.append(Problem("-", str(where), "no split folders found", fatal=True))
    for split in splits:
        counts, problems = _check_split(name, root, split, crop, crop_ratio, workers, dataset_kwargs)
        report.splits[split] = counts
        report.problems += problems
        if (name, split) in PROTOCOL_COUNTS and not crop and not dataset_kwargs:
            report.expected[split] = PROTOCOL_COUNTS[name, split]
    report.problems += [Problem("downloads", p.path, p.reason)
                        for p in verify_manifest(root, group=name, full=verify_downloads)]
    return report


def format_report(report):
    """The report as text: one line per split with its counts, one line per problem, and the verdict."""
    lines = [f"data check: {report.dataset} at {report.root}"]
    for split, c in report.splits.items():
        full = f" (full split: {report.expected[split]})" if split in report.expected else ""
        lines.append(f"  {split}: {c.listed} listed{full}, {c.readable} readable, {c.labelled} labelled, "
                     f"{c.bad} bad")
    if report.problems:
        lines.append(f"{len(report.problems)} problem(s):")
        for p in report.problems:
            tag = "FATAL " if p.fatal else ("skip " if report.skip_bad else "")
            lines.append(f"  {tag}[{p.split}] {p.path}: {p.reason}")
    n_skip = sum(not p.fatal for p in report.problems)
    if not report.ok:
        lines.append(f"result: FAILED ({len(report.problems)} problem(s))")
    elif n_skip:
        lines.append(f"result: OK with {n_skip} bad file(s) to skip (--skip-bad)")
    else:
        lines.append("result: OK")
    return "\n".join(lines)


_DATA_GROUPS = weakref.WeakKeyDictionary()


def data_subparsers(subparsers):
    """The `data` command group's sub-parsers under `subparsers`, created on the first call.

    Other modules add their `data` commands (fivecrop, knn) to the object this returns; each command
    sets `func` (args → exit code) with set_defaults.
    """
    if subparsers not in _DATA_GROUPS:
        parser = subparsers.add_parser("data", help="check and prepare datasets",
                                       description="Check and prepare datasets.")
        _DATA_GROUPS[subparsers] = parser.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    return _DATA_GROUPS[subparsers]


def add_cli(subparsers):
    """Register `data check --dataset NAME --root DIR [--split S] [--skip-bad] [--report FILE]`."""
    p = data_subparsers(subparsers).add_parser(
        "check", help="validate a dataset's layout and files",
        description="Open every image and label of a dataset, print counts and every problem found; "
                    "exit status 1 when the check fails.")
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    p.add_argument("--root", required=True, type=Path, help="data root (layouts: docs/data.md)")
    p.add_argument("--split", action="append", help="split to check (repeatable; default: all)")
    p.add_argument("--crop", action="store_true", help="check the five-crop output instead")
    p.add_argument("--crop-ratio", type=float, default=0.5)
    p.add_argument("--list-name", help="cocostuff27: curated list file (default: the release's per split)")
    p.add_argument("--n-classes", type=int, help="imagefolder: number of classes when there is no classes.txt")
    p.add_argument("--skip-bad", action="store_true",
                   help="bad files are recorded as to skip and do not fail the check")
    p.add_argument("--report", type=Path, help="also write the report as JSON to this file")
    p.add_argument("--verify-downloads", action="store_true",
                   help="also re-hash every file `stego data download` fetched (slow for large archives)")
    p.add_argument("--workers", type=int, default=4, help="decoding threads")
    p.set_defaults(func=run_check)
    return p


def run_check(args):
    """Run `data check` from parsed arguments; returns the exit status."""
    kwargs = {}
    if args.list_name:
        kwargs["list_name"] = args.list_name
    if args.n_classes is not None:
        kwargs["n_classes"] = args.n_classes
    report = check_dataset(args.dataset, args.root, args.split, args.skip_bad, crop=args.crop,
                           crop_ratio=args.crop_ratio, workers=args.workers, verify_downloads=args.verify_downloads,
                           **kwargs)
    print(format_report(report))
    if args.report:
        atomic_save_json(report.to_dict(), args.report)
    return 0 if report.ok else 1
