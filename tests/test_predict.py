"""`stego predict` on a folder of user images: outputs aligned with the inputs; bad files named."""
import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stego.cli import main
from stego.config import from_dict
from stego.data.synthetic import SceneSpec, make_scenes
from stego.errors import StegoError
from stego.predict import network_size, output_bases, predict_images
from stego.train import train

SCENE_CLASSES = [f"class{k}" for k in range(5)]  # make_scenes writes these to classes.txt


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


def test_predict_writes_aligned_palette_label_maps_overlays_and_a_legend(checkpoint, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"a.png": (50, 70), "b.png": (64, 33)}
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / name)
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out), "--crf"]) == 0
    legend = list(csv.DictReader((out / "legend.csv").open()))
    colours = {(row["probe"], int(row["id"])): row["color"] for row in legend}
    assert {row["name"] for row in legend if row["probe"] == "linear"} == set(SCENE_CLASSES)
    for name, (h, w) in sizes.items():
        stem = name[:-4]
        for probe in ("cluster", "linear"):
            with Image.open(out / f"{stem}_{probe}.png") as im:
                assert im.mode == "P"
                ids = np.asarray(im)
                lut = np.asarray(im.getpalette()[:3 * 5]).reshape(5, 3)
            assert ids.shape == (h, w) and ids.max() < 5
            for k in np.unique(ids):  # the PNG's palette colour of each id is the legend's
                assert "#" + "".join(f"{c:02x}" for c in lut[k]) == colours[probe, int(k)]
            with Image.open(out / f"{stem}_{probe}_overlay.png") as im:
                assert im.size == (w, h) and im.mode == "RGB"
    assert not (out / "skipped.txt").exists()


def test_every_input_gets_its_own_outputs_and_every_skipped_file_is_reported(checkpoint, tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(1)
    for name, fmt in (("x.jpg", "JPEG"), ("x.png", "PNG"), ("scan.tif", "TIFF"), ("y.bmp", "BMP")):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(images / name, format=fmt)
    (images / "notes.txt").write_text("not an image")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 image(s) segmented" in printed and "2 file(s) skipped" in printed
    outputs = sorted(p.name for p in out.glob("*_cluster.png"))
    assert outputs == ["scan_cluster.png", "x.jpg_cluster.png", "x.png_cluster.png", "y_cluster.png"]
    skipped = dict(line.split("\t") for line in (out / "skipped.txt").read_text().splitlines())
    assert set(skipped) == {str(images / "notes.txt"), str(images / "broken.jpg")}
    assert "not an image" in skipped[str(images / "notes.txt")]
    assert "cannot decode" in skipped[str(images / "broken.jpg")]


def test_predict_takes_a_single_image(checkpoint, tmp_path):
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((30, 45, 3), np.uint8)).save(image)
    done = predict_images(checkpoint, image, tmp_path / "out")
    assert done.written == {image: "photo"} and (tmp_path / "out" / "photo_linear_overlay.png").is_file()


def test_output_bases_are_distinct():
    paths = [Path(n) for n in ("x.jpg", "x.png", "x.jpg.png", "y.png", "x")]
    bases = output_bases(paths)
    assert len(set(bases.values())) == len(paths) and bases[Path("y.png")] == "y"


def test_predict_names_a_missing_input_and_an_unwritable_output(checkpoint, tmp_path):
    with pytest.raises(StegoError, match="no such file or folder"):
        predict_images(checkpoint, tmp_path / "nothing", tmp_path / "out")
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(StegoError, match=r"--out .*taken is a file, not a folder"):
        predict_images(checkpoint, tmp_path / "imgs", tmp_path / "taken")
