"""`stego eval --checkpoint <released>.ckpt`: a release-layout file evaluates end to end without Lightning."""
import json

import pytest
import timm
import torch

from stego.cli import main
from stego.config import from_dict
from stego.data.synthetic import SceneSpec, make_scenes
from stego.checkpoint import load_for_eval
from stego.inference import tta_code
from tests.test_checkpoint import COCO_CFG, release_dict, write


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_scenes(tmp_path_factory.mktemp("scenes"), SceneSpec(n_train=8, n_val=4, size=48), seed=2)


def test_released_checkpoint_evaluates_with_the_release_modules(scenes, tmp_path):
    vit = timm.create_model("vit_small_patch16_224", num_classes=0)
    cfg = {**COCO_CFG, "model_type": "vit_small", "dino_patch_size": 16, "dim": 12}
    ckpt, lit = release_dict(cfg, n_classes=5, backbone=vit.state_dict())
    path = write(tmp_path, ckpt, "cocostuff27_vit_base_5.ckpt")
    ours = from_dict({"data": {"dataset": "synthetic", "root": str(scenes), "workers": 0},
                      "eval": {"res": 48, "crf": False, "batch_size": 2}})
    cfg_out, model, backbone = load_for_eval(path, ours)
    assert cfg_out.model.dim == 12 and cfg_out.loss.lambda_rand == pytest.approx(0.1538476246415498)
    assert cfg_out.data.dataset == "synthetic"
    images = torch.randn(2, 3, 224, 224)  # the native grid: no position-embedding resize on either side
    with torch.no_grad():
        feats = vit.forward_features(torch.cat([images, images.flip(3)]))[:, 1:]
        feats = feats.transpose(1, 2).reshape(4, 384, 14, 14)
        code = lit.eval().code(feats)
    expected = (code[:2] + code[2:].flip(3)) / 2
    torch.testing.assert_close(tta_code(model.eval(), backbone, images, "fp32"), expected, rtol=1e-4, atol=1e-4)


def test_eval_command_writes_a_record_for_a_released_file(scenes, tmp_path, monkeypatch):
    vit = timm.create_model("vit_small_patch16_224", num_classes=0)
    cfg = {**COCO_CFG, "model_type": "vit_small", "dino_patch_size": 16, "dim": 12}
    path = write(tmp_path, release_dict(cfg, n_classes=5, backbone=vit.state_dict())[0])
    record = tmp_path / "record.json"
    argv = ["eval", "--checkpoint", str(path), f"data.root={scenes}", "data.dataset=synthetic", "data.workers=0",
            "eval.res=48", "--no-crf", "--record", str(record)]
    assert main(argv) == 0
    saved = json.loads(record.read_text())
    assert saved["metrics"]["images"] == 4 and saved["config"]["model"]["backbone"] == "dino_vits16"
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.ckpt")]) == 2
