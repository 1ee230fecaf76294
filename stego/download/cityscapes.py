"""Cityscapes packages through cityscapesScripts' downloader, used as a library: it logs in, resumes a partial
file and checks the md5 the site publishes. Its file lands in ROOT/downloads/.cityscapes/ and is moved into
ROOT/downloads/ only once that check passed; a file that fails it is moved aside to <name>.bad.

Credentials are the library's: its credentials.json (in its user data folder), else a prompt in a terminal.
Without either, and without the package, the error says how to provide them (or to use --mirror/--source).
"""
import logging
import os
import sys
import time
from pathlib import Path

from stego.download.fetch import Fetched
from stego.download.hashing import hash_file
from stego.download.sources import CITYSCAPES_SITE, cityscapes_md5_url
from stego.errors import StegoError

log = logging.getLogger(__name__)

APP = ("cityscapesscripts", "cityscapes")
"""The appdirs (name, author) under which cityscapesScripts' login keeps credentials.json."""
STAGING = ".cityscapes"
CHECKED = "md5 (published by the Cityscapes site, checked by cityscapesScripts)"


def _downloader(hint):
    try:
        from cityscapesscripts.download import downloader
    except ImportError:
        raise StegoError("Cityscapes --source official needs the cityscapesScripts package (pip install "
                         f"cityscapesScripts) and an account; or {hint}; or use --source release") from None
    return downloader


def credentials_file():
    """Where cityscapesScripts looks for {"username": ..., "password": ...}."""
    import appdirs  # a dependency of cityscapesScripts

    return Path(appdirs.user_data_dir(*APP)) / "credentials.json"


def login(downloader, hint):
    """A logged-in session from cityscapesScripts; without stored credentials only in a terminal (it asks)."""
    creds = credentials_file()
    if not creds.is_file() and not sys.stdin.isatty():
        raise StegoError(f"Cityscapes needs an account (register at {CITYSCAPES_SITE}/register/): write "
                         f'{{"username": "...", "password": "..."}} to {creds}, or run this in a terminal to be '
                         f"asked; or {hint}")
    try:
        return downloader.login()
    except Exception as exc:
        raise StegoError(f"Cityscapes login failed ({exc}); check the credentials in {creds} (it is deleted "
                         f"when the site rejects them); or {hint}") from None


def _site_md5(session, name):
    try:
        return session.get(cityscapes_md5_url(name), allow_redirects=False).text.split()[0]
    except Exception:
        return "the site's md5 (not readable now)"


def fetch_package(remote, dest, hint):
    """Download the Cityscapes package `remote.name` to `dest` (via ROOT/downloads/.cityscapes/); Fetched."""
    downloader = _downloader(hint)
    session = login(downloader, hint)
    staging = dest.parent / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    staged = staging / remote.name
    resumed_from = staged.stat().st_size if staged.exists() else 0
    start = time.monotonic()
    try:
        downloader.download_packages(session=session, package_names=[remote.name], destination_path=str(staging),
                                     resume=staged.exists())
    except Exception as exc:
        if staged.exists() and "md5" in str(exc).lower():
            md5 = hash_file(staged, ("md5",))["md5"]
            aside = dest.with_name(dest.name + ".bad")
            os.replace(staged, aside)
            raise StegoError(f"{remote.name}: md5 is {md5}, expected {_site_md5(session, remote.name)} (the "
                             f"Cityscapes site's); moved it to {aside} and put nothing in place; delete it and "
                             f"re-run, or {hint}") from None
        raise StegoError(f"{remote.name}: the Cityscapes download failed ({exc}); re-run to resume it, or "
                         f"{hint}") from None
    size, sha256 = staged.stat().st_size, hash_file(staged)["sha256"]
    os.replace(staged, dest)
    log.info("fetched %s from the Cityscapes site (md5 checked)", remote.name)
    return Fetched(dest, size, sha256, CHECKED, time.monotonic() - start, resumed_from)
