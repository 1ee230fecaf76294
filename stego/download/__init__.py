"""Verified, resumable downloads: datasets into the readers' layouts, backbone weights, released checkpoints.

sources (every URL, name, size and known hash), places (where things go), fetch (HTTP with resume and
retries), unpack (all-or-nothing extraction), manifest (what was downloaded, to check it later), steps
(skippable fetch/unpack steps), data (`stego data download`, `stego data prepare-potsdam`), cityscapes,
potsdam, weights (`stego weights download|verify`). See docs/download.md.
"""
from stego.download.manifest import ManifestProblem, verify_manifest
from stego.download.places import release_dir

__all__ = ["ManifestProblem", "release_dir", "verify_manifest"]
