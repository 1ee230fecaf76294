"""`stego data download` and `stego data prepare-potsdam`: from nothing to the layouts the readers expect.

Sources (stego/download/sources.py has the URLs; docs/download.md the sizes and manual fallbacks):
- release: the authors' preprocessed zip of the dataset, unpacked onto ROOT/<folder> whether or not its
  members start with that folder;
- official: COCO 2017 images + COCO-Stuff stuffthingmaps + IIC's curated lists (with PiCIE's `_7` lists,
  whose hashes are known); Cityscapes gtFine and leftImg8bit through cityscapesScripts (or a mirror);
  IIC's preprocessed Potsdam. `prepare-potsdam` cuts raw ISPRS tiles by IIC's recipe instead.
Archives are kept in ROOT/downloads/ (unless --remove-archives); every step is skipped when done, and the
result is checked against the reader's layout before the command says it is ready.
"""
import functools
import logging
from pathlib import Path

from stego.data.datasets import DATASETS, CocoStuff27, Potsdam3
from stego.download import sources
from stego.download.fetch import FetchOptions, add_fetch_args, fetch_options
from stego.download.potsdam import LISTS as POTSDAM_LISTS
from stego.download.potsdam import prepare, write_all_list
from stego.download.steps import Context, fetch_remote, unpack_remote
from stego.errors import StegoError
from stego.io import atomic_write

log = logging.getLogger(__name__)

FOLDERS = {"cocostuff27": "cocostuff", "cityscapes27": "cityscapes", "potsdam3": "potsdam",
           "potsdam3_raw": "potsdamraw"}
"""The folder under ROOT each download fills (the readers' names; potsdamraw is the release's)."""
RELEASE_MARKERS = {"cocostuff27": "curated", "cityscapes27": "gtFine", "potsdam3": POTSDAM_LISTS[0],
                   "potsdam3_raw": "processed"}
"""A path every release zip must hold inside its dataset folder: it finds that folder in the zip."""
CITYSCAPES_FOLDERS = ("gtFine", "leftImg8bit")
COCO_SPLITS = tuple(CocoStuff27.SPLIT_DIRS.values())


def _release(ctx):
    finish = write_all_list if ctx.group == "potsdam3" else None
    unpack_remote(ctx, sources.RELEASE_ZIPS[ctx.group], ctx.root / FOLDERS[ctx.group],
                  marker=RELEASE_MARKERS[ctx.group], finish=finish)


def _put_picie_lists(ctx, curated):
    """Put PiCIE's `_7` lists (hash-checked) into the curated folder, replacing IIC's copies if they differ."""
    for remote in sources.PICIE_LISTS.values():
        data = fetch_remote(ctx, remote).read_bytes()
        dest = curated / remote.name
        if dest.is_file() and dest.read_bytes() == data:
            continue
        if dest.is_file():
            log.warning("%s: IIC's copy differs from PiCIE's, whose hash is known; using PiCIE's", remote.name)
        with atomic_write(dest) as f:
            f.write(data)


def _cocostuff_official(ctx):
    base = ctx.root / "cocostuff"
    for remote, split in zip((sources.COCO_TRAIN, sources.COCO_VAL), COCO_SPLITS):
        unpack_remote(ctx, remote, base / "images" / split, inner=split)
    unpack_remote(ctx, sources.STUFFTHINGMAPS, base / "annotations", marker=COCO_SPLITS[0])
    unpack_remote(ctx, sources.IIC_CURATED, base / "curated",
                  marker=f"{COCO_SPLITS[0]}/{CocoStuff27.DEFAULT_LISTS['train']}",
                  finish=functools.partial(_put_picie_lists, ctx))


def _cityscapes_official(ctx):
    for remote, folder in zip((sources.CITYSCAPES_GTFINE, sources.CITYSCAPES_LEFTIMG), CITYSCAPES_FOLDERS):
        unpack_remote(ctx, remote, ctx.root / "cityscapes" / folder, inner=folder)


def _potsdam_official(ctx):
    unpack_remote(ctx, sources.IIC_POTSDAM, ctx.root / "potsdam", marker=POTSDAM_LISTS[0], finish=write_all_list)


PLANS = {
    **{(dataset, "release"): _release for dataset in FOLDERS},
    ("cocostuff27", "official"): _cocostuff_official,
    ("cityscapes27", "official"): _cityscapes_official,
    ("potsdam3", "official"): _potsdam_official,
}


def layout_problems(dataset, root):
    """What the readers need of a downloaded dataset and is not there (a quick look, no file is opened)."""
    base = Path(root) / FOLDERS[dataset]
    if dataset == "cocostuff27":
        need = [base / sub / split for sub in ("images", "annotations") for split in COCO_SPLITS]
        need += [base / "curated" / CocoStuff27.SPLIT_DIRS[s] / name for s, name in CocoStuff27.DEFAULT_LISTS.items()]
    elif dataset == "cityscapes27":
        need = [base / folder / split for folder in CITYSCAPES_FOLDERS for split in ("train", "val")]
    elif dataset == "potsdam3":
        need = [base / "imgs", base / "gt"] + sorted({base / n for names in Potsdam3.SPLITS.values() for n in names})
    else:
        need = [base / "processed" / "imgs", base / "processed" / "gt"]
    return [str(p) for p in need if not p.exists()]


def download(dataset, root, source="release", mirror=None, options=FetchOptions(), remove_archives=False):
    """Download `dataset` from `source` (or `mirror`) into its layout under `root`; returns its folder."""
    if (dataset, source) not in PLANS:
        have = [s for d, s in PLANS if d == dataset]
        raise StegoError(f"{dataset} has no --source {source}; choose {' or '.join(have)}"
                         + (f"; or cut raw ISPRS tiles with `stego data prepare-potsdam --raw TILES --root {root}`"
                            if "potsdam" in dataset else ""))
    other = [s for d, s in PLANS if d == dataset and s != source]
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ctx = Context(root, dataset, mirror, options, remove_archives,
                  alternative=f"use --source {other[0]}" if other else "")
    log.info("%s from %s%s into %s", dataset, source, f" via the mirror {mirror}" if mirror else "", root)
    PLANS[dataset, source](ctx)
    missing = layout_problems(dataset, root)
    if missing:
        raise StegoError(f"{dataset}: the {source} files are in place but {missing[0]} is missing"
                         f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}, so they do not hold "
                         "the layout docs/data.md describes; " + (ctx.alternative or "see docs/download.md"))
    return root / FOLDERS[dataset]


def add_cli(data_subparsers):
    """Register `download` and `prepare-potsdam` under `stego data`."""
    p = data_subparsers.add_parser(
        "download", help="download a dataset into the layout the readers expect (verified, resumable)",
        description="Download a dataset's archives into ROOT/downloads/, verify them, and unpack them into the "
                    "layout docs/data.md describes. Re-running resumes and skips finished steps.")
    p.add_argument("dataset", choices=sorted(FOLDERS))
    p.add_argument("--root", required=True, type=Path, help="data root")
    p.add_argument("--source", choices=("release", "official"), default="release",
                   help="the authors' preprocessed zips (default) or the original datasets' files")
    p.add_argument("--mirror", metavar="BASE_URL", help="fetch every file from BASE_URL/<file name> instead")
    p.add_argument("--remove-archives", action="store_true", help="delete each archive once it is unpacked")
    p.add_argument("--check", action="store_true", help="then open every file, as `stego data check` does")
    add_fetch_args(p)
    p.set_defaults(func=run_download)

    q = data_subparsers.add_parser(
        "prepare-potsdam", help="cut raw ISPRS Potsdam tiles into ROOT/potsdam (IIC's recipe)",
        description="Cut the ISPRS Potsdam RGB-IR tiles (*_RGBIR.tif) and label tiles (*_label.tif) found under "
                    "--raw into ROOT/potsdam as IIC did: 200x200 crops of 400x400 areas, random names, lists.")
    q.add_argument("--raw", required=True, type=Path, help="folder holding the unpacked ISPRS tiles")
    q.add_argument("--root", required=True, type=Path, help="data root")
    q.add_argument("--seed", type=int, default=0, help="seed of the crop names and the test draw")
    q.set_defaults(func=run_prepare_potsdam)
    return p


def run_download(args):
    """The `stego data download` command; exit code 0, or 1 when --check finds problems."""
    folder = download(args.dataset, args.root, args.source, args.mirror, fetch_options(args), args.remove_archives)
    checkable = args.dataset in DATASETS
    print(f"{args.dataset}: ready in {folder}" + (f" (`stego data check --dataset {args.dataset} --root {args.root}`"
                                                  " opens every file)" if checkable and not args.check else ""))
    if args.check and checkable:
        from stego.data.check import check_dataset, format_report

        report = check_dataset(args.dataset, args.root)
        print(format_report(report))
        return 0 if report.ok else 1
    return 0


def run_prepare_potsdam(args):
    """The `stego data prepare-potsdam` command; exit code 0."""
    print(f"potsdam3: ready in {prepare(args.raw, args.root, args.seed)}")
    return 0
