"""The download manifest, ROOT/.stego-downloads.json: what was fetched and extracted, so later damage shows.

Schema (version 1; paths relative to ROOT, with "/")::

    {"schema": 1,
     "files": {"downloads/val2017.zip": {"url", "size", "sha256", "checked", "group", "time", "origin",
                                         "removed"}},
     "trees": {"cocostuff/images/val2017": {"archive", "files", "bytes", "group", "time"}}}

`checked` names the published hash a file passed ("" when none is published: then the recorded sha256 is
the only reference). `origin` is "fetched" (from `url`) or "found on disk" (put there by hand; `url` is
where it comes from). `removed` marks an archive deleted on purpose after extraction (--remove-archives).
`group` is the dataset (cocostuff27, ...), "weights" or "checkpoints". Written atomically with stego.io.
"""
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from stego.download.hashing import hash_file
from stego.errors import StegoError
from stego.io import atomic_save_json

MANIFEST_NAME = ".stego-downloads.json"
SCHEMA = 1


@dataclass
class FileRecord:
    """A downloaded (or found and hashed) file."""

    url: str
    size: int
    sha256: str
    checked: str = ""
    group: str = ""
    time: str = ""
    origin: str = "fetched"
    removed: bool = False


@dataclass
class TreeRecord:
    """A folder extracted from an archive: how many files and bytes it held when it was moved into place."""

    archive: str
    files: int
    bytes: int
    group: str = ""
    time: str = ""


@dataclass
class Manifest:
    files: dict = field(default_factory=dict)
    trees: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ManifestProblem:
    """A recorded file or folder that is missing or no longer what was downloaded."""

    path: str
    reason: str


def manifest_path(root):
    return Path(root) / MANIFEST_NAME


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def relative(root, path):
    """`path` relative to `root`, with "/" (the manifest's keys)."""
    return Path(os.path.relpath(path, root)).as_posix()


def load(root):
    """The manifest under `root` (empty when there is none)."""
    path = manifest_path(root)
    if not path.is_file():
        return Manifest()
    try:
        raw = json.loads(path.read_text())
        if raw.get("schema") != SCHEMA:
            raise ValueError(f"schema {raw.get('schema')!r}, expected {SCHEMA}")
        return Manifest({k: FileRecord(**v) for k, v in raw["files"].items()},
                        {k: TreeRecord(**v) for k, v in raw["trees"].items()})
    except (ValueError, KeyError, TypeError) as exc:
        raise StegoError(f"{path}: not a download manifest ({exc}); delete it and re-run the download "
                         "(finished steps are found on disk again)") from exc


def save(root, manifest):
    atomic_save_json(dict(schema=SCHEMA, files={k: asdict(v) for k, v in sorted(manifest.files.items())},
                          trees={k: asdict(v) for k, v in sorted(manifest.trees.items())}), manifest_path(root))


def record_file(root, path, rec):
    m = load(root)
    m.files[relative(root, path)] = rec
    save(root, m)


def record_tree(root, path, rec):
    m = load(root)
    m.trees[relative(root, path)] = rec
    save(root, m)


def forget_file(root, path):
    """Drop a file's record (it was moved aside as bad)."""
    m = load(root)
    if m.files.pop(relative(root, path), None) is not None:
        save(root, m)


def mark_removed(root, path):
    """Record that an archive was deleted on purpose after its extraction."""
    m = load(root)
    m.files[relative(root, path)].removed = True
    save(root, m)


def tree_stats(path):
    """(number of files, total bytes) under a folder."""
    n = total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            n += 1
            total += os.path.getsize(os.path.join(folder, name))
    return n, total


def verify_manifest(root, group=None, full=False):
    """Every recorded file and folder under `root` (of one group, or all) that is missing or changed.

    Sizes and file counts are always compared; full=True also re-hashes every file (slow for large ones).
    Returns [ManifestProblem(path, reason)], empty when all is as downloaded or there is no manifest.
    """
    m, root, problems = load(root), Path(root), []
    redo = "re-run the download (it fetches or extracts it again)"
    for rel, rec in m.files.items():
        path = root / rel
        if (group and rec.group != group) or rec.removed:
            continue
        if not path.is_file():
            problems.append(ManifestProblem(str(path), f"missing (downloaded from {rec.url}); {redo}"))
        elif (size := path.stat().st_size) != rec.size:
            problems.append(ManifestProblem(str(path), f"is {size} bytes, was downloaded with {rec.size} "
                                                       f"(truncated or changed); delete it and {redo}"))
        elif full and (sha := hash_file(path)["sha256"]) != rec.sha256:
            problems.append(ManifestProblem(str(path), f"sha256 is {sha}, was downloaded with {rec.sha256} "
                                                       f"(changed); delete it and {redo}"))
    for rel, rec in m.trees.items():
        path = root / rel
        if group and rec.group != group:
            continue
        if not path.is_dir():
            problems.append(ManifestProblem(str(path), f"missing (extracted from {rec.archive}); {redo}"))
        elif (stats := tree_stats(path)) != (rec.files, rec.bytes):
            problems.append(ManifestProblem(str(path), f"holds {stats[0]} files, {stats[1]} bytes; extracted "
                                                       f"{rec.files} files, {rec.bytes} bytes from {rec.archive}; "
                                                       f"delete the folder and {redo}"))
    return problems
