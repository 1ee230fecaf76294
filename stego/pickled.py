"""Read a torch checkpoint that pickles omegaconf configs (the authors' Lightning files) without running anything
from it and without omegaconf installed.

The files are read with torch's weights-only unpickler. The stored config is an omegaconf `DictConfig`: omegaconf
rebuilds it when it is installed, otherwise inert stand-in classes keep its state and `to_plain` turns it into
plain dicts. Any other pickled object (e.g. the Lightning callback class that old Lightning files key their
callback state by) becomes an inert placeholder, never run; `inert_globals` lets the caller refuse placeholders
where it needs real values.
"""
import importlib
import logging
import re
import typing
import zipfile
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

def _plain_defaultdict(default_factory=None, *args):
    """omegaconf's resolver cache is a `defaultdict`, which the weights-only unpickler cannot fill (it sets items of
    plain dicts only): it is read as a plain dict, the values it held (resolved `${now:...}`) kept."""
    return {}


PLAIN_GLOBALS = {
    "typing.Any": typing.Any,
    "typing.Dict": typing.Dict,
    "typing.List": typing.List,
    "collections.defaultdict": _plain_defaultdict,
    **{f"builtins.{t.__name__}": t for t in (int, float, complex, str, bytes, bool, dict, list, tuple, set, frozenset)},
}
"""Harmless globals omegaconf metadata pickles (type markers, its resolver cache) that torch does not allow itself."""


class _Inert:
    """Placeholder for an unrecognised pickled class or function: keeps what it was given, runs nothing."""

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


def read_checkpoint(path: Path):
    """torch.load with the weights-only unpickler, omegaconf classes (real, or stand-ins when omegaconf is absent
    or cannot rebuild the file's layout) and inert placeholders for any other pickled global: nothing from the
    file runs. `inert_globals` says where placeholders landed. A file that cannot be read is a one-line StegoError
    saying why: empty, truncated, damaged, not a torch file, or whole but pickling what this reader refuses."""
    damage = _damage(Path(path), None) if zipfile.is_zipfile(path) else None  # torch.load checks no CRCs
    if damage:
        raise StegoError(f"cannot read checkpoint {path}: {damage}; download or copy it again")
    try:
        foreign = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as e:
        raise _unreadable(path, e) from None
    real = _omegaconf_classes([n for n in foreign if n in OMEGACONF_STANDINS])
    if real:
        try:
            return _load(path, _allowlist(foreign, real))
        except Exception as e:
            log.debug("omegaconf could not rebuild the config of %s (%s); reading it with stand-ins", path, _reason(e))
    try:
        return _load(path, _allowlist(foreign, None))
    except Exception as e:
        raise _unreadable(path, e) from None


def _load(path: Path, allow: list):
    with torch.serialization.safe_globals(allow):
        return torch.load(path, map_location="cpu", weights_only=True)


def _allowlist(names: list[str], omegaconf: dict | None) -> list:
    """safe_globals entries for `names`: omegaconf's classes (`omegaconf`, else stand-ins), harmless plain globals,
    and an inert placeholder class for every other name."""
    allow = []
    for name in sorted(names):
        if name in OMEGACONF_STANDINS:
            allow.append((omegaconf[name] if omegaconf else OMEGACONF_STANDINS[name], name))
        elif name in PLAIN_GLOBALS:
            allow.append((PLAIN_GLOBALS[name], name))
        else:
            allow.append((type(name.rsplit(".", 1)[-1], (_Inert,), {"global_name": name}), name))
    return allow


def inert_globals(*objects) -> list[str]:
    """The pickled globals read as inert placeholders anywhere inside `objects` (as values or dict keys)."""
    found, stack = set(), list(objects)
    while stack:
        obj = stack.pop()
        if isinstance(obj, type) and issubclass(obj, _Inert):
            found.add(obj.global_name)
        elif isinstance(obj, _Inert):
            found.add(obj.global_name)
            stack += [*obj.args, getattr(obj, "state", None)]
        elif isinstance(obj, dict):
            stack += [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack += list(obj)
        elif isinstance(obj, _StandIn):
            stack += list(obj.__dict__.values())
    return sorted(found)


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


def _unreadable(path: Path, err: Exception) -> StegoError:
    """The one-line error for a checkpoint torch could not read, naming the real cause."""
    damage = _damage(Path(path), err)
    if damage:
        return StegoError(f"cannot read checkpoint {path}: {damage}; download or copy it again")
    return StegoError(f"cannot read checkpoint {path}: the file is whole, but it pickles something this reader "
                      f"refuses ({_reason(err)}); it is not a checkpoint of this suite or of the STEGO release")


def _damage(path: Path, err: Exception | None) -> str | None:
    """What is wrong with the file itself (empty, truncated, damaged, another format), or None if it is whole; a zip
    is read through once to check every member's CRC (`err`: what reading it raised, for the legacy format)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    if size == 0:
        return "the file is empty"
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            return (f"the file is truncated ({size:,} bytes and no zip directory at its end: a download or copy "
                    "stopped early)")
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            return f"the file is damaged ({_reason(e)})"
        return f"the file is damaged (its member {bad} fails the zip CRC check)" if bad else None
    if head[:1] == b"\x80":  # torch's legacy (pre-1.6) format: a pickle stream
        ended = isinstance(err, EOFError) or any(w in str(err) for w in ("Ran out of input", "truncated"))
        return f"the file is truncated ({size:,} bytes; the pickle stream ends early)" if ended else None
    what = "an HTML page (a failed download?)" if head.lstrip().startswith(b"<") else f"starts with {head!r}"
    return f"it is not a torch checkpoint ({what})"


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
    """A one-line cause from an exception; torch's weights-only refusals put theirs after 'WeightsUnpickler error:'."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    found = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
    line = found.group(1) if found else (text.splitlines()[0] if text else "")
    return line[:300] or type(e).__name__
