"""`stego data prepare-potsdam`: small synthetic ISPRS-style tiles cut by IIC's recipe into a tree the reader
and `stego data check` accept; crops, labels and lists checked against an independent computation."""
import numpy as np
import pytest
from PIL import Image
from scipy.io import loadmat

from stego.data.check import check_dataset
from stego.download import potsdam
from stego.errors import StegoError

COLOURS = [(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)]  # ISPRS ids 0–5
N_TILES, LABELLED, H, W = 5, (0, 2, 3), 400, 800  # 2 crops a tile: 10 crops, 6 labelled, 1 test


def write_tiles(raw, seed=0):
    """ISPRS-like tiles: 4_Ortho_RGBIR/top_potsdam_<k>_RGBIR.tif and, for LABELLED, 5_Labels.../<k>_label.tif.
    Returns {tile: (rgbir, class ids or None)}; pixel (0, 0) of each label tile has an unknown colour."""
    rng = np.random.default_rng(seed)
    tiles = {}
    for k in range(N_TILES):
        rgbir = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
        path = raw / "4_Ortho_RGBIR" / f"top_potsdam_2_{k}_RGBIR.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgbir, "RGBA").save(path)
        ids = None
        if k in LABELLED:
            ids = rng.integers(0, 6, (H, W))
            rgb = np.array(COLOURS, np.uint8)[ids]
            rgb[0, 0] = (10, 20, 30)
            ids[0, 0] = 255
            label = raw / "5_Labels_for_participants" / f"top_potsdam_2_{k}_label.tif"
            label.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb, "RGB").save(label)
        tiles[k] = (rgbir, ids)
    return tiles


def expected_crops(tiles):
    """[(image crop, label crop or None)] in IIC's order: tiles sorted, halved, 200x200 crops row by row."""
    out = []
    for k in sorted(tiles):
        rgbir, ids = tiles[k]
        a = rgbir.astype(np.int64)
        half = ((a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2] + 2) // 4).astype(np.uint8)
        gt = None if ids is None else ids[0::2, 0::2]
        for c in range(W // 400):
            box = (slice(0, 200), slice(200 * c, 200 * c + 200))
            out.append((half[box], None if gt is None else gt[box]))
    return out


def test_prepare_follows_iics_recipe(tmp_path):
    tiles = write_tiles(tmp_path / "raw")
    target = potsdam.prepare(tmp_path / "raw", tmp_path / "data")
    lists = {n: (target / f"{n}.txt").read_text().split() for n in ("labelled_train", "unlabelled_train",
                                                                    "labelled_test", "all")}
    assert [len(lists[n]) for n in ("labelled_train", "unlabelled_train", "labelled_test")] == [5, 4, 1]
    assert lists["all"] == lists["labelled_train"] + lists["unlabelled_train"] + lists["labelled_test"]
    assert sorted(int(i) for i in lists["all"]) == list(range(10))
    crops = expected_crops(tiles)
    by_image = {img.tobytes(): k for k, (img, _) in enumerate(crops)}
    labelled = set(lists["labelled_train"] + lists["labelled_test"])
    for name in lists["all"]:
        img = loadmat(target / "imgs" / f"{name}.mat")["img"]
        k = by_image[img.tobytes()]
        expected_gt = crops[k][1]
        assert (expected_gt is not None) == (name in labelled) == (target / "gt" / f"{name}.mat").is_file()
        if expected_gt is not None:
            gt = loadmat(target / "gt" / f"{name}.mat")["gt"]
            assert gt.dtype == np.int32 and np.array_equal(gt, expected_gt)
    assert check_dataset("potsdam3", tmp_path / "data", workers=1).ok


def test_an_interrupted_prepare_resumes_with_the_same_names(tmp_path, monkeypatch):
    write_tiles(tmp_path / "raw")
    reference = potsdam.prepare(tmp_path / "raw", tmp_path / "ref")
    saves, real_save = [], potsdam._save

    def dying_save(path, key, arr):
        if len(saves) == 7:
            raise KeyboardInterrupt
        saves.append(path)
        real_save(path, key, arr)

    monkeypatch.setattr(potsdam, "_save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        potsdam.prepare(tmp_path / "raw", tmp_path / "data")
    assert not (tmp_path / "data" / "potsdam").exists()
    monkeypatch.setattr(potsdam, "_save", real_save)
    target = potsdam.prepare(tmp_path / "raw", tmp_path / "data")
    assert (target / "all.txt").read_text() == (reference / "all.txt").read_text()
    assert check_dataset("potsdam3", tmp_path / "data", workers=1).ok


def test_no_tiles_says_where_to_get_them(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(StegoError, match="no \\*_RGBIR.tif tiles.*ISPRS"):
        potsdam.prepare(tmp_path / "raw", tmp_path / "data")
