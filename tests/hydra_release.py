"""Write a checkpoint the way the STEGO release's training script did: its config composed by Hydra's own
`@hydra.main` (train_config.yml of the release's structure), stored in Lightning's checkpoint layout.

    python tests/hydra_release.py OUT.ckpt TENSORS LIGHTNING [hydra overrides ...]

TENSORS: a folder with index.json ({name: [dtype, shape, file]}) and each tensor's raw little-endian bytes: the
state dict. LIGHTNING: "1.4" keys the callback state by the ModelCheckpoint class, as Lightning < 1.5 did; "1.5"
by its state key string. Runs in this suite's environment (torch.save; the current hydra-core and omegaconf) and
in a torch-less one of the authors' era (hydra-core 1.1, omegaconf 2.1), where the file is written in torch's zip
format by hand (`save_without_torch`), so both pickle layouts of the config are what omegaconf itself produced.
"""
import collections
import io
import json
import pickle
import sys
import types
import zipfile
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

STORAGES = {"float32": "FloatStorage", "float64": "DoubleStorage", "int64": "LongStorage"}
SIZES = {"float32": 4, "float64": 8, "int64": 8}


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def lightning_model_checkpoint():
    """A class named like Lightning's ModelCheckpoint, so pickle writes the GLOBAL a real Lightning file holds."""
    cls = type("ModelCheckpoint", (), {"__module__": "pytorch_lightning.callbacks.model_checkpoint"})
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks"):
        _module(name)
    _module("pytorch_lightning.callbacks.model_checkpoint", ModelCheckpoint=cls)
    return cls


class RawStorage:
    """A tensor's bytes, pickled by `save_without_torch` as a persistent storage id (a data/<key> zip member)."""

    def __init__(self, dtype: str, data: bytes):
        self.dtype, self.data = dtype, data


class RawTensor:
    """A tensor held as bytes, pickled as torch pickles a tensor (torch._utils._rebuild_tensor_v2 of a storage)."""

    def __init__(self, dtype: str, shape: list, data: bytes):
        self.shape, self.storage = tuple(shape), RawStorage(dtype, data)

    def __reduce_ex__(self, protocol):
        stride, step = [], 1
        for size in reversed(self.shape):
            stride.insert(0, step)
            step *= size
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (self.storage, 0, self.shape, tuple(stride), False, collections.OrderedDict())


def save_without_torch(obj, path: Path) -> None:
    """torch.save's zip format (data.pkl with storage persistent ids, data/<key>, byteorder, version) by hand."""
    torch = _module("torch", **{name: type(name, (), {"__module__": "torch"}) for name in STORAGES.values()})
    _module("torch._utils", _rebuild_tensor_v2=lambda *args: None)
    torch._utils = sys.modules["torch._utils"]
    sys.modules["torch._utils"]._rebuild_tensor_v2.__module__ = "torch._utils"
    sys.modules["torch._utils"]._rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    storages = []

    class Pickler(pickle.Pickler):
        def persistent_id(self, item):
            if not isinstance(item, RawStorage):
                return None
            storages.append(item.data)
            numel = len(item.data) // SIZES[item.dtype]
            return "storage", getattr(torch, STORAGES[item.dtype]), str(len(storages) - 1), "cpu", numel

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buffer.getvalue())
        z.writestr("archive/byteorder", "little")
        for key, data in enumerate(storages):
            z.writestr(f"archive/data/{key}", data)
        z.writestr("archive/version", "3\n")


def read_tensors(folder: Path, with_torch: bool) -> collections.OrderedDict:
    index = json.loads((folder / "index.json").read_text())
    out = collections.OrderedDict()
    for name, (dtype, shape, file) in index.items():
        data = (folder / file).read_bytes()
        if with_torch:
            import torch

            out[name] = torch.frombuffer(bytearray(data), dtype=getattr(torch, dtype)).reshape(shape).clone()
        else:
            out[name] = RawTensor(dtype, shape, data)
    return out


def lightning_checkpoint(cfg: DictConfig, state: dict, n_classes: int, lightning: str, score) -> dict:
    """What Lightning's checkpoint connector dumps for the release's LitUnsupervisedSegmenter(n_classes, cfg)."""
    best = {"monitor": "test/cluster/mIoU", "best_model_score": score, "best_model_path": "../checkpoints/x.ckpt",
            "current_score": score, "dirpath": "../checkpoints/x"}
    key = lightning_model_checkpoint() if lightning == "1.4" else (
        "ModelCheckpoint{'monitor': 'test/cluster/mIoU', 'mode': 'max', 'every_n_train_steps': 400, "
        "'every_n_epochs': 0, 'train_time_interval': None, 'save_on_train_epoch_end': False}")
    return {"epoch": 4, "global_step": 7000, "pytorch-lightning_version": f"{lightning}.9", "state_dict": state,
            "callbacks": {key: best}, "optimizer_states": [], "lr_schedulers": [], "hparams_name": "kwargs",
            "hyper_parameters": {"n_classes": n_classes, "cfg": cfg}}


OUT, TENSORS, LIGHTNING = Path(sys.argv.pop(1)), Path(sys.argv.pop(1)), sys.argv.pop(1)


@hydra.main(config_path="data/release_config", config_name="train_config.yml")
def my_app(cfg: DictConfig) -> None:
    """The release's entry point, up to the model: the same calls on the composed config."""
    OmegaConf.set_struct(cfg, False)
    cfg.full_name = f"{cfg.log_dir}/{cfg.dataset_name}_{cfg.experiment_name}"
    try:
        import torch
    except ImportError:
        torch = None
    state = read_tensors(TENSORS, torch is not None)
    n_classes = state["linear_probe.weight"].shape[0]
    score = torch.tensor(0.28) if torch is not None else RawTensor("float32", [], b"\x29\x5c\x8f\x3e")
    ckpt = lightning_checkpoint(cfg, state, n_classes, LIGHTNING, score)
    if torch is not None:
        torch.save(ckpt, OUT)
    else:
        save_without_torch(ckpt, OUT)


if __name__ == "__main__":
    my_app()
