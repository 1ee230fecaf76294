"""Synthetic scenes: determinism, layout, idempotence, label/region agreement and the class structure STEGO needs."""
import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import uniform_filter

from stego.data import synthetic
from stego.data.datasets import build_dataset
from stego.data.synthetic import SceneSpec, make_scenes, render_scene, render_scene_modes, scene_rng, scene_world
from stego.errors import StegoError

SMALL = SceneSpec(n_train=24, n_val=8, size=48)


def files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = files(make_scenes(tmp_path / "a", SMALL, seed=3))
    b = files(make_scenes(tmp_path / "b", SMALL, seed=3))
    c = files(make_scenes(tmp_path / "c", SMALL, seed=4))
    assert a == b
    assert len(a) == 2 * (24 + 8) + 2
    differ = [k for k in a if k.startswith("images/") and a[k] != c[k]]
    assert len(differ) == 24 + 8


def test_layout_and_file_formats(tmp_path):
    root = make_scenes(tmp_path, SMALL, seed=0)
    assert (root / "classes.txt").read_text().split() == [f"class{c}" for c in range(5)]
    assert json.loads((root / "spec.json").read_text())["spec"]["n_train"] == 24
    for split, n in (("train", 24), ("val", 8)):
        names = sorted(p.name for p in (root / "images" / split).iterdir())
        assert names == [f"{i:05d}.png" for i in range(n)]
        assert names == sorted(p.name for p in (root / "labels" / split).iterdir())
        image, label = Image.open(root / "images" / split / names[-1]), Image.open(root / "labels" / split / names[-1])
        assert (image.mode, image.size, label.mode, label.size) == ("RGB", (48, 48), "L", (48, 48))
    # the files are what render_scene draws for that image
    image, label = render_scene(scene_rng(0, "val", 5), SMALL)
    np.testing.assert_array_equal(np.asarray(Image.open(root / "images/val/00005.png")), image)
    np.testing.assert_array_equal(np.asarray(Image.open(root / "labels/val/00005.png")), label)


def test_image_folder_reader_reads_it(tmp_path):
    root = make_scenes(tmp_path, SMALL, seed=0)
    data = build_dataset("imagefolder", root, "val", res=32)
    assert (len(data), data.n_classes, data.class_names) == (8, 5, tuple(f"class{c}" for c in range(5)))
    image, label = data.load(3)
    want_image, want_label = render_scene(scene_rng(0, "val", 3), SMALL)
    np.testing.assert_array_equal(np.asarray(image), want_image)
    np.testing.assert_array_equal(label, want_label.astype(np.int64))
    item = data[3]
    assert tuple(item["img"].shape) == (3, 32, 32) and int(item["label"].max()) < 5


def test_complete_dataset_is_not_rewritten_and_interrupted_one_is_finished(tmp_path):
    make_scenes(tmp_path, SMALL, seed=1)
    reference = files(tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    make_scenes(tmp_path, SMALL, seed=1)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamps
    (tmp_path / "images/train/00007.png").unlink()
    (tmp_path / "labels/val/00002.png").unlink()
    make_scenes(tmp_path, SMALL, seed=1)
    assert files(tmp_path) == reference


def test_other_spec_or_foreign_folder_is_refused(tmp_path):
    make_scenes(tmp_path / "a", SMALL, seed=1)
    with pytest.raises(StegoError, match="spec.json: holds a synthetic dataset with another spec"):
        make_scenes(tmp_path / "a", SMALL, seed=2)
    with pytest.raises(StegoError, match="another spec"):
        make_scenes(tmp_path / "a", SceneSpec(n_train=25, n_val=8, size=48), seed=1)
    (tmp_path / "b" / "images").mkdir(parents=True)
    with pytest.raises(StegoError, match="not a synthetic dataset folder"):
        make_scenes(tmp_path / "b", SMALL)


def test_bad_spec_is_an_error():
    with pytest.raises(StegoError, match="max_regions"):
        SceneSpec(n_classes=3, max_regions=4)


def test_every_class_appears_in_both_splits(tmp_path):
    root = make_scenes(tmp_path, SMALL, seed=0)
    for split in ("train", "val"):
        seen = set()
        for p in (root / "labels" / split).iterdir():
            seen |= set(np.unique(np.asarray(Image.open(p))).tolist())
        assert seen == set(range(SMALL.n_classes))


def test_labels_follow_the_drawn_regions():
    clean = SceneSpec(signature=0.0, gain=0.0, offset=0.0, cast=0.0, noise=0.0)
    colours = scene_world(clean).colours.reshape(-1, 3) * 255
    m = clean.modes_per_class
    for i in range(20):
        image, label, mode = render_scene_modes(scene_rng(0, "train", i), clean)
        assert 2 <= len(np.unique(label)) <= 4
        np.testing.assert_array_equal(label, mode // m)
        # with nuisance and grating off, each mode's pixels average to that mode's colour, the nearest of all
        for g in np.unique(mode):
            mean = image[mode == g].reshape(-1, 3).mean(0)
            assert np.linalg.norm(colours - mean, axis=1).argmin() == g

    # with nuisance on, colour jumps across label edges exceed those inside a label
    inside, across = [], []
    for i in range(20):
        image, label = render_scene(scene_rng(0, "train", i), SceneSpec())
        jump = np.abs(np.diff(image.astype(float), axis=1)).sum(-1)
        edge = label[:, 1:] != label[:, :-1]
        inside.append(jump[~edge].mean())
        across.append(jump[edge].mean())
    assert np.mean(across) > 2 * np.mean(inside)


def descriptor(image):
    """A fixed per-pixel colour+texture feature: 5×5 mean colour and log gradient energy in 4 orientations."""
    x = image.astype(np.float64) / 255
    gy, gx = np.gradient(x.mean(-1))
    feats = [uniform_filter(x[..., k], 5) for k in range(3)]
    for t in (0, np.pi / 4, np.pi / 2, 3 * np.pi / 4):
        d = gx * np.cos(t) + gy * np.sin(t)
        feats.append(np.log(uniform_filter(d * d, 5) + 1e-4))
    return np.stack(feats, -1)


def test_classes_fragment_into_modes_yet_share_a_signature():
    """Mean cosine of dataset-standardised descriptors over pixel pairs from different images."""
    spec = SceneSpec()
    feats, labels, modes, images = [], [], [], []
    for i in range(40):
        image, label, mode = render_scene_modes(scene_rng(0, "train", i), spec)
        grid = (slice(2, -2, 3), slice(2, -2, 3))
        feats.append(descriptor(image)[grid].reshape(-1, 7))
        labels.append(label[grid].ravel())
        modes.append(mode[grid].ravel())
        images.append(np.full(labels[-1].size, i))
    f, lab, mode, img = (np.concatenate(a) for a in (feats, labels, modes, images))
    f = (f - f.mean(0)) / f.std(0)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    pick = np.random.default_rng(0).choice(len(f), 3000, replace=False)
    sim = f[pick] @ f[pick].T
    lab, mode, img = lab[pick], mode[pick], img[pick]
    other_image = img[:, None] != img[None]
    same_mode = (mode[:, None] == mode[None]) & other_image
    same_class_other_mode = (lab[:, None] == lab[None]) & (mode[:, None] != mode[None]) & other_image
    other_class = (lab[:, None] != lab[None]) & other_image
    within, across_modes, between = sim[same_mode].mean(), sim[same_class_other_mode].mean(), sim[other_class].mean()
    print(f"within-mode {within:.3f}, same-class other-mode {across_modes:.3f}, other-class {between:.3f}")
    assert within > across_modes + 0.3
    assert across_modes > between + 0.1
    for c in range(spec.n_classes):  # every class carries the shared signal, not just on average
        mine = lab[:, None] == c
        assert sim[mine & same_class_other_mode].mean() > sim[mine & other_class].mean()


def test_cli_writes_the_dataset(tmp_path):
    parser = argparse.ArgumentParser()
    synthetic.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["synthetic", "--out", str(tmp_path), "--seed", "2", "--train", "6", "--val", "5",
                              "--size", "32"])
    assert args.func(args) == 0
    assert len(list((tmp_path / "images/train").iterdir())) == 6
    assert len(list((tmp_path / "labels/val").iterdir())) == 5
    assert Image.open(tmp_path / "images/val/00004.png").size == (32, 32)
