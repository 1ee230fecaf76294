"""Small file utilities: atomic writes so an interrupted job never leaves a half-written file."""
import contextlib
import json
import os
import tempfile
from pathlib import Path

from .errors import StegoError


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


def read_json(path, fix: str = "delete it and run the command that wrote it again"):
    """The JSON in `path`; an unreadable file is a one-line StegoError naming it and `fix`."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StegoError(f"{path}: not readable JSON ({type(err).__name__}: {err}); {fix}") from None


def atomic_save_json(obj, path):
    """Write `obj` as indented JSON to `path` atomically."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
