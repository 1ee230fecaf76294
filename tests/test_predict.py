"""`stego predict` on a folder of user images: outputs aligned with the inputs; bad files named."""
import numpy as np
import pytest
from PIL import Image

from stego.cli import main
from stego.config import from_dict
from stego.data.synthetic import SceneSpec, make_scenes
from stego.errors import StegoError
from stego.predict import network_size, predict_folder
from stego.train import train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = make_scenes(tmp_path_factory.mktemp("scenes"), SceneSpec(n_train=12, n_val=4, size=64), seed=1)
    cfg = from_dict({
        "data": {"dataset": "synthetic", "root": str(root), "res": 32, "workers": 0, "knn_k": 5, "num_neighbors": 3},
        "model": {"backbone": "dino_vits16", "weights": "random", "dim": 8},
        "loss": {"feature_samples": 3, "neg_samples": 1},
        "train": {"batch_size": 4, "iterations": 2},
        "eval": {"res": 48, "crf_workers": 0},
    })
    return train(cfg, tmp_path_factory.mktemp("run"))


def test_network_size_keeps_aspect_and_patch_multiples():
    assert network_size(640, 480, 320, 8) == (424, 320)
    assert network_size(100, 300, 48, 16) == (48, 144)


def test_predict_writes_aligned_label_maps_and_overlays(checkpoint, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"a": (50, 70), "b": (64, 33)}
    for stem, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / f"{stem}.png")
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out), "--crf"]) == 0
    for stem, (h, w) in sizes.items():
        cluster = np.asarray(Image.open(out / f"{stem}_cluster.png"))
        linear = np.asarray(Image.open(out / f"{stem}_linear.png"))
        overlay = np.asarray(Image.open(out / f"{stem}_overlay.png"))
        assert cluster.shape == linear.shape == (h, w) and overlay.shape == (h, w, 3)
        assert cluster.max() < 5 and linear.max() < 5


def test_predict_names_a_corrupt_image_and_a_missing_folder(checkpoint, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(StegoError, match="broken.jpg"):
        predict_folder(checkpoint, images, tmp_path / "out")
    with pytest.raises(StegoError, match="no such folder"):
        predict_folder(checkpoint, tmp_path / "nothing", tmp_path / "out")
