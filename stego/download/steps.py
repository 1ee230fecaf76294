"""The two steps every download plan is made of, each skipped when already done and recorded in the manifest:
fetch a file into ROOT/downloads/, and unpack an archive onto its folder under ROOT."""
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from stego.download import manifest
from stego.download.fetch import FetchOptions, by_hand, fetch, human
from stego.download.hashing import checked_text, hash_with, mismatch_text, mismatches
from stego.download.places import downloads_dir
from stego.download.sources import WGET, mirror_url
from stego.download.unpack import DamagedArchive, partial_dir, unpack
from stego.errors import StegoError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """One download run: the folder it fills (and whose manifest it keeps), the group its records belong to,
    a mirror, and what to suggest when a file cannot be had."""

    root: Path
    group: str
    mirror: str | None = None
    options: FetchOptions = field(default_factory=FetchOptions)
    remove_archives: bool = False
    alternative: str = ""


def _aside(ctx, path):
    """Move a bad file to <name>.bad (never leaving it in place) and forget its record; returns the new path."""
    aside = path.with_name(path.name + ".bad")
    os.replace(path, aside)
    manifest.forget_file(ctx.root, path)
    return aside


def _manual(ctx, remote):
    """How to fetch `remote` by hand: its own way, or wget from a mirror."""
    return WGET if ctx.mirror else remote.manual


def _hint(ctx, remote, dest):
    return by_hand(mirror_url(remote, ctx.mirror), dest, _manual(ctx, remote), ctx.alternative)


def _known_on_disk(ctx, remote, dest):
    """True when `dest` is a good copy of `remote` (recorded, or checked now); a bad one is moved aside."""
    size = dest.stat().st_size
    rec = manifest.load(ctx.root).files.get(manifest.relative(ctx.root, dest))
    if rec and not rec.removed and rec.size == size:
        log.info("skip: %s already downloaded (%s)", dest, human(size))
        return True
    if rec and not rec.removed:
        aside = _aside(ctx, dest)
        log.warning("%s is %s but was downloaded with %s (truncated or changed); moved it to %s and fetching it "
                    "again", dest, human(size), human(rec.size), aside)
        return False
    log.info("found %s on disk (%s); checking it", dest, human(size))
    hashes = hash_with(dest, remote.digests)
    bad = mismatches(hashes, remote.digests)
    if bad:
        aside = _aside(ctx, dest)
        raise StegoError(f"{dest.name}: {mismatch_text(bad)}; moved the file found at {dest} to {aside}; "
                         f"delete it and re-run to fetch it again, or {_hint(ctx, remote, dest)}")
    manifest.record_file(ctx.root, dest, manifest.FileRecord(
        remote.url, size, hashes["sha256"], checked_text(remote.digests), ctx.group, manifest.now(), "found on disk"))
    return True


def fetch_remote(ctx, remote, dest=None):
    """`remote` at `dest` (default ROOT/downloads/<name>): found on disk, or fetched and recorded."""
    dest = Path(dest) if dest is not None else downloads_dir(ctx.root) / remote.name
    if dest.is_file() and _known_on_disk(ctx, remote, dest):
        return dest
    url = mirror_url(remote, ctx.mirror)
    if remote.via == "cityscapes" and not ctx.mirror:
        from stego.download import cityscapes  # needs cityscapesScripts: only for this source

        got = cityscapes.fetch_package(remote, dest, _hint(ctx, remote, dest))
    else:
        got = fetch(url, dest, digests=remote.digests, manual=_manual(ctx, remote), alternative=ctx.alternative,
                    options=ctx.options)
    manifest.record_file(ctx.root, dest, manifest.FileRecord(url, got.size, got.sha256, got.checked, ctx.group,
                                                             manifest.now()))
    return dest


def unpack_remote(ctx, remote, target, *, inner="", marker="", finish=None):
    """Fetch the archive `remote` and unpack it onto `target` (see unpack.unpack); skipped when the target
    is in place. A damaged archive is moved aside. Returns True when it unpacked something."""
    target = Path(target)
    if target.is_dir():
        log.info("skip: %s already in place", target)
        leftover = partial_dir(target)
        if leftover.exists():
            log.info("removing %s, left over by an interrupted run", leftover)
            shutil.rmtree(leftover)
        return False
    archive = fetch_remote(ctx, remote)
    try:
        done = unpack(archive, target, inner=inner, marker=marker, finish=finish)
    except DamagedArchive as exc:
        aside = _aside(ctx, archive)
        raise StegoError(f"{exc}, so it was moved to {aside}; re-run to fetch it again, or "
                         f"{_hint(ctx, remote, archive)}") from None
    manifest.record_tree(ctx.root, target, manifest.TreeRecord(
        manifest.relative(ctx.root, archive), done.files, done.bytes, ctx.group, manifest.now()))
    if ctx.remove_archives:
        archive.unlink()
        manifest.mark_removed(ctx.root, archive)
        log.info("removed %s (--remove-archives)", archive)
    return True
