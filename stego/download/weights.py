"""`stego weights download|verify`: backbone weight files and the authors' released checkpoints, hash-checked.

Backbone files (names and URLs from stego.backbones.BACKBONES) go to the folder the loader searches first
($STEGO_WEIGHTS_DIR, else torch hub's checkpoints); released checkpoints to places.release_dir(). Known hashes
are checked: torch hub's name-suffix rule (resnet50-0676ba61.pth: sha256 starts with 0676ba61, also DINOv3's
files), MoCo's published md5 prefix; for the rest the sha256 is recorded in the folder's manifest.
Licence-gated weights (a spec with `access`, DINOv3) are never downloaded: a file put in place by hand can be
verified.
"""
import logging
from dataclasses import replace
from pathlib import Path

from stego.download import manifest, sources
from stego.download.fetch import FetchOptions, add_fetch_args, fetch_options
from stego.download.hashing import hash_with, mismatch_text, mismatches
from stego.download.places import release_dir, weights_dir
from stego.download.sources import Digest, Remote
from stego.download.steps import Context, fetch_remote
from stego.errors import StegoError

log = logging.getLogger(__name__)

SKIP_SUFFIXES = (".part", ".bad", ".tmp", ".json")


def weight_digests(file_name):
    """The known hashes of a weight file: torch hub's name suffix (name-<sha256 prefix>.ext) and published ones."""
    from torch.hub import HASH_REGEX

    found = HASH_REGEX.search(file_name)
    suffix = (Digest("sha256", found.group(1), "the file name, torch hub's rule"),) if found and found.group(1) else ()
    return suffix + sources.WEIGHT_DIGESTS.get(file_name, ())


def backbone_remote(name):
    """The Remote of a backbone's official weight file; gated or unknown names are a one-line error."""
    from stego.backbones import BACKBONES

    spec = BACKBONES.get(name)
    if spec is not None and spec.access:
        raise StegoError(f"{name}: its weights are licence-gated and never downloaded automatically; request access "
                         f"at {spec.access} (the links come by e-mail), download {spec.weight_file} yourself into "
                         f"{weights_dir()} and check it with `stego weights verify`")
    if spec is None or not spec.url:
        raise StegoError(f"{name}: no official weight file to download; choose from {', '.join(downloadable())}")
    return Remote(spec.weight_file, spec.url, digests=weight_digests(spec.weight_file))


def downloadable():
    """The backbone names whose official weight file can be downloaded (not licence-gated)."""
    from stego.backbones import BACKBONES

    return sorted(n for n, s in BACKBONES.items() if s.weight_file and s.url)


def checkpoint_remote(file_name):
    if file_name not in sources.CHECKPOINTS:
        raise StegoError(f"{file_name}: not one of the released files; choose from {', '.join(sources.CHECKPOINTS)}")
    return sources.CHECKPOINTS[file_name]


def download_weights(names, folder=None, mirror=None, options=FetchOptions()):
    """Fetch the official weight files of backbone `names` ("all": every one) into `folder`; their paths."""
    if "all" in names:
        names = downloadable()
    remotes = [backbone_remote(n) for n in names]
    folder = Path(folder) if folder else weights_dir()
    ctx = Context(folder, "weights", mirror, options)
    return [fetch_remote(replace(ctx, alternative=sources.WEIGHT_ALTERNATIVES.get(r.name, "")), r, folder / r.name)
            for r in remotes]


def download_checkpoints(files=(), folder=None, mirror=None, options=FetchOptions()):
    """Fetch the authors' released files (default: the three STEGO checkpoints) into `folder`; their paths."""
    remotes = [checkpoint_remote(f) for f in (files or sources.DEFAULT_CHECKPOINTS)]
    folder = Path(folder) if folder else release_dir()
    ctx = Context(folder, "checkpoints", mirror, options)
    return [fetch_remote(ctx, r, folder / r.name) for r in remotes]


def verify_folder(folder):
    """[(path, problem)] of a weights or checkpoint folder: files failing a known hash, and manifest problems."""
    folder = Path(folder)
    problems = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                       and not p.name.endswith(SKIP_SUFFIXES)):
        digests = weight_digests(path.name)
        if digests:
            bad = mismatches(hash_with(path, digests), digests)
            if bad:
                problems.append((str(path), f"{mismatch_text(bad)}; delete it and download it again"))
            else:
                log.info("%s: %s ok", path.name, ", ".join(str(d) for d in digests))
    problems += [(p.path, p.reason) for p in manifest.verify_manifest(folder, full=True)]
    return problems


def add_cli(subparsers):
    """Register `stego weights download NAME...|--release [FILE...]` and `stego weights verify`."""
    p = subparsers.add_parser("weights", help="download and verify backbone weights and released checkpoints",
                              description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="weights_command", metavar="COMMAND", required=True)
    d = sub.add_parser("download", help="fetch backbone weight files, or with --release the authors' checkpoints",
                       description="Fetch backbone weight files (NAME: a backbone, or all) into the folder the "
                                   "loader searches, or with --release the authors' released files (FILE; default "
                                   f"{', '.join(sources.DEFAULT_CHECKPOINTS)}) into $STEGO_RELEASE_DIR "
                                   "(default ./saved_models).")
    d.add_argument("names", nargs="*", metavar="NAME|FILE")
    d.add_argument("--release", action="store_true", help="the authors' released checkpoints instead")
    d.add_argument("--dir", type=Path, help="target folder instead of the default")
    d.add_argument("--mirror", metavar="BASE_URL", help="fetch every file from BASE_URL/<file name> instead")
    add_fetch_args(d)
    d.set_defaults(func=run_download)
    v = sub.add_parser("verify", help="check the files of a weights or checkpoint folder against known hashes",
                       description="Check every file with a known hash, and the folder's download manifest.")
    v.add_argument("--dir", type=Path, help="folder (default: the weights folder; --release: the release folder)")
    v.add_argument("--release", action="store_true", help="the release folder instead")
    v.set_defaults(func=run_verify)
    return p


def run_download(args):
    """The `stego weights download` command; exit code 0."""
    if args.release:
        paths = download_checkpoints(args.names, args.dir, args.mirror, fetch_options(args))
    elif args.names:
        paths = download_weights(args.names, args.dir, args.mirror, fetch_options(args))
    else:
        raise StegoError("name the backbones to download (or all), or pass --release for the released checkpoints")
    for path in paths:
        print(f"ready: {path}")
    return 0


def run_verify(args):
    """The `stego weights verify` command; exit code 1 when a file fails."""
    folder = args.dir or (release_dir() if args.release else weights_dir())
    problems = verify_folder(folder)
    for path, reason in problems:
        print(f"{path}: {reason}")
    print(f"{folder}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0
