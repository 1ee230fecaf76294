"""Small file utilities: atomic writes so an interrupted job never leaves a half-written file."""
import contextlib
import fcntl
import json
import logging
import os
import socket
import tempfile
from pathlib import Path

from .errors import StegoError

log = logging.getLogger(__name__)


def writable_folder(folder, option: str) -> Path:
    """`folder`, created if needed, after checking it can be written: a one-line error naming `option` otherwise,
    before any work is spent on what would go there."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise StegoError(f"{option} {folder} is a file, not a folder; give a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StegoError(f"{option} {folder}: cannot create the folder ({err.strerror}); choose a writable place") \
            from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StegoError(f"{option} {folder}: the folder is not writable; choose another or fix its permissions")
    return folder


def writable_file(path, option: str) -> Path:
    """`path` after checking a file can be written there (its folder created if needed); one line otherwise."""
    path = Path(path)
    if path.is_dir():
        raise StegoError(f"{option} {path} is a folder; give a file path, e.g. {path / 'record.json'}")
    writable_folder(path.parent, f"{option}'s folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise StegoError(f"{option} {path}: the file is not writable; choose another or fix its permissions")
    return path


RUN_LOCK = ".stego-run.lock"


@contextlib.contextmanager
def folder_lock(folder, option: str = "--out"):
    """Hold `folder`'s lock file for the block, so that a second process writing there gets a one-line error
    instead of mixing its files with this one's (the lock ends with the process, also when it is killed)."""
    path = writable_folder(folder, option) / RUN_LOCK
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise StegoError(f"{folder} is being written by {holder} right now; wait for it to end, or choose "
                             f"another {option}") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def waiting_lock(path, waiting: str | None = None):
    """Wait for, then hold, an exclusive lock on the file `path` (created with its folder) for the block: parallel
    jobs take turns (one trains a shared folder or builds a store, the next finds it done). `waiting` is logged when
    another process holds it. flock: local and most cluster file systems, not every NFS."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                log.info("%s", waiting)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_write(path, mode="wb", durable=True):
    """Yield a file object on a temp file beside `path`; rename it onto `path` only if the block succeeds.

    durable=False skips the fsync: the file is still never half-written after a crash of the process, but may
    be lost on power failure (fine for bulk outputs that a re-run recreates, such as five-crops).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; a plain open() would honour the umask
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    """The process's umask, read without changing it where Linux reports it (no window for other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_json(path, fix: str = "delete it and run the command that wrote it again"):
    """The JSON in `path`; an unreadable file is a one-line StegoError naming it and `fix`."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StegoError(f"{path}: not readable JSON ({type(err).__name__}: {err}); {fix}") from None


def save_png(array, path, palette=None) -> None:
    """An image array (H×W×3 uint8, or H×W integer ids) as a PNG, atomically; `palette` ([n, 3] uint8) makes an
    H×W uint8 array a palette PNG whose pixel values stay the ids."""
    from PIL import Image

    image = Image.fromarray(array)
    if palette is not None:
        image = Image.fromarray(array, mode="P")
        image.putpalette(palette.reshape(-1).tolist())
    with atomic_write(path, "wb", durable=False) as f:
        image.save(f, format="PNG")


def atomic_save_json(obj, path, compact: bool = False):
    """Write `obj` as indented JSON to `path` atomically (compact: on one line, for long lists of numbers)."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=None if compact else 2, separators=(",", ":") if compact else None, sort_keys=True,
                  default=str)
        f.write("\n")
