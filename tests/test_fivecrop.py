"""Five-crop: torchvision crop order and rounding, 5i+k indices, label+1 PNGs, JPEG q75, resume, parallel."""
import argparse
import functools
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import five_crop as tv_five_crop

from stego.data import fivecrop
from stego.data.datasets import build_dataset, cropped_dir
from stego.data.fivecrop import crop_boxes, crop_files, crop_split, five_crop
from stego.data.synthetic import SceneSpec, make_scenes
from stego.errors import StegoError

SIZES = [(9, 13), (10, 10), (13, 9), (27, 11), (7, 5), (2, 3)]


class ArraySource:
    """A picklable in-memory dataset: smooth ramp images (odd and even sizes) and random labels with -1."""

    def __init__(self, sizes=tuple(SIZES), bad=(), unlabelled=False, label_shift=0, label_offset=0):
        self.sizes, self.bad, self.unlabelled = list(sizes), set(bad), unlabelled
        self.label_shift, self.label_offset = label_shift, label_offset

    def __len__(self):
        return len(self.sizes)

    def path(self, i):
        return Path(f"/virtual/source/{i:03d}.png")

    def arrays(self, i):
        h, w = self.sizes[i]
        yy, xx = np.mgrid[0:h, 0:w]
        image = np.stack([9 * xx + 3 * i, 9 * yy + 5, 4 * (xx + yy) + 30], -1).clip(0, 255).astype(np.uint8)
        label = np.random.default_rng(i).integers(-1, 27, (h + self.label_shift, w)) + self.label_offset
        return image, label

    def load(self, i):
        if i in self.bad:
            raise OSError(f"cannot identify image file '{self.path(i)}'")
        image, label = self.arrays(i)
        return Image.fromarray(image), None if self.unlabelled else label


def tree(folder):
    """{relative path: bytes} of the crop files under `folder` (temp files left out)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and p.suffix in (".jpg", ".png")}


def jpeg_q75(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=75)
    return np.asarray(Image.open(buf))


def test_crop_boxes_hand_worked():
    # 9x13 at ratio 0.5: crop 4x6; centre top = round(2.5) = 2 and left = round(3.5) = 4 (Python rounding).
    assert crop_boxes(9, 13) == [(0, 0, 4, 6), (0, 7, 4, 6), (5, 0, 4, 6), (5, 7, 4, 6), (2, 4, 4, 6)]


@pytest.mark.parametrize("ratio", [0.5, 0.7])
def test_crop_boxes_match_torchvision_five_crop(ratio):
    for h in range(2, 24):
        for w in range(2, 24):
            grid = torch.arange(h * w).reshape(1, h, w)
            size = [int(h * ratio), int(w * ratio)]
            expected = [(int(c[0, 0, 0]) // w, int(c[0, 0, 0]) % w, *c.shape[1:]) for c in tv_five_crop(grid, size)]
            assert crop_boxes(h, w, ratio) == expected, (h, w)


def test_crop_boxes_reject_empty_crop():
    with pytest.raises(StegoError, match="ratio"):
        crop_boxes(1, 10)


def test_crops_are_source_slices_with_label_plus_one(tmp_path):
    src = ArraySource()
    summary = crop_split(ArraySource, tmp_path, "train")
    assert (summary.n_images, summary.n_done_before, summary.n_cropped) == (len(SIZES), 0, len(SIZES))
    assert summary.n_files_written == 10 * len(SIZES)
    assert len(tree(tmp_path)) == 10 * len(SIZES)
    for i, (h, w) in enumerate(SIZES):
        image, label = src.arrays(i)
        # the reference: torchvision's five_crop of image and label (as the release did), crop k of i is 5i+k
        ref_images = tv_five_crop(torch.from_numpy(image).permute(2, 0, 1), [h // 2, w // 2])
        ref_labels = tv_five_crop(torch.from_numpy(label), [h // 2, w // 2])
        for k, (ref_image, ref_label) in enumerate(zip(ref_images, ref_labels)):
            img_file, lbl_file = crop_files(tmp_path, "train", 5 * i + k)
            stored = Image.open(lbl_file)
            assert stored.mode == "L"
            np.testing.assert_array_equal(np.asarray(stored), ref_label.numpy() + 1)
            want = ref_image.permute(1, 2, 0).numpy()
            got = np.asarray(Image.open(img_file))
            assert Image.open(img_file).format == "JPEG"
            np.testing.assert_array_equal(got, jpeg_q75(want))
            assert np.abs(got.astype(int) - want).mean() < 4
    assert (np.asarray(Image.open(crop_files(tmp_path, "train", 0)[1])) == 0).any()  # ignore -1 stored as 0


def test_unlabelled_source_stores_all_ignore(tmp_path):
    crop_split(functools.partial(ArraySource, unlabelled=True), tmp_path, "train")
    for i in range(5 * len(SIZES)):
        assert not np.asarray(Image.open(crop_files(tmp_path, "train", i)[1])).any()


def test_second_run_writes_nothing(tmp_path):
    crop_split(ArraySource, tmp_path, "val")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    summary = crop_split(ArraySource, tmp_path, "val", workers=2)
    assert (summary.n_done_before, summary.n_cropped, summary.n_files_written) == (len(SIZES), 0, 0)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before


def test_parallel_equals_serial(tmp_path):
    sizes = tuple(SIZES * 4)
    make = functools.partial(ArraySource, sizes=sizes)
    crop_split(make, tmp_path / "serial", "train", workers=1)
    summary = crop_split(make, tmp_path / "parallel", "train", workers=2)
    assert summary.n_cropped == len(sizes)
    assert tree(tmp_path / "serial") == tree(tmp_path / "parallel")
    assert len(tree(tmp_path / "serial")) == 10 * len(sizes)


def test_interrupted_run_leaves_no_half_file_and_resumes(tmp_path, monkeypatch):
    crop_split(ArraySource, tmp_path / "ref", "train")
    reference = tree(tmp_path / "ref")
    out = tmp_path / "out"
    real_save, calls = Image.Image.save, []

    def dying_save(self, fp, *args, **kwargs):
        calls.append(1)
        if len(calls) == 17:  # mid-way through image 1: write some bytes, then die
            fp.write(b"\xff\xd8 half a file")
            raise KeyboardInterrupt
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        crop_split(ArraySource, out, "train")
    monkeypatch.setattr(Image.Image, "save", real_save)
    partial = tree(out)
    assert len(partial) == 16
    assert all(reference[name] == data for name, data in partial.items())
    assert not list(out.rglob("*.tmp"))

    summary = crop_split(ArraySource, out, "train")
    assert summary.n_done_before == 1 and summary.n_files_written == 10 * len(SIZES) - 16
    assert tree(out) == reference


def test_deleted_files_and_stray_temp_files_are_redone(tmp_path):
    crop_split(ArraySource, tmp_path, "train")
    reference = tree(tmp_path)
    img12, _ = crop_files(tmp_path, "train", 12)
    _, lbl23 = crop_files(tmp_path, "train", 23)
    img12.unlink()
    lbl23.unlink()
    stray = img12.parent / ".12.jpg.k3j4.tmp"  # what a killed atomic write would leave behind
    stray.write_bytes(b"\xff\xd8 truncated")
    summary = crop_split(ArraySource, tmp_path, "train", workers=2)
    assert (summary.n_done_before, summary.n_cropped, summary.n_files_written) == (len(SIZES) - 2, 2, 2)
    assert tree(tmp_path) == reference


def test_bad_image_is_an_error_or_skipped_and_reported(tmp_path):
    make_bad = functools.partial(ArraySource, bad=(1,))
    with pytest.raises(StegoError, match=r"/virtual/source/001\.png.*--skip-bad"):
        crop_split(make_bad, tmp_path, "train")
    summary = crop_split(make_bad, tmp_path, "train", workers=2, skip_bad=True)
    assert [i for i, _ in summary.bad] == [1]
    report = (tmp_path / "skipped_train.txt").read_text().splitlines()
    assert len(report) == 1 and report[0].startswith("1\t") and "/virtual/source/001.png" in report[0]
    assert len(tree(tmp_path)) == 10 * (len(SIZES) - 1)
    assert not any(path.exists() for k in range(5) for path in crop_files(tmp_path, "train", 5 + k))
    summary = crop_split(ArraySource, tmp_path, "train", skip_bad=True)  # the file was fixed
    assert (summary.n_cropped, summary.bad) == (1, [])
    assert not (tmp_path / "skipped_train.txt").exists()
    assert len(tree(tmp_path)) == 10 * len(SIZES)


@pytest.mark.parametrize("kwargs, message", [
    ({"label_shift": 1}, r"000\.png: label is 10x13 but the image is 9x13"),
    ({"label_offset": 300}, r"label values span .* outside -1\.\.254"),
])
def test_mismatched_or_out_of_range_label_is_a_one_line_error(tmp_path, kwargs, message):
    with pytest.raises(StegoError, match=message) as err:
        crop_split(functools.partial(ArraySource, **kwargs), tmp_path, "train")
    assert "\n" not in str(err.value)


def test_changed_source_list_is_refused(tmp_path):
    crop_split(ArraySource, tmp_path, "train")
    recorded = json.loads((tmp_path / "sources_train.json").read_text())["sources"]
    assert [(tmp_path / e[0]).resolve() for e in recorded] == [Path(f"/virtual/source/{i:03d}.png")
                                                               for i in range(len(SIZES))]
    with pytest.raises(StegoError, match=r"sources_train\.json: these crops came from another list .* index 4"):
        crop_split(functools.partial(ArraySource, sizes=SIZES[:4]), tmp_path, "train")


def _crop_cli(root, *extra):
    parser = argparse.ArgumentParser()
    fivecrop.add_cli(parser.add_subparsers(dest="command"))
    return parser.parse_args(["fivecrop", "--dataset", "imagefolder", "--root", str(root), "--split", "train",
                              "--workers", "1", *extra])


def test_crops_of_a_changed_source_image_are_refused_until_redone(tmp_path):
    """An image overwritten in place (same name, same count) makes its crops stale: five-crop and training refuse
    them with the command that redoes them, and that command (--force) does."""
    from stego import build
    from stego.config import from_dict

    root = make_scenes(tmp_path / "data", SceneSpec(n_train=4, n_val=2, size=32), seed=0)
    args = _crop_cli(root)
    assert args.func(args) == 0
    cfg = from_dict({"data": {"dataset": "synthetic", "root": str(root), "crop": "five", "res": 16, "workers": 0}})
    assert len(build.train_dataset(cfg)) == 20
    image = root / "images" / "train" / "00001.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    for attempt in (lambda: args.func(args), lambda: build.train_dataset(cfg)):
        with pytest.raises(StegoError) as err:
            attempt()
        msg = str(err.value)
        assert "source file(s) changed since they were cropped (first: ../../images/train/00001.png)" in msg, msg
        command = msg.split("`")[1]
        assert command == f"stego data fivecrop --dataset imagefolder --root {root} --split train --force"
    redo = _crop_cli(root, "--force")
    assert redo.func(redo) == 0 and len(build.train_dataset(cfg)) == 20
    assert args.func(args) == 0  # current again: nothing to do


def test_a_non_utf8_file_name_is_cropped_and_recorded(tmp_path):
    root = make_scenes(tmp_path / "data", SceneSpec(n_train=2, n_val=1, size=32), seed=0)
    for folder, suffix in (("images", ".png"), ("labels", ".png")):
        base = os.fsencode(root / folder / "train")
        os.rename(base + b"/00000" + suffix.encode(), base + b"/caf\xe9" + suffix.encode())
    args = _crop_cli(root)
    assert args.func(args) == 0 and args.func(args) == 0
    crops = build_dataset("imagefolder", root, "train", crop=True, n_classes=5)
    assert len(crops) == 10


def test_stale_temp_files_of_a_killed_run_are_removed(tmp_path):
    crop_split(ArraySource, tmp_path, "train")
    stale = tmp_path / "img" / "train" / ".3.jpg.abc123.tmp"
    stale.write_bytes(b"half a jpeg")
    crop_split(ArraySource, tmp_path, "train")
    assert not stale.exists()


def test_ctrl_c_stops_five_crop_in_one_line_and_a_rerun_finishes(tmp_path):
    root = make_scenes(tmp_path / "data", SceneSpec(n_train=300, n_val=1, size=96), seed=0)
    argv = [sys.executable, "-m", "stego.cli", "data", "fivecrop", "--dataset", "imagefolder", "--root", str(root),
            "--split", "train", "--workers", "2"]
    # SIGINT back to its default in the child: a test runner started in the background passes it on ignored
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    out_dir = cropped_dir(root, "imagefolder") / "img" / "train"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out_dir.glob("*.jpg"))) < 20:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err, err
    assert not list(out_dir.parent.parent.rglob("*.tmp"))
    done = len(list(out_dir.glob("*.jpg")))
    assert 20 <= done < 1500
    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and len(list(out_dir.glob("*.jpg"))) == 1500, rerun.stderr


def test_five_crop_of_an_image_folder_reads_back_as_crops(tmp_path):
    root = make_scenes(tmp_path / "data", SceneSpec(n_train=6, n_val=2, size=33), seed=0)
    summary = five_crop("imagefolder", root, "train", workers=2, n_classes=5)
    assert summary.out_dir == root / "cropped" / "imagefolder_five_crop_0.5"
    assert (summary.n_cropped, summary.bad) == (6, [])
    crops = build_dataset("imagefolder", root, "train", crop=True, n_classes=5)
    assert len(crops) == 30
    boxes = crop_boxes(33, 33)
    assert boxes[4] == (8, 8, 16, 16)  # round(8.5) = 8
    for i in range(6):
        source = np.asarray(Image.open(root / "labels" / "train" / f"{i:05d}.png")).astype(np.int64)
        for k, (top, left, h, w) in enumerate(boxes):
            image, label = crops.load(5 * i + k)
            assert image.size == (16, 16)
            np.testing.assert_array_equal(label, source[top:top + h, left:left + w])
    moved = shutil.move(root, tmp_path / "moved")  # the data root moved, crops and all
    summary = five_crop("imagefolder", moved, "train", workers=2, n_classes=5)
    assert (summary.n_done_before, summary.n_files_written) == (6, 0)


def test_cli_skips_bad_files_of_a_real_reader(tmp_path):
    root = make_scenes(tmp_path, SceneSpec(n_train=6, n_val=3, size=32), seed=0)
    (root / "images" / "train" / "00002.png").write_bytes(b"not a png at all")
    parser = argparse.ArgumentParser()
    fivecrop.add_cli(parser.add_subparsers(dest="command"))
    argv = ["fivecrop", "--dataset", "imagefolder", "--root", str(root), "--workers", "2"]
    args = parser.parse_args(argv + ["--split", "train"])
    with pytest.raises(StegoError, match=r"00002\.png: cannot decode image") as err:
        args.func(args)
    assert str(err.value).count("--skip-bad") == 1 and "\n" not in str(err.value)
    assert args.func(parser.parse_args(argv + ["--split", "train", "--skip-bad"])) == 0
    out = cropped_dir(root, "imagefolder")
    report = (out / "skipped_train.txt").read_text().splitlines()
    assert len(report) == 1 and report[0].startswith("2\t") and "00002.png: cannot decode image" in report[0]
    assert sorted(int(p.stem) // 5 for p in (out / "img" / "train").glob("*.jpg")) == sorted([0, 1, 3, 4, 5] * 5)

    # a missing label: the reader drops the entry when built with skip_bad, and the report lists it
    label = root / "labels" / "val" / "00001.png"
    kept = label.read_bytes()
    label.unlink()
    assert args.func(parser.parse_args(argv + ["--split", "val", "--skip-bad"])) == 0
    report = (out / "skipped_val.txt").read_text().splitlines()
    assert len(report) == 1 and report[0].startswith("-\t") and "00001.png is missing" in report[0]
    assert len(list((out / "label" / "val").glob("*.png"))) == 10
    # restoring the file renumbers the sources, so the old crops no longer match: refused, not mixed
    label.write_bytes(kept)
    with pytest.raises(StegoError, match="came from another list of source images"):
        args.func(parser.parse_args(argv + ["--split", "val"]))


def test_cli_registers_fivecrop():
    parser = argparse.ArgumentParser()
    fivecrop.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["fivecrop", "--dataset", "potsdam3", "--root", "/data", "--split", "train",
                              "--workers", "3", "--skip-bad"])
    assert (args.dataset, args.root, args.split, args.workers, args.skip_bad) == ("potsdam3", Path("/data"),
                                                                                   "train", 3, True)
    assert args.crop_ratio == 0.5 and args.func is fivecrop.run_fivecrop
