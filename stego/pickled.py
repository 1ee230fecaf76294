"""Read a torch checkpoint that pickles omegaconf configs (the authors' Lightning files) without running anything
from it and without omegaconf installed.

The files are read with torch's weights-only unpickler. The stored config is an omegaconf `DictConfig`: omegaconf
rebuilds it when it is installed, otherwise inert stand-in classes keep its state and `to_plain` turns it into
plain dicts. Any other pickled object (e.g. a Lightning callback class) is refused unless `trusted=True`; even then
it is only kept as an inert placeholder, never run.
"""
import collections
import importlib
import logging
import typing
from pathlib import Path

import torch

from .errors import StegoError

log = logging.getLogger(__name__)


class _StandIn:
    """Inert stand-in for a pickled omegaconf object: keeps the pickled state, runs nothing."""

    def __setstate__(self, state):
        self.__dict__.update(state)


class _DictConfig(_StandIn):
    """omegaconf.DictConfig: `_content` maps keys to child nodes (or is None, '???' or an interpolation)."""


class _ListConfig(_StandIn):
    """omegaconf.ListConfig: `_content` is a list of child nodes (or None, '???' or an interpolation)."""


class _ValueNode(_StandIn):
    """omegaconf's leaf nodes (AnyNode, StringNode, ...): the value is in `_val`."""


class _Metadata(_StandIn):
    """omegaconf.base.Metadata / ContainerMetadata (types, flags): not needed for the values."""


OMEGACONF_STANDINS = {
    "omegaconf.dictconfig.DictConfig": _DictConfig,
    "omegaconf.listconfig.ListConfig": _ListConfig,
    "omegaconf.base.Metadata": _Metadata,
    "omegaconf.base.ContainerMetadata": _Metadata,
    **{f"omegaconf.nodes.{name}": _ValueNode for name in (
        "AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode", "EnumNode",
        "UnionNode", "ValueNode", "InterpolationResultNode")},
}
"""Every omegaconf class a pickled config may name, with its stand-in."""

PLAIN_GLOBALS = {
    "typing.Any": typing.Any,
    "typing.Dict": typing.Dict,
    "typing.List": typing.List,
    "collections.defaultdict": collections.defaultdict,
    **{f"builtins.{t.__name__}": t for t in (int, float, complex, str, bytes, bool, dict, list, tuple, set, frozenset)},
}
"""Harmless globals omegaconf metadata pickles (type markers, its resolver cache) that torch does not allow itself."""


class _Inert:
    """Placeholder for an unrecognised pickled class or function (trusted files only): keeps what it was given."""

    global_name = ""

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args = args
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<inert {self.global_name}>"


def read_checkpoint(path: Path, trusted: bool):
    """torch.load with the weights-only unpickler, omegaconf classes (real or stand-ins) and, when `trusted`,
    inert placeholders for any other pickled global; a damaged or untrusted file is a one-line StegoError."""
    try:
        foreign = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as e:
        raise StegoError(f"cannot read checkpoint {path} ({_reason(e)}): the file is damaged, truncated or not "
                         f"a torch checkpoint; download it again") from e
    allow, unknown = _allowlist(foreign)
    if unknown and not trusted:
        raise StegoError(
            f"{path} holds pickled objects other than tensors and configs ({few(unknown)}); checkpoint files are "
            f"pickles, so load them only from a source you trust, then pass trusted=True (--trust-checkpoint) to "
            f"read those objects as inert placeholders"
        )
    try:
        with torch.serialization.safe_globals(allow):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise StegoError(f"cannot read checkpoint {path} ({_reason(e)}): the file is damaged, truncated or not "
                         f"a torch checkpoint; download it again") from e


def _allowlist(names: list[str]) -> tuple[list, list[str]]:
    """(safe_globals entries for `names`, the names that are unrecognised and get inert placeholders)."""
    omega = [n for n in names if n in OMEGACONF_STANDINS]
    real = _omegaconf_classes(omega)
    allow, unknown = [], []
    for name in sorted(names):
        if name in OMEGACONF_STANDINS:
            allow.append((real[name] if real else OMEGACONF_STANDINS[name], name))
        elif name in PLAIN_GLOBALS:
            allow.append((PLAIN_GLOBALS[name], name))
        else:
            unknown.append(name)
            allow.append((type(name.rsplit(".", 1)[-1], (_Inert,), {"global_name": name}), name))
    if omega:
        log.debug("omegaconf classes %s read with %s", ", ".join(sorted(omega)), "omegaconf" if real else "stand-ins")
    return allow, unknown


def _omegaconf_classes(names: list[str]) -> dict | None:
    """The installed omegaconf's classes for `names`, or None (use stand-ins) if omegaconf or one of them is absent."""
    if not names:
        return None
    try:
        importlib.import_module("omegaconf")
    except ImportError:
        return None
    found = {}
    for name in names:
        module, attr = name.rsplit(".", 1)
        try:
            found[name] = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            return None
    return found


def to_plain(obj):
    """Turn omegaconf configs (real or stand-ins) inside `obj` into plain dicts/lists; interpolations stay strings."""
    if isinstance(obj, (_DictConfig, _ListConfig)):
        content = obj.__dict__.get("_content")
        if isinstance(content, dict):
            return {k: to_plain(v) for k, v in content.items()}
        if isinstance(content, list):
            return [to_plain(v) for v in content]
        return content
    if isinstance(obj, _ValueNode):
        return to_plain(obj.__dict__.get("_val"))
    if type(obj).__module__.startswith("omegaconf."):
        omegaconf = importlib.import_module("omegaconf")
        if omegaconf.OmegaConf.is_config(obj):
            return omegaconf.OmegaConf.to_container(obj, resolve=False)
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj


def few(keys, n: int = 4) -> str:
    """The first `n` of `keys`, sorted, and how many more: for one-line errors."""
    keys = sorted(map(str, keys))
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _reason(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0][:200] if text else "") or type(e).__name__
