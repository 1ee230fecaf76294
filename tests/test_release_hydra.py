"""Released checkpoints as the authors' code writes them: the config composed by Hydra's own @hydra.main from the
release's train_config.yml structure, saved in Lightning's layout (tests/hydra_release.py), in omegaconf's current
pickle layout (hydra-core 1.3) and in the authors' era's (hydra-core 1.1 / omegaconf 2.1, in a venv of an older
Python, since hydra 1.1 does not import on Python 3.11). Read without Lightning, with and without omegaconf."""
import glob
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import timm
import torch
import yaml

from stego.config import load_config
from stego.released import load_released_checkpoint, released_for_eval
from stego.data.synthetic import SceneSpec, make_scenes
from tests.test_checkpoint import COCO_CFG, release_dict
from tests.test_config import RELEASED

HYDRA_11 = ("hydra-core==1.1.2", "omegaconf==2.1.2")
"""The authors' era: the release's environment.yml asks for hydra-core unpinned in early 2022."""
SCRIPT = Path(__file__).with_name("hydra_release.py")
CONFIG = SCRIPT.parent / "data" / "release_config" / "train_config.yml"
OVERRIDES = ("model_type=vit_small", "dino_patch_size=16", "dim=12")
"""Hydra command-line overrides: a ViT-S/16 so the files evaluate on a CPU in seconds."""
N_CLASSES = 5
LAYOUTS = ("current", "omegaconf-2.1")


def older_python() -> str | None:
    """A Python 3.8-3.10 interpreter: $STEGO_TEST_OLD_PYTHON, one on PATH, or one pyenv installed."""
    candidates = [os.environ.get("STEGO_TEST_OLD_PYTHON"), "python3.10", "python3.9", "python3.8"]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[0]*/bin/python")), reverse=True)
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.[89].*/bin/python")), reverse=True)
    for name in filter(None, candidates):
        path = shutil.which(name) or name
        try:
            ok = subprocess.run([path, "-c", "import sys, venv; assert (3, 8) <= sys.version_info < (3, 11)"],
                                capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            continue
        if ok:
            return path
    return None


@pytest.fixture(scope="session")
def hydra11_python(tmp_path_factory) -> str:
    """A venv with hydra-core 1.1 and omegaconf 2.1 (no torch); .ci/run requires it (STEGO_STRICT_TESTS)."""
    python = older_python()
    if python is None:
        why = "no Python 3.8-3.10 found for hydra-core 1.1 (set STEGO_TEST_OLD_PYTHON to one)"
        pytest.fail(why) if os.environ.get("STEGO_STRICT_TESTS") else pytest.skip(why)
    venv = tmp_path_factory.mktemp("hydra11") / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", *HYDRA_11], check=True)
    return str(venv / "bin" / "python")


def _tensor_folder(state: dict, folder: Path) -> Path:
    """The state dict as raw little-endian files plus index.json, for tests/hydra_release.py."""
    folder.mkdir(parents=True)
    index = {}
    for i, (name, tensor) in enumerate(state.items()):
        (folder / f"{i}.bin").write_bytes(tensor.contiguous().numpy().tobytes())
        index[name] = [str(tensor.dtype).removeprefix("torch."), list(tensor.shape), f"{i}.bin"]
    (folder / "index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture(scope="session")
def source(tmp_path_factory):
    """(state dict, tensor folder): a ViT-S/16 backbone under the release's key names, head and probes."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", num_classes=0)
    cfg = {**COCO_CFG, "model_type": "vit_small", "dino_patch_size": 16, "dim": 12}
    state = release_dict(cfg, n_classes=N_CLASSES, backbone=vit.state_dict())[0]["state_dict"]
    return state, _tensor_folder(state, tmp_path_factory.mktemp("release-tensors") / "t")


@pytest.fixture(scope="session")
def files(tmp_path_factory, source, hydra11_python):
    """{(layout, lightning version): checkpoint file} written by Hydra-composed configs."""
    out, pythons = tmp_path_factory.mktemp("hydra-files"), {"current": sys.executable, "omegaconf-2.1": hydra11_python}
    made = {}
    for layout in LAYOUTS:
        for lightning in ("1.4", "1.5"):
            path = out / f"{layout}-{lightning}" / "cocostuff27_vit_base_5.ckpt"
            path.parent.mkdir()
            run = subprocess.run([pythons[layout], str(SCRIPT), str(path), str(source[1]), lightning, *OVERRIDES],
                                 cwd=path.parent, capture_output=True, text=True, timeout=300)
            assert run.returncode == 0, run.stderr[-3000:]
            made[layout, lightning] = path
    return made


def _pickle_of(path: Path) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))


def test_the_files_are_what_hydra_and_lightning_write(files):
    """The config pickles omegaconf's classes and a non-empty resolver cache (the ${now:...} values Hydra resolved)
    as a defaultdict; Lightning < 1.5 keys the callback state by the ModelCheckpoint class."""
    for (layout, lightning), path in files.items():
        names = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        assert {"collections.defaultdict", "omegaconf.dictconfig.DictConfig", "omegaconf.nodes.AnyNode"} <= names
        data = _pickle_of(path)
        assert b"%Y-%m-%d" in data and b"%H-%M-%S" in data, (layout, lightning)
        callback_class = "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint" in names
        assert callback_class == (lightning == "1.4")
    assert _pickle_of(files["current", "1.4"]) != _pickle_of(files["omegaconf-2.1", "1.4"])


def _expected_cfg() -> dict:
    """The composed config as omegaconf reads the YAML (1e-4 style numbers are floats), with the overrides."""
    values = yaml.safe_load(CONFIG.read_text())
    del values["hydra"]
    values.update(lr=5e-4, model_type="vit_small", dino_patch_size=16, dim=12,
                  full_name=f"{values['log_dir']}/{values['dataset_name']}_{values['experiment_name']}")
    return values


@pytest.mark.parametrize("omegaconf_importable", [True, False], ids=["omegaconf", "no-omegaconf"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("lightning", ["1.4", "1.5"])
def test_hydra_composed_checkpoints_load_without_trust(files, source, layout, lightning, omegaconf_importable,
                                                       monkeypatch):
    if not omegaconf_importable:
        monkeypatch.setitem(sys.modules, "omegaconf", None)
    ck = load_released_checkpoint(files[layout, lightning])
    assert ck.hparams == {"n_classes": N_CLASSES, "cfg": _expected_cfg()}
    assert ck.backbone_name == "dino_vits16" and ck.n_classes == N_CLASSES
    assert ck.config_overrides["loss"]["lambda_rand"] == 0.1538476246415498
    assert ck.config_overrides["train"] == {"batch_size": 32, "iterations": 7000, "lr": 5e-4}
    state = source[0]
    assert torch.equal(ck.linear_state["conv.weight"], state["linear_probe.weight"])
    assert all(torch.equal(ck.backbone_state[k[len("net.model."):]], v) for k, v in state.items()
               if k.startswith("net.model."))


BLOCKED_OMEGACONF = ("import sys; sys.modules['omegaconf'] = None; from stego.cli import main; "
                     "sys.exit(main(sys.argv[1:]))")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_readme_eval_command_on_a_hydra_file_without_omegaconf(files, layout, tmp_path_factory):
    """`stego eval --checkpoint cocostuff27_vit_base_5.ckpt data.root=DATA` as the README gives it, no trust flag."""
    scenes = make_scenes(tmp_path_factory.mktemp("scenes"), SceneSpec(n_classes=N_CLASSES, n_train=4, n_val=3,
                                                                      size=48), seed=1)
    record = tmp_path_factory.mktemp("eval") / "record.json"
    argv = ["eval", "--checkpoint", str(files[layout, "1.4"]), f"data.root={scenes}", "data.dataset=synthetic",
            "data.workers=0", "eval.res=48", "--no-crf", "--record", str(record)]
    run = subprocess.run([sys.executable, "-c", BLOCKED_OMEGACONF, *argv], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    saved = json.loads(record.read_text())
    assert saved["metrics"]["images"] == 3 and saved["config"]["model"]["dim"] == 12
    assert saved["config"]["loss"]["lambda_rand"] == 0.1538476246415498


RELEASE_LOSS_KEYS = {"lambda_rand": "neg_inter_weight", "lambda_knn": "pos_inter_weight",
                     "lambda_self": "pos_intra_weight", "b_rand": "neg_inter_shift", "b_knn": "pos_inter_shift",
                     "b_self": "pos_intra_shift"}
"""Our loss keys -> the release's train_config.yml keys."""
RELEASE_BLOCKS = {
    "cocostuff27_release": (),  # the block train_config.yml holds
    "cityscapes27_release": ("dataset_name=cityscapes", "pointwise=false"),
    "potsdam3_release": ("dataset_name=potsdam", "crop_type=null", "batch_size=16", "max_steps=5000"),
}
"""Hydra overrides that turn the test file's config into each release block (the Cityscapes and Potsdam blocks)."""


def _block_overrides(preset: str) -> list:
    """The block's settings plus its six loss values, as docs/protocol.md §5 prints them (tests/test_config.py)."""
    values = dict(zip(RELEASE_LOSS_KEYS, RELEASED[preset][:6]))
    return [*RELEASE_BLOCKS[preset], *(f"{RELEASE_LOSS_KEYS[k]}={v!r}" for k, v in values.items())]


@pytest.mark.parametrize("preset", sorted(RELEASE_BLOCKS))
def test_a_released_checkpoint_of_each_block_imports_as_its_release_preset(source, preset, tmp_path):
    """A checkpoint whose config Hydra composed from the release's block imports (the path `stego eval` takes) as
    the `*_release` preset, every loss value to its last digit, every data and training setting alike; the model
    section is the test file's small ViT-S/16."""
    path = tmp_path / f"{preset}.ckpt"
    run = subprocess.run([sys.executable, str(SCRIPT), str(path), str(source[1]), "1.5", *OVERRIDES,
                          *_block_overrides(preset)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert load_released_checkpoint(path).hparams["cfg"]["neg_inter_weight"] == RELEASED[preset][0]
    imported = released_for_eval(path, None, trusted=False)[0]
    want = load_config(preset)
    assert (imported.loss, imported.data, imported.train) == (want.loss, want.data, want.train)
    assert (imported.model.backbone, imported.model.dim) == ("dino_vits16", 12)
