"""Extract a zip (by its name: *.zip) or tar archive so that its target folder appears complete, or not at all.

Members go into `.<target>.partial/` beside the target, each written to `<member>.part` and renamed, so a
killed extraction leaves only whole members there and the next run skips those (same name and size) and
writes the rest. The folder of the archive that becomes the target is then found (the archive's own top
folders are not assumed: `inner`/`marker` name a path it must hold), handed to `finish`, and renamed onto
the target in one step. Members that would land outside the folder, links and devices are never written.
Test hook: $STEGO_TEST_UNPACK_DELAY seconds of sleep after each member (to interrupt an extraction).
"""
import logging
import os
import shutil
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from stego.download.fetch import human
from stego.download.manifest import tree_stats
from stego.errors import StegoError

log = logging.getLogger(__name__)

DELAY_ENV = "STEGO_TEST_UNPACK_DELAY"
SEARCH_DEPTH = 4
DAMAGE = (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError)
"""What a truncated or corrupt archive raises while it is read."""


class DamagedArchive(StegoError):
    """The archive cannot be used: truncated, corrupt, not an archive, or with members outside its folder."""


@dataclass(frozen=True)
class Unpacked:
    """A folder now in place: its files and bytes, and how many members an earlier run had written."""

    target: Path
    files: int
    bytes: int
    resumed: int


def partial_dir(target):
    """Where the members of `target` are gathered before it is moved into place."""
    target = Path(target)
    return target.parent / f".{target.name}.partial"


def unpack(archive, target, *, inner="", marker="", finish=None):
    """Extract `archive` and move its folder `inner` (found at any depth ≤ 4 as the folder holding
    `inner`/`marker`) onto `target`, which must not exist; `finish(folder)` may complete it first."""
    archive, target = Path(archive), Path(target)
    partial = partial_dir(target)
    if partial.exists():
        log.info("resuming the extraction of %s (an earlier run was interrupted)", archive.name)
    partial.mkdir(parents=True, exist_ok=True)
    try:
        resumed = (_extract_zip if archive.name.endswith(".zip") else _extract_tar)(archive, partial)
    except DamagedArchive:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    except DAMAGE as exc:
        shutil.rmtree(partial, ignore_errors=True)
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise DamagedArchive(f"{archive}: cannot be read to the end ({type(exc).__name__}: {reason}); it is "
                             "truncated or corrupt") from None
    folder = _locate(partial, inner, marker, archive)
    if finish:
        finish(folder)
    os.replace(folder, target)
    shutil.rmtree(partial, ignore_errors=True)
    files, size = tree_stats(target)
    log.info("extracted %s into %s: %d files, %s%s", archive.name, target, files, human(size),
             f" ({resumed} already there from the earlier run)" if resumed else "")
    return Unpacked(target, files, size, resumed)


def _junk(name):
    return name.startswith("__MACOSX/") or PurePosixPath(name).name == ".DS_Store"


def _out(partial, name, archive):
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise DamagedArchive(f"{archive}: member {name!r} would be written outside the extraction folder; it "
                             "is not one of the expected archives")
    return partial.joinpath(*rel.parts)


def _done(out, size):
    return out.is_file() and out.stat().st_size == size


def _write(src, out):
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(tmp, out)
    time.sleep(float(os.environ.get(DELAY_ENV, 0)))


def _bar(archive, total=None):
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"extract {archive.name}",
                mininterval=1.0)


def _extract_zip(archive, partial):
    with zipfile.ZipFile(archive) as zf:
        members = [(i, _out(partial, i.filename, archive)) for i in zf.infolist() if not _junk(i.filename)]
        files = [(i, out) for i, out in members if not i.is_dir()]
        need = sum(i.file_size for i, out in files if not _done(out, i.file_size))
        free = shutil.disk_usage(partial).free
        if need > free:
            raise StegoError(f"{archive}: extracting needs {human(need)} but {partial.parent} has {human(free)} "
                             "free; free some space (or pass --remove-archives) and re-run")
        resumed = 0
        with _bar(archive, sum(i.file_size for i, _ in files)) as bar:
            for info, out in files:
                if _done(out, info.file_size):
                    resumed += 1
                else:
                    with zf.open(info) as src:
                        _write(src, out)
                bar.update(info.file_size)
    return resumed


def _extract_tar(archive, partial):
    resumed = skipped = 0
    with tarfile.open(archive, "r:*") as tf, _bar(archive) as bar:
        for member in tf:
            if _junk(member.name) or member.isdir():
                continue
            if not member.isfile():
                skipped += 1
                continue
            out = _out(partial, member.name, archive)
            if _done(out, member.size):
                resumed += 1
            else:
                _write(tf.extractfile(member), out)
            bar.update(member.size)
    if skipped:
        log.warning("%s: skipped %d links or special files (only regular files are extracted)", archive.name,
                    skipped)
    return resumed


def _locate(partial, inner, marker, archive):
    """The folder `inner` of the extracted tree: the first, breadth-first, below which `inner/marker` exists."""
    search = PurePosixPath(inner, marker)
    level = [partial]
    for _ in range(SEARCH_DEPTH + 1):
        for folder in level:
            if (folder / search).exists():
                return folder / inner
        level = sorted(d for folder in level for d in folder.iterdir() if d.is_dir())
    shutil.rmtree(partial, ignore_errors=True)
    raise StegoError(f"{archive}: holds no {search} (searched {SEARCH_DEPTH} folders deep), so it is not the "
                     "expected archive; look inside it, delete it and re-run, or try another --source")
