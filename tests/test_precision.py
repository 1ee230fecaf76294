"""train.precision: 'fp32' (the default, the release's) runs the backbone exactly as the CPU path always did; 'bf16'
autocasts it in training, evaluation, analysis and KNN mining on every device; fp32 on CUDA turns TF32 off; the
setting reaches the train summary, the eval record and the report."""
import contextlib
import json

import pytest
import torch
from torch import nn

import stego.analysis
import stego.inference
import stego.train
from stego import records
from stego.backbones import build_backbone
from stego.checkpoint import load_checkpoint
from stego.config import with_overrides
from stego.data.knn import embed_dataset, mine_knn
from stego.data.synthetic import SceneSpec, make_scenes
from stego.errors import StegoError
from stego.evaluate import run_eval
from stego.inference import tta_code
from stego.runtime import autocast, set_tf32
from stego.runs import RunDir
from stego.train import train
from tests.test_knn import META, TinyImages
from tests.test_train import tiny


def linear_output_dtypes(backbone, x, precision):
    """The dtypes the backbone's Linear layers produce under `autocast('cpu', precision)`, and its output."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.dtype)) for m in backbone.modules()
             if isinstance(m, nn.Linear)]
    try:
        with autocast("cpu", precision):
            out = backbone(x)
    finally:
        for h in hooks:
            h.remove()
    return set(seen), out


def test_bf16_runs_the_backbone_in_bfloat16_on_the_cpu_and_fp32_leaves_it_alone():
    torch.manual_seed(0)
    vit, x = build_backbone("dino_vits16", weights="random"), torch.randn(2, 3, 32, 32)
    inside, out16 = linear_output_dtypes(vit, x, "bf16")
    assert inside == {torch.bfloat16}
    inside, out32 = linear_output_dtypes(vit, x, "fp32")
    assert inside == {torch.float32} and torch.equal(out32, vit(x))  # bitwise the backbone outside any autocast
    assert not torch.equal(out16.float(), out32)


def test_a_bad_precision_is_a_one_line_error_naming_the_key():
    for call in (lambda: autocast("cpu", "fp16"), lambda: set_tf32("cuda", "half")):
        with pytest.raises(StegoError, match=r"^train.precision must be one of fp32, bf16, got '(fp16|half)'$"):
            call()


@pytest.fixture
def tf32_flags():
    """Restore the two TF32 flags after a test that sets them."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_fp32_on_cuda_turns_tf32_off_and_bf16_allows_it(tf32_flags):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    set_tf32(torch.device("cuda"), "fp32")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
    set_tf32("cuda:0", "bf16")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    set_tf32("cpu", "fp32")  # the flags are CUDA's: a CPU run leaves them as they are
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_scenes(tmp_path_factory.mktemp("scenes"), SceneSpec(n_train=12, n_val=3, size=48), seed=5)


def test_fp32_training_is_bitwise_the_path_without_autocast_and_bf16_is_not(scenes, tmp_path, monkeypatch):
    """Today's CPU path ran the backbone with no autocast at all: an fp32 run gives its weights to the bit."""
    cfg = tiny(scenes, iterations=3)
    assert cfg.train.precision == "fp32"  # the default
    bf16 = load_checkpoint(train(with_overrides(cfg, ["train.precision=bf16"]), tmp_path / "bf16"))["model"]
    fp32 = load_checkpoint(train(cfg, tmp_path / "fp32"))["model"]  # reuses the table the bf16 run mined
    with monkeypatch.context() as m:
        m.setattr(stego.train, "autocast", lambda device, precision: contextlib.nullcontext())
        plain = load_checkpoint(train(cfg, tmp_path / "plain"))["model"]
    assert all(torch.equal(fp32[k], plain[k]) for k in plain)
    assert not torch.equal(bf16["head.linear.weight"], fp32["head.linear.weight"])
    with pytest.raises(StegoError, match=r"another config \(differs in train.precision\)"):
        train(with_overrides(cfg, ["train.precision=bf16"]), tmp_path / "fp32", resume=True)
    summaries = {p: records.read(RunDir(tmp_path / p).summary, "train_summary") for p in ("fp32", "bf16")}
    assert {p: s.precision for p, s in summaries.items()} == {"fp32": "fp32", "bf16": "bf16"}
    (table,) = (scenes / "nns").glob("*.pt")  # mined by the bf16 run, in bf16
    assert torch.load(table, weights_only=True)["meta"]["precision"] == "bf16"


def test_eval_runs_in_the_configured_precision_and_its_record_and_report_say_so(scenes, tmp_path, monkeypatch):
    """Evaluation and its analysis pass (example predictions, same-label features) run the backbone in the
    precision evaluation is given; the record holds it and the report lists it."""
    from reports import build_reports

    checkpoint = train(tiny(scenes, iterations=1), tmp_path / "run")
    asked = []

    def recording(device, precision):
        asked.append(precision)
        return autocast(device, precision)

    monkeypatch.setattr(stego.inference, "autocast", recording)
    monkeypatch.setattr(stego.analysis, "autocast", recording)
    for precision in ("fp32", "bf16"):
        asked.clear()
        path = tmp_path / "records" / f"{precision}.json"
        run_eval(None, checkpoint, path, overrides=[f"train.precision={precision}"])
        assert json.loads(path.read_text())["config"]["train"]["precision"] == precision
        assert len(asked) > 2 and set(asked) == {precision}
    build_reports(tmp_path / "records", tmp_path / "report")
    page = next(p for p in (tmp_path / "report").glob("*.md") if p.name != "index.md").read_text()
    assert "| Precision |" in page and "| fp32 |" in page and "| bf16 |" in page


def test_tta_code_and_knn_features_follow_the_precision():
    torch.manual_seed(0)
    from stego.model import Stego

    vit = build_backbone("dino_vits16", weights="random")
    model = Stego(vit.dim, 8, 3).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = vit(torch.cat([images, images.flip(dims=[3])]))
        code = model.head(feats)[1]
    expected = (code[:2] + code[2:].flip(dims=[3])) / 2
    assert torch.equal(tta_code(model, vit, images, "fp32"), expected)
    assert not torch.equal(tta_code(model, vit, images, "bf16"), expected)
    data = TinyImages(n=5)
    data.imgs = torch.nn.functional.interpolate(data.imgs, size=32)
    fp32 = embed_dataset(vit, data, batch_size=5, device="cpu", precision="fp32")
    bf16 = embed_dataset(vit, data, batch_size=5, device="cpu", precision="bf16")
    assert fp32.dtype == bf16.dtype == torch.float32 and not torch.equal(fp32, bf16)


def test_a_table_mined_in_another_precision_serves_with_a_warning(tmp_path, caplog):
    from tests.test_knn import TinyBackbone

    path = tmp_path / "nns" / "t.pt"
    table = mine_knn(TinyBackbone(), TinyImages(), path, META, k=5, device="cpu", precision="bf16")
    assert table.meta["precision"] == "bf16"
    again = mine_knn(TinyBackbone(), TinyImages(), path, META, k=5, device="cpu", precision="fp32")
    assert torch.equal(again.indices, table.indices)
    assert "mined in bf16, not in this run's fp32" in caplog.text and "--precision fp32" in caplog.text
