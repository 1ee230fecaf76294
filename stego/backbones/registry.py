"""The backbone registry: what a backbone name means (`BackboneSpec`), how it is built, and the frozen `Backbone`
interface `images [B,3,H,W] -> features [B, dim, H/p, W/p]` every family implements (docs/protocol.md §1).

Each family module (dino, resnet, filterbank, ...) registers its names with `register_backbone`; pretrained
weight files are found and read by `stego.backbones.weights`, apart from the architectures (timm's split).
"""
import dataclasses
import difflib
from typing import Callable

import torch
from torch import Tensor, nn

from stego.errors import StegoError


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What a backbone name means: its family, state-dict layout ('vit', 'resnet', 'convnext' or 'custom'), output
    shape and official weights.

    access: for licence-gated weights (no `url`), the page where access is requested; they are never downloaded.
    adapt: maps a state dict with the release's own key names to the architecture's (None: same names); it must
    pass the architecture's own keys through unchanged, so our checkpoints load too.
    """

    name: str
    arch: str
    dim: int
    patch: int
    weight_file: str | None = None
    url: str | None = None
    timm_name: str | None = None
    family: str = "custom"
    access: str | None = None
    adapt: Callable[[dict], dict] | None = None


BACKBONES: dict[str, BackboneSpec] = {}
_FACTORIES: dict[str, Callable[..., nn.Module]] = {}


class Backbone(nn.Module):
    """A frozen feature extractor: always eval, no gradients, images [B,3,H,W] -> features [B,dim,H/p,W/p].

    Input must be ImageNet-normalised (the caller's job). Subclasses override `extract`; the default runs
    `trunk`, so any module with that contract can be wrapped (see `register_backbone`).
    """

    def __init__(self, name: str, dim: int, patch: int, trunk: nn.Module):
        super().__init__()
        self.name, self.dim, self.patch = name, dim, patch
        self.trunk = trunk
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True):
        """Stay in eval mode whatever is asked: the backbone is frozen (dropout and BN statistics off)."""
        return super().train(False)

    def extract(self, images: Tensor) -> Tensor:
        return self.trunk(images)

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4:
            raise StegoError(f"{self.name}: expected images [B,3,H,W], got shape {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.patch or w % self.patch:
            raise StegoError(f"{self.name}: image size {h}x{w} is not divisible by the patch/stride {self.patch}; "
                             f"use {nearest_sizes(h, self.patch)} (height) and {nearest_sizes(w, self.patch)} "
                             f"(width), e.g. data.res / eval.res")
        with torch.no_grad():
            feats = self.extract(images)
        want = (images.shape[0], self.dim, h // self.patch, w // self.patch)
        if tuple(feats.shape) != want:
            raise StegoError(f"{self.name}: features have shape {tuple(feats.shape)}, expected {want}")
        return feats


def nearest_sizes(size: int, patch: int) -> str:
    """The multiples of `patch` on either side of `size`, e.g. '224 or 238' for 230 and 14."""
    below = max(patch, size // patch * patch)
    return f"{below} or {below + patch}" if below < size else str(below)


def register_backbone(spec_or_name: BackboneSpec | str, factory: Callable[..., nn.Module]) -> None:
    """Make `build_backbone(name)` call `factory(weights=..., weights_dir=...)`.

    The factory returns a Backbone, or any module mapping images to [B,dim,H/p,W/p]; the latter is wrapped,
    taking dim/patch from the spec, or from the module's `dim` and `patch` attributes when only a name is given.
    """
    spec = spec_or_name if isinstance(spec_or_name, BackboneSpec) else BackboneSpec(spec_or_name, "custom", 0, 0)
    BACKBONES[spec.name] = spec
    _FACTORIES[spec.name] = factory


def spec_of(name: str) -> BackboneSpec:
    """The registered spec of `name`; an unknown name is a one-line error offering the closest names."""
    if name not in BACKBONES:
        close = difflib.get_close_matches(name, BACKBONES, n=3)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise StegoError(f"unknown backbone {name!r}; {hint}choose one of {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name]


def build_backbone(name: str, weights=None, weights_dir=None, seed: int = 0) -> Backbone:
    """Build a frozen backbone by name.

    weights: None -> the official file (stego.backbones.weights.resolve_weight_file; downloaded when online);
    "random" -> random init drawn after torch.manual_seed(seed), the global generator left as it was (tests, toy
    runs: a run's train.seed, so each seed is another backbone); a path -> that file; a dict -> a state dict (e.g.
    from a STEGO checkpoint).
    """
    spec = spec_of(name)
    if isinstance(weights, str) and weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = _FACTORIES[name](weights=weights, weights_dir=weights_dir)
    else:
        module = _FACTORIES[name](weights=weights, weights_dir=weights_dir)
    if isinstance(module, Backbone):
        return module
    dim = spec.dim or getattr(module, "dim", 0)
    patch = spec.patch or getattr(module, "patch", 0)
    if not dim or not patch:
        raise StegoError(f"backbone {spec.name!r}: register it with a BackboneSpec or give the module dim and patch")
    return Backbone(spec.name, dim, patch, module)
