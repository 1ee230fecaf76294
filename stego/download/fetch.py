"""HTTP downloads that resume, retry, and never put a wrong file in place.

A file is fetched into `<dest>.part`: an interrupted run leaves the part, and the next one asks for the rest
with an HTTP Range request (a server that ignores it sends the whole file again). Dropped connections,
timeouts, 408/429 and 5xx answers are retried with exponential back-off; the count restarts whenever bytes
arrived. The part is renamed onto `dest` only when its size is the server's (Content-Length, or the total of
Content-Range) and every known hash matches; a file whose hash differs is moved aside to `<dest>.bad`.
Test hook: $STEGO_DOWNLOAD_BACKOFF scales the waits (0 in tests).
"""
import http.client
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from stego.download.hashing import checked_text, hash_with, mismatch_text, mismatches
from stego.errors import StegoError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
USER_AGENT = "stego-suite-download/1"
BACKOFF_ENV = "STEGO_DOWNLOAD_BACKOFF"
MAX_WAIT = 60.0


@dataclass(frozen=True)
class FetchOptions:
    """retries: failed attempts in a row (no new bytes) before giving up; timeout: seconds of silence that
    fail an attempt; space_margin: bytes that must stay free on the disk after a download."""

    retries: int = 6
    timeout: float = 60.0
    space_margin: int = 256 << 20


@dataclass(frozen=True)
class Fetched:
    """A file now in place: its size and sha256, the published hashes it passed, how it went."""

    path: Path
    size: int
    sha256: str
    checked: str
    seconds: float
    resumed_from: int


class _Retry(Exception):
    """An attempt failed in a way worth trying again (dropped connection, timeout, 5xx)."""


def human(n):
    """A byte count as text: '18.0 GB', '659.0 MB'."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000


def by_hand(url, dest, manual, alternative=""):
    """The manual alternative of an error message; `manual` may name {url} and {dest}."""
    return (f"fetch it by hand ({manual.format(url=url, dest=dest)}) and put it at {dest}, a re-run picks it up"
            + (f"; or {alternative}" if alternative else ""))


def fetch(url, dest, *, digests=(), manual="a browser: {url}", alternative="", options=FetchOptions()):
    """Download `url` to `dest` (resuming `<dest>.part`), check its size and `digests`; returns Fetched."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    hint = by_hand(url, dest, manual, alternative)
    resumed_from = _size(part)
    if resumed_from:
        log.info("resuming %s from %s", dest.name, human(resumed_from))
    start, failures = time.monotonic(), 0
    while True:
        have = _size(part)
        try:
            _attempt(url, part, dest, hint, options)
            break
        except _Retry as exc:
            failures = 0 if _size(part) > have else failures + 1
            if failures > options.retries:
                raise StegoError(f"{dest.name}: {exc} from {url}, {failures} times in a row; the partial file "
                                 f"{part} is kept and a re-run resumes it; or {hint}") from None
            wait = min(MAX_WAIT, 2.0 ** (failures - 1)) * float(os.environ.get(BACKOFF_ENV, 1))
            log.warning("%s: %s; retrying in %.0f s (%d/%d)", dest.name, exc, wait, failures, options.retries)
            time.sleep(wait)
    return _finish(part, dest, url, digests, hint, time.monotonic() - start, resumed_from)


def _size(path):
    return path.stat().st_size if path.exists() else 0


def _open(url, offset, timeout, dest, hint):
    """The server's response to a GET of `url` from byte `offset`; 416 comes back as an HTTPError."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        request = urllib.request.Request(url, headers=headers)
    except ValueError as exc:
        raise StegoError(f"{dest.name}: {url!r} is not a URL ({exc}); check --mirror (http://HOST/PATH)") from None
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:
            return exc
        if exc.code in (408, 429) or exc.code >= 500:
            raise _Retry(f"HTTP {exc.code} {exc.reason}") from None
        raise StegoError(f"{dest.name}: HTTP {exc.code} {exc.reason} from {url} (expected the file "
                         f"{dest.name}); the file has moved, is private, or the mirror lacks it; {hint}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Retry(_reason(exc)) from None


def _reason(exc):
    reason = getattr(exc, "reason", None) or exc
    return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__


def _content_range(value):
    """(first byte, total or None) of a Content-Range header: 'bytes 100-199/200' or 'bytes */200'."""
    m = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", (value or "").strip())
    if not m:
        return None, None
    return (int(m[1]) if m[1] else None), (int(m[2]) if m[2] != "*" else None)


def _attempt(url, part, dest, hint, options):
    """One request: append what the server sends to `part`; _Retry unless the part is then complete."""
    have = _size(part)
    resp = _open(url, have, options.timeout, dest, hint)
    if isinstance(resp, urllib.error.HTTPError):  # 416: nothing left to send from `have` on
        _, total = _content_range(resp.headers.get("Content-Range"))
        resp.close()
        if total == have:
            return
        part.unlink()
        raise _Retry(f"the server cannot resume at byte {have} (HTTP 416); starting again")
    with resp:
        total = None
        if resp.status == 206:
            first, total = _content_range(resp.headers.get("Content-Range"))
            if first != have:
                part.unlink()
                raise _Retry(f"the server resumed at byte {first}, not {have}; starting again")
        else:
            if have:
                log.warning("%s: the server does not resume downloads; fetching it from the start", dest.name)
                have = 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if total is not None:
            _check_space(part, total - have, options.space_margin, dest)
        _stream(resp, part, have, total, dest.name)
    got = _size(part)
    if total is None:
        log.warning("%s: the server sent no size, so a truncated file cannot be told apart", dest.name)
    elif got != total:
        raise _Retry(f"the connection closed at {human(got)} of {human(total)}")


def _check_space(part, need, margin, dest):
    free = shutil.disk_usage(part.parent).free
    if need + margin > free:
        raise StegoError(f"{dest.name}: needs {human(need)} more but {part.parent} has {human(free)} free; "
                         f"free some space or use a data root on a larger disk (the partial file is kept)")


def _stream(resp, part, have, total, name):
    with open(part, "r+b" if have else "wb") as f, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
            mininterval=1.0) as bar:
        f.seek(have)
        f.truncate()
        try:
            while chunk := resp.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as exc:
            raise _Retry(_reason(exc)) from None


def _finish(part, dest, url, digests, hint, seconds, resumed_from):
    hashes = hash_with(part, digests)
    bad = mismatches(hashes, digests)
    if bad:
        aside = dest.with_name(dest.name + ".bad")
        os.replace(part, aside)
        raise StegoError(f"{dest.name}: {mismatch_text(bad)}; the file from {url} is corrupt or not the "
                         f"expected one, so it was moved to {aside} and nothing was put in place; delete it and "
                         f"re-run to fetch it again, or {hint}")
    size = part.stat().st_size
    os.replace(part, dest)
    rate = (size - resumed_from) / max(seconds, 1e-6)
    log.info("fetched %s: %s in %.0f s (%s/s)%s", dest, human(size), seconds, human(rate),
             f", {checked_text(digests)} ok" if digests else "")
    return Fetched(dest, size, hashes["sha256"], checked_text(digests), seconds, resumed_from)


def add_fetch_args(parser):
    """--retries and --timeout, shared by the download commands."""
    defaults = FetchOptions()
    parser.add_argument("--retries", type=int, default=defaults.retries,
                        help="failed attempts in a row before giving up (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=defaults.timeout,
                        help="seconds without data before an attempt fails (default %(default)s)")


def fetch_options(args):
    return FetchOptions(retries=args.retries, timeout=args.timeout)
