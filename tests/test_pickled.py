"""Released checkpoints whose config is pickled as omegaconf objects: read with omegaconf and with the stand-ins
(without omegaconf installed), and other pickled objects kept as inert placeholders (stego.pickled)."""
import collections
import json
import os
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
import torch

from stego.errors import StegoError
from stego.released import load_released_checkpoint
from tests.test_checkpoint import SMALL_CFG, one_line_error, release_dict, write

REPO = Path(__file__).resolve().parents[1]


def look_alike_modules(extra: dict | None = None) -> dict:
    """Modules named like omegaconf's (and any in `extra`) holding empty classes, so that torch.save writes the same
    pickle GLOBALs as the real classes without omegaconf installed."""
    layout = {"omegaconf": [], "omegaconf.dictconfig": ["DictConfig"], "omegaconf.listconfig": ["ListConfig"],
              "omegaconf.nodes": ["AnyNode"], "omegaconf.base": ["Metadata", "ContainerMetadata"], **(extra or {})}
    modules = {}
    for name, classes in layout.items():
        module = types.ModuleType(name)
        for cls in classes:
            setattr(module, cls, type(cls, (), {"__module__": name}))
        modules[name] = module
    return modules


def look_alike_config(value, mods, key=None, parent=None, flags=None):
    """An object graph with omegaconf 2.1's pickled state layout (as `pickletools.dis` shows it) for `value`."""
    base = mods["omegaconf.base"]

    def metadata(cls, **more):
        meta = cls()
        meta.__dict__.update(ref_type=typing.Any, object_type=None, optional=True, key=key, flags=flags or {},
                             flags_root=False, resolver_cache=collections.defaultdict(dict), **more)
        return meta

    if isinstance(value, (dict, list)):
        is_dict = isinstance(value, dict)
        node = (mods["omegaconf.dictconfig"].DictConfig if is_dict else mods["omegaconf.listconfig"].ListConfig)()
        node.__dict__.update(_metadata=metadata(base.ContainerMetadata, key_type=typing.Any if is_dict else int,
                                                element_type=typing.Any), _parent=parent)
        items = value.items() if is_dict else enumerate(value)
        children = {k: look_alike_config(v, mods, k, node) for k, v in items}
        node._content = children if is_dict else list(children.values())
        return node
    node = mods["omegaconf.nodes"].AnyNode()
    node.__dict__.update(_metadata=metadata(base.Metadata), _parent=parent, _val=value)
    return node


def save_with_look_alikes(monkeypatch, path, ckpt, mods):
    with monkeypatch.context() as m:
        for name, module in mods.items():
            m.setitem(sys.modules, name, module)
        torch.save(ckpt, path)


def test_dictconfig_read_without_omegaconf(tmp_path, monkeypatch):
    mods = look_alike_modules()
    ckpt, lit = release_dict(SMALL_CFG)
    ckpt["hyper_parameters"]["cfg"] = look_alike_config(SMALL_CFG, mods, flags={"struct": True})
    path = tmp_path / "dictconfig.ckpt"
    save_with_look_alikes(monkeypatch, path, ckpt, mods)
    globs = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    assert {"omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig", "omegaconf.nodes.AnyNode",
            "omegaconf.base.Metadata", "omegaconf.base.ContainerMetadata", "typing.Any"} <= globs
    monkeypatch.setitem(sys.modules, "omegaconf", None)  # `import omegaconf` now fails even where it is installed
    ck = load_released_checkpoint(path)
    assert ck.hparams == {"n_classes": 3, "cfg": SMALL_CFG}
    assert ck.config_overrides["loss"]["b_rand"] == 0.76
    head = ck.build_modules()[0]
    feats = torch.randn(1, 384, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(head(feats)[1], lit.eval().code(feats), rtol=0, atol=1e-5)


def test_callback_state_of_old_lightning_needs_no_trust(tmp_path, monkeypatch):
    """A Lightning <=1.4 file keys callback states by the callback class: evaluation never reads them, so they are
    inert placeholders without --trust-checkpoint; the same object inside the hyper-parameters needs trust."""
    mods = look_alike_modules({"pytorch_lightning": [], "pytorch_lightning.callbacks": [],
                               "pytorch_lightning.callbacks.model_checkpoint": ["ModelCheckpoint"]})
    callback = mods["pytorch_lightning.callbacks.model_checkpoint"].ModelCheckpoint
    instance = callback()
    instance.dirpath = "../checkpoints"
    ckpt, _ = release_dict(SMALL_CFG)
    ckpt["callbacks"] = {callback: {"best_model_score": torch.tensor(0.3)}, "instance": instance}
    path = tmp_path / "callbacks.ckpt"
    save_with_look_alikes(monkeypatch, path, ckpt, mods)
    monkeypatch.setitem(sys.modules, "omegaconf", None)
    monkeypatch.setitem(sys.modules, "pytorch_lightning", None)
    ck = load_released_checkpoint(path)
    assert ck.hparams == {"n_classes": 3, "cfg": SMALL_CFG}
    assert ck.config_overrides["model"]["dim"] == 70
    ckpt["hyper_parameters"]["callback"] = instance
    path = tmp_path / "hparams.ckpt"
    save_with_look_alikes(monkeypatch, path, ckpt, mods)
    with pytest.raises(StegoError) as e:
        load_released_checkpoint(path)
    one_line_error(e, str(path), "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint", "--trust-checkpoint")
    assert load_released_checkpoint(path, trusted=True).config_overrides["model"]["dim"] == 70


def _omegaconf_sites() -> list:
    sites = [s for s in os.environ.get("STEGO_OMEGACONF_SITE", "").split(os.pathsep) if s]
    try:
        import omegaconf  # noqa: F401
        sites.append("")
    except ImportError:
        pass
    reason = ("omegaconf is not installed: pip install omegaconf, or pip install --target DIR omegaconf and set "
              "STEGO_OMEGACONF_SITE=DIR (several DIRs joined by os.pathsep test several versions)")
    return sites or [pytest.param(None, marks=pytest.mark.skip(reason=reason))]


WRITE_WITH_OMEGACONF = """
import json, sys, torch
import omegaconf
from omegaconf import OmegaConf
from stego.released import load_released_checkpoint
src, dst = sys.argv[1:3]
raw = torch.load(src, weights_only=True)
cfg = OmegaConf.create(raw["hyper_parameters"]["cfg"])
OmegaConf.set_struct(cfg, True)
raw["hyper_parameters"]["cfg"] = cfg
torch.save(raw, dst)
calls, to_container = [], OmegaConf.to_container
OmegaConf.to_container = lambda *a, **k: calls.append(1) or to_container(*a, **k)
ck = load_released_checkpoint(dst)
print(json.dumps({"version": omegaconf.__version__, "calls": len(calls), "hparams": ck.hparams,
                  "globals": torch.serialization.get_unsafe_globals_in_checkpoint(dst)}))
"""


@pytest.mark.parametrize("site", _omegaconf_sites())
def test_real_dictconfig_read_by_omegaconf_and_by_stand_ins(tmp_path, monkeypatch, site):
    """A real omegaconf DictConfig file: omegaconf's reading (in a subprocess) and the stand-ins' agree."""
    src = write(tmp_path, release_dict(SMALL_CFG)[0], "plain.ckpt")
    dst = tmp_path / "dictconfig.ckpt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (site, str(REPO)) if p)}
    run = subprocess.run([sys.executable, "-c", WRITE_WITH_OMEGACONF, str(src), str(dst)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert "omegaconf.dictconfig.DictConfig" in report["globals"] and report["calls"] >= 1
    assert report["hparams"] == {"n_classes": 3, "cfg": SMALL_CFG}
    monkeypatch.setitem(sys.modules, "omegaconf", None)
    assert load_released_checkpoint(dst).hparams == {"n_classes": 3, "cfg": SMALL_CFG}
