"""Hashing files in one pass (with a progress bar for large ones) and checking them against known digests."""
import hashlib
from pathlib import Path

from tqdm import tqdm

CHUNK = 1 << 20
BAR_FROM = 64 << 20
"""Files from this size on get a progress bar while they are hashed."""


def hash_file(path, algos=("sha256",)):
    """{algo: hex digest} of a file, every algorithm computed in the same read."""
    path = Path(path)
    hashers = {a: hashlib.new(a) for a in dict.fromkeys(algos)}
    size = path.stat().st_size
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024,
                                     desc=f"hash {path.name}", disable=size < BAR_FROM, leave=False) as bar:
        while chunk := f.read(CHUNK):
            for h in hashers.values():
                h.update(chunk)
            bar.update(len(chunk))
    return {a: h.hexdigest() for a, h in hashers.items()}


def hash_with(path, digests):
    """{algo: hex digest} of a file for sha256 and every algorithm of `digests`."""
    return hash_file(path, ("sha256",) + tuple(d.algo for d in digests))


def mismatches(hashes, digests):
    """[(digest, actual hex)] of the known digests the computed `hashes` do not match."""
    return [(d, hashes[d.algo]) for d in digests if not d.matches(hashes[d.algo])]


def mismatch_text(found):
    """'md5 is X, expected Y… (source)' for each mismatch, joined."""
    return "; ".join(f"{d.algo} is {actual}, expected {d}" for d, actual in found)


def checked_text(digests):
    """What a file that passed was checked against: 'md5 a04e12f8… (MoCo README)', or '' for nothing."""
    return ", ".join(str(d) for d in digests)
