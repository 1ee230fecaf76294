"""Pretrained weights, apart from the architectures: find a backbone's official file, read a weight file or state
dict in the layouts the releases use (DINO, MoCo, torchvision, the STEGO release), and load it strictly.

Weight files are pickles: they are read with `torch.load(weights_only=True)`; use files from sources you trust.
"""
import argparse
import logging
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from stego.errors import MissingFileError, StegoError

from .registry import BackboneSpec, spec_of

log = logging.getLogger(__name__)

WEIGHTS_ENV = "STEGO_WEIGHTS_DIR"
OFFLINE_ENVS = ("STEGO_OFFLINE", "HF_HUB_OFFLINE")
WEIGHTS_OPTION = "model.weights=PATH (stego train / eval / predict) or --weights PATH (stego data knn)"
"""How a user points a command at a weight file, for error messages."""


class MissingWeightsError(MissingFileError):
    """A backbone weight file is not on disk and cannot be downloaded; the message says what and where."""


def offline() -> bool:
    """True when $STEGO_OFFLINE or $HF_HUB_OFFLINE asks for no downloads."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in OFFLINE_ENVS)


def search_dirs(weights_dir=None) -> list[Path]:
    """Where official weight files are looked for, in order: weights_dir, $STEGO_WEIGHTS_DIR, torch hub's folder."""
    dirs = [weights_dir, os.environ.get(WEIGHTS_ENV), Path(torch.hub.get_dir()) / "checkpoints"]
    return [Path(d).expanduser() for d in dirs if d]


def resolve_weight_file(name: str, weights_dir=None) -> Path:
    """Find the official weight file of `name` in `search_dirs`; download it into the first of them when online
    (never licence-gated weights). Raises MissingWeightsError (one line) otherwise."""
    spec = spec_of(name)
    if not spec.weight_file:
        raise StegoError(f"backbone {name!r} has no official weight file; set {WEIGHTS_OPTION}, or 'random'")
    dirs = search_dirs(weights_dir)
    for d in dirs:
        if (d / spec.weight_file).is_file():
            return d / spec.weight_file
    where = (f"fetch it with `stego weights download {name}`, or put {spec.weight_file} (from {spec.url}) in "
             f"${WEIGHTS_ENV}, or set {WEIGHTS_OPTION}")
    searched = ", ".join(str(d) for d in dirs)
    if spec.access:
        raise MissingWeightsError(f"{name}: weight file {spec.weight_file} not found; its licence requires an access "
                                  f"request at {spec.access} (the download links come by e-mail; never downloaded "
                                  f"automatically), then put the file in ${WEIGHTS_ENV}, or set {WEIGHTS_OPTION} "
                                  f"(searched {searched})")
    if offline() or not spec.url:
        raise MissingWeightsError(f"{name}: weight file {spec.weight_file} not found"
                                  f"{' and offline' if spec.url else ''}; {where} (searched {searched})")
    target = dirs[0] / spec.weight_file
    log.info("downloading %s to %s", spec.url, target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(spec.url, str(target), progress=True)
    except Exception as e:
        raise MissingWeightsError(f"{name}: could not download {spec.weight_file} ({e}); {where}") from e
    return target


def _read(path: Path) -> dict:
    if not path.is_file():
        raise MissingWeightsError(f"weight file {path} does not exist; check the path given in {WEIGHTS_OPTION}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StegoError(f"cannot read weight file {path} ({reason}); re-download it or set another "
                         f"{WEIGHTS_OPTION}") from e
    if not isinstance(obj, dict):
        raise StegoError(f"weight file {path} holds a {type(obj).__name__}, not a state dict")
    return obj


def load_backbone_state_dict(path_or_dict, kind: str) -> dict:
    """Read a weight file (or take a dict) and return the backbone's state dict for `kind` ('vit'/'resnet'/'convnext').

    Unwraps 'teacher' / 'state_dict' / 'model' containers (DINO, MoCo, Lightning); strips 'module.'; keeps only
    the keys under 'net.model.' (STEGO release), 'backbone.' (DINO) or 'encoder_q.' (MoCo) when present;
    drops classifier heads ('head.*' for ViTs and ConvNeXts, 'fc.*' for ResNets, so MoCo's MLP head goes too).
    """
    sd = path_or_dict if isinstance(path_or_dict, dict) else _read(Path(path_or_dict))
    source = "the given state dict" if isinstance(path_or_dict, dict) else str(path_or_dict)
    unwrapped = True
    while unwrapped:
        unwrapped = False
        for key in ("teacher", "state_dict", "model"):
            if isinstance(sd.get(key), dict):
                sd, unwrapped = sd[key], True
                break
    sd = {k.removeprefix("module."): v for k, v in sd.items() if isinstance(k, str) and isinstance(v, Tensor)}
    for prefix in ("net.model.", "backbone.", "encoder_q."):
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    head = {"vit": "head.", "resnet": "fc.", "convnext": "head."}.get(kind)
    if head is None:
        raise StegoError(f"unknown backbone kind {kind!r}; expected 'vit', 'resnet' or 'convnext'")
    sd = {k: v for k, v in sd.items() if not k.startswith(head)}
    if not sd:
        raise StegoError(f"{source} holds no {kind} backbone tensors; is it the right weight file?")
    return sd


def load_strict(trunk: nn.Module, state: dict, source: str, spec: BackboneSpec) -> None:
    """Load `state` into `trunk` only if every key and shape matches; otherwise one line naming the differences."""
    own = trunk.state_dict()
    # old torchvision files predate BatchNorm's num_batches_tracked; BatchNorm fills it in when absent
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        parts = [
            f"{label} {len(keys)} (e.g. {', '.join(keys[:3])})"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
            if keys
        ]
        raise StegoError(
            f"{source} does not match {spec.name}: {'; '.join(parts)}; "
            f"use the {spec.weight_file or 'matching'} weights for this backbone"
        )
    trunk.load_state_dict(state, strict=True)


def load_weights(model, spec: BackboneSpec, weights, weights_dir=None):
    """Fill `model.trunk` from `weights` as `build_backbone` takes them (None, "random", a path or a state dict),
    the release's key names mapped by `spec.adapt`."""
    if isinstance(weights, str) and weights == "random":
        return model
    if isinstance(weights, dict):
        source, state = "the given state dict", load_backbone_state_dict(weights, spec.arch)
    else:
        path = Path(weights) if weights is not None else resolve_weight_file(spec.name, weights_dir)
        source, state = str(path), load_backbone_state_dict(path, spec.arch)
    if spec.adapt is not None:
        state = spec.adapt(state)
    load_strict(model.trunk, state, source, spec)
    log.info("loaded %s weights from %s", spec.name, source)
    return model
