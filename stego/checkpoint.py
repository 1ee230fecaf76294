"""This suite's own checkpoints: what training saves (weights, optimiser states, config, iteration) and how a
checkpoint becomes (config, model, backbone) for evaluation. The authors' released files: stego.released."""
from pathlib import Path

import torch

from . import build
from .config import Config, from_dict, with_overrides
from .errors import MissingFileError, StegoError
from .io import atomic_write

CHECKPOINT_FORMAT = 1
"""Format of the checkpoint dict; a file of another format is refused with what to do."""
MODEL_SHAPE = ("backbone", "dim", "projection", "extra_clusters")
"""Model settings a checkpoint's weights are shaped by: evaluating it under other values cannot work."""


def save_checkpoint(path: Path, model, optimizers, iteration: int, cfg: Config, extra: dict | None = None) -> None:
    """Write the model, optimiser states, config and iteration (plus `extra`) atomically."""
    state = {"format": CHECKPOINT_FORMAT, "iteration": iteration, "model": model.state_dict(),
             "optimizers": [o.state_dict() for o in optimizers], "config": cfg.to_dict(),
             "n_classes": model.n_classes, "in_dim": model.head.in_dim, **(extra or {})}
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by `save_checkpoint` (plain tensors and containers: loads with weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} not found: give a run folder's checkpoint.pt (or a released "
                               f".ckpt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise StegoError(f"checkpoint {path} is unreadable ({type(err).__name__}); it may be truncated: "
                         f"resume from an earlier copy or retrain") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise StegoError(f"{path} is not a checkpoint of this suite (format {CHECKPOINT_FORMAT}); for the authors' "
                         f"release files use `stego eval --checkpoint FILE.ckpt`")
    return state


def load_for_eval(checkpoint, cfg: Config | None = None, trusted: bool = False, overrides=()):
    """(config, model, backbone) from this suite's checkpoint or an authors' released .ckpt.

    Without `cfg` the checkpoint's own config is used; `overrides` (section.key=value) then apply to it. A given
    config must agree with the checkpoint on the settings its weights are shaped by (MODEL_SHAPE).
    """
    path = Path(checkpoint)
    if path.suffix == ".ckpt":
        from .released import released_for_eval

        return released_for_eval(path, cfg, trusted, overrides)
    state = load_checkpoint(path)
    stored = from_dict(state["config"], source=str(path))
    cfg = cfg or with_overrides(stored, list(overrides))
    shaping = [f"model.{k}={getattr(cfg.model, k)!r} (trained with {getattr(stored.model, k)!r})"
               for k in MODEL_SHAPE if getattr(cfg.model, k) != getattr(stored.model, k)]
    if shaping:
        raise StegoError(f"{path} does not fit the given config: {'; '.join(shaping)}; evaluate it without a preset "
                         f"(its own config is used) or with the model settings it was trained with")
    backbone = build.backbone_for(cfg)
    model = build.model_for(cfg, state["in_dim"], state["n_classes"])
    model.load_state_dict(state["model"])
    return cfg, model, backbone
