"""KNN tables: the file and its checks (metadata, the images they were mined from, k), names and paths, and the
`stego data knn` command."""
import argparse
import hashlib
import os
import shlex

import pytest
import torch

from fixtures import write_imagefolder
from stego.data import knn
from stego.data.knn import KnnTable, knn_meta, table_path, topk_cosine, weights_id
from stego.errors import MissingFileError, StegoError
from tests.test_knn import tie_free_feats


def make_table(n=12, k=4, **meta):
    feats = torch.from_numpy(tie_free_feats(n, 6, k, seed=3)).float()
    idx, sims = topk_cosine(feats, k)
    full = dict(backbone="dino_vits8", weights="random", dataset="potsdam", split="train", crops="five",
                crop_ratio=0.5, res=224, k=k, n=n, source=f"{n}:0123456789abcdef", dropout=False,
                format=knn.FORMAT_VERSION, precision="fp32")
    full.update(meta)
    return KnnTable(idx, sims, full)


def test_save_load_round_trip_is_weights_only(tmp_path):
    table = make_table()
    path = tmp_path / "nns" / "t.pt"
    table.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["t.pt"]  # no temp file left behind
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"indices", "sims", "meta"}
    loaded = KnnTable.load(path, expect={key: table.meta[key] for key in knn.CHECKED_KEYS})
    assert torch.equal(loaded.indices, table.indices) and torch.equal(loaded.sims, table.sims)
    assert loaded.meta == table.meta and (loaded.n, loaded.k) == (12, 4)


WRONG = dict(backbone="dino_vitb8", weights="x.pth:sha256:0123", dataset="cocostuff27", split="val",
             crops="none", crop_ratio=0.3, res=320, k=30, n=13, source="12:fedcba9876543210", dropout=True)


@pytest.mark.parametrize("field", knn.CHECKED_KEYS)
def test_load_names_each_mismatched_field(tmp_path, field):
    table = make_table()
    path = tmp_path / "t.pt"
    table.save(path)
    expect = {key: table.meta[key] for key in knn.CHECKED_KEYS}
    expect[field] = WRONG[field]
    with pytest.raises(StegoError) as err:
        KnnTable.load(path, expect)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "stego data knn" in msg and "--force" in msg
    assert f"{field} expected {WRONG[field]!r} found {table.meta[field]!r}" in msg
    assert msg.count(" expected ") == 1  # only the differing field is named


def test_load_lists_all_differing_fields(tmp_path):
    make_table().save(tmp_path / "t.pt")
    with pytest.raises(StegoError, match=r"dataset expected 'cityscapes' found 'potsdam'; n expected 99 found 12"):
        KnnTable.load(tmp_path / "t.pt", dict(dataset="cityscapes", split="train", n=99))


def test_missing_table_says_how_to_make_it(tmp_path):
    with pytest.raises(MissingFileError, match=r"nope\.pt not found; mine it with `stego data knn --root /data "
                                               r"--dataset potsdam --k 8` \(plus --weights PATH if model.weights is "
                                               r"set\)$"):
        KnnTable.load(tmp_path / "nope.pt", dict(dataset="potsdam", weights="dino.pth:sha256:0"), min_k=8,
                      root="/data")
    with pytest.raises(MissingFileError,
                       match=r"not found; mine it with stego data knn \(its options: `stego data knn --help`"):
        KnnTable.load(tmp_path / "nope.pt")


def corrupt(path, table):
    """Write a torch file with the table's dict after an edit; returns the path."""
    torch.save(table, path)
    return path


@pytest.mark.parametrize("case,match", [
    ("garbage", "unreadable"), ("truncated", "unreadable"), ("not_a_dict", "unreadable"),
    ("no_meta", "unreadable"), ("out_of_range", "out of range"), ("self_not_first", "rank 0"),
    ("shape_vs_meta", "metadata n=12"), ("float_indices", "indices torch.float32"),
    ("old_format", "format 0"),
])
def test_corrupt_table_is_a_one_line_error(tmp_path, case, match):
    t = make_table()
    good = dict(indices=t.indices, sims=t.sims, meta=t.meta)
    path = tmp_path / "t.pt"
    if case == "garbage":
        path.write_bytes(b"not a torch file at all")
    elif case == "truncated":
        t.save(path)
        path.write_bytes(path.read_bytes()[:200])
    elif case == "not_a_dict":
        corrupt(path, [t.indices, t.sims])
    elif case == "no_meta":
        corrupt(path, dict(indices=t.indices, sims=t.sims))
    elif case == "out_of_range":
        bad = t.indices.clone()
        bad[3, 2] = 12
        corrupt(path, dict(good, indices=bad))
    elif case == "self_not_first":
        corrupt(path, dict(good, indices=t.indices.roll(1, dims=1)))
    elif case == "shape_vs_meta":
        corrupt(path, dict(good, indices=t.indices[:10], sims=t.sims[:10]))
    elif case == "float_indices":
        corrupt(path, dict(good, indices=t.indices.float()))
    elif case == "old_format":
        corrupt(path, dict(good, meta=dict(t.meta, format=0)))
    with pytest.raises(StegoError, match=match) as err:
        KnnTable.load(path, dict(dataset="potsdam"))
    assert "\n" not in str(err.value) and str(path) in str(err.value) and "stego data knn" in str(err.value)


def test_weights_id(tmp_path):
    f = tmp_path / "dino.pth"
    f.write_bytes(b"some weights" * 1000)
    assert weights_id(f) == f"dino.pth:sha256:{hashlib.sha256(f.read_bytes()).hexdigest()[:16]}"
    assert weights_id(str(f)) == weights_id(f)
    assert weights_id("random") == "random"
    sd = dict(a=torch.arange(4.0), b=torch.ones(2, 2))
    assert weights_id(sd) == weights_id(dict(b=torch.ones(2, 2), a=torch.arange(4.0)))  # key order irrelevant
    assert weights_id(sd) != weights_id(dict(sd, a=torch.arange(4.0) + 1))
    assert weights_id(sd).startswith("state_dict:sha256:")
    assert weights_id(sd) != weights_id(dict(sd, b=torch.ones(4)))  # same bytes, other shape
    nested = dict(teacher=dict(sd, steps=torch.tensor(3)), epoch=100)  # a checkpoint-like container
    assert weights_id(nested) == weights_id(dict(epoch=100, teacher=dict(sd, steps=torch.tensor(3))))
    assert weights_id(nested) != weights_id(dict(nested, epoch=101))
    with pytest.raises(MissingFileError, match="missing.pth"):
        weights_id(tmp_path / "missing.pth")


def test_knn_meta_and_path(tmp_path):
    meta = knn_meta("dino_vits8", "random", "potsdam", "train", "none", 224)
    assert meta == dict(backbone="dino_vits8", weights="random", dataset="potsdam", split="train",
                        crops="none", res=224)
    with pytest.raises(StegoError, match="crop type"):
        knn_meta("dino_vits8", "random", "potsdam", "train", "ten", 224)
    assert table_path(tmp_path, "dino_vitb8", "cocostuff27", "train", "five", 224) == \
        tmp_path / "nns" / "nns_dino_vitb8_cocostuff27_train_five_224.pt"  # the release's name
    assert knn_meta("dino_vits8", "random", "potsdam", "train", "five", 224, 0.3) == dict(meta, crops="five",
                                                                                         crop_ratio=0.3)
    assert table_path(tmp_path, "dino_vitb8", "cocostuff27", "train", "five", 224, 0.3) == \
        tmp_path / "nns" / "nns_dino_vitb8_cocostuff27_train_five0.3_224.pt"
    assert knn_meta("dino_vits8", "random", "potsdam", "train", "none", 224, seed=3) == dict(meta,
                                                                                            weights="random:seed3")
    assert table_path(tmp_path, "dino_vits8", "potsdam", "train", "none", 224, weights="random", seed=3) == \
        tmp_path / "nns" / "nns_dino_vits8_potsdam_train_none_224_seed3.pt"
    assert table_path(tmp_path, "dino_vits8", "potsdam", "train", weights="random", seed=0).name == \
        "nns_dino_vits8_potsdam_train_none_224.pt"  # seed 0 keeps the name tables had before seeds counted
    weight_file = tmp_path / "dino.pth"  # official weights are the same backbone whatever the run's seed
    weight_file.write_bytes(b"weights")
    assert table_path(tmp_path, "dino_vits8", "potsdam", "train", weights=str(weight_file), seed=3).name == \
        "nns_dino_vits8_potsdam_train_none_224.pt"
    assert knn_meta("dino_vits8", str(weight_file), "potsdam", "train", seed=3)["weights"].startswith("dino.pth:")


def test_random_backbones_of_other_seeds_get_their_own_table_which_the_cli_reproduces(tmp_path):
    """Training draws its random-init backbone after torch.manual_seed(train.seed): seed 1 is another backbone,
    so another table; `stego data knn --weights random --seed 1` mines exactly the table training mines."""
    from stego import build
    from stego.config import from_dict

    tables = {}
    for seed in (0, 1):
        root = write_imagefolder(tmp_path / f"train{seed}", splits=("train",), n=6).root
        cfg = from_dict({"data": {"dataset": "imagefolder", "root": str(root), "crop": "none", "res": 32,
                                  "workers": 0, "knn_k": 4, "num_neighbors": 3},
                         "model": {"backbone": "dino_vits16", "weights": "random"},
                         "train": {"device": "cpu", "seed": seed}})
        torch.manual_seed(seed)  # as train() does before building the backbone
        tables[seed] = build.knn_table(cfg, build.backbone_for(cfg), build.train_dataset(cfg))
        assert build.knn_spec(cfg).path.exists()
    assert build.knn_spec(cfg).path.name == "nns_dino_vits16_imagefolder_train_none_32_seed1.pt"
    assert tables[1].meta["weights"] == "random:seed1" and tables[0].meta["weights"] == "random"
    assert not torch.equal(tables[0].sims, tables[1].sims)
    root = write_imagefolder(tmp_path / "cli", splits=("train",), n=6).root
    torch.manual_seed(123)  # the CLI seeds the init itself
    args = knn_parser().parse_args(["knn", "--dataset", "imagefolder", "--root", str(root), "--split", "train",
                                    "--backbone", "dino_vits16", "--weights", "random", "--seed", "1", "--res",
                                    "32", "--k", "4", "--workers", "0", "--device", "cpu"])
    assert args.func(args) == 0
    same_but_files = {k: v for k, v in tables[1].meta.items() if k != "source"}  # the same images, other files
    mined = KnnTable.load(root / "nns" / "nns_dino_vits16_imagefolder_train_none_32_seed1.pt", same_but_files)
    assert torch.equal(mined.indices, tables[1].indices) and torch.equal(mined.sims, tables[1].sims)
    with pytest.raises(StegoError, match=r"weights expected 'random:seed2' found 'random:seed1'.*--seed 2 --force"):
        KnnTable.load(root / "nns" / "nns_dino_vits16_imagefolder_train_none_32_seed1.pt",
                      dict(same_but_files, weights="random:seed2"))


def test_five_crops_of_another_ratio_get_their_own_table(tmp_path):
    """Five-crops at ratio 0.3 are as many images as at 0.5 but other ones: never the 0.5 table."""
    from stego import build
    from stego.config import from_dict
    from stego.data.fivecrop import five_crop

    root = write_imagefolder(tmp_path / "data", splits=("train",), n=4).root
    tables = {}
    for ratio in (0.5, 0.3):
        five_crop("imagefolder", root, "train", ratio, workers=1)
        cfg = from_dict({"data": {"dataset": "imagefolder", "root": str(root), "crop": "five", "crop_ratio": ratio,
                                  "res": 32, "workers": 0, "knn_k": 4, "num_neighbors": 3},
                         "model": {"backbone": "dino_vits16", "weights": "random"}, "train": {"device": "cpu"}})
        dataset = build.train_dataset(cfg)
        tables[ratio] = build.knn_table(cfg, build.backbone_for(cfg), dataset)
        assert tables[ratio].meta["crop_ratio"] == ratio and tables[ratio].n == 20
    assert sorted(p.name for p in (root / "nns").iterdir()) == [
        "nns_dino_vits16_imagefolder_train_five0.3_32.pt", "nns_dino_vits16_imagefolder_train_five_32.pt"]
    assert not torch.equal(tables[0.5].sims, tables[0.3].sims)
    old = root / "nns" / "nns_dino_vits16_imagefolder_train_five_32.pt"
    with pytest.raises(StegoError, match=r"crop_ratio expected 0.3 found 0.5.*--crop-ratio 0.3"):
        KnnTable.load(old, dict(tables[0.3].meta, dropout=False))


def test_cli_registers_knn_command():
    parser = knn_parser()
    args = parser.parse_args(["knn", "--dataset", "potsdam", "--root", "/data", "--split", "train",
                              "--backbone", "dino_vits8", "--crop", "five", "--k", "10", "--force"])
    assert args.func is knn.run_knn
    assert (args.k, args.res, args.crop, args.weights, args.force) == (10, 224, "five", None, True)
    assert args.precision == "fp32"
    with pytest.raises(SystemExit):
        parser.parse_args(["knn", "--dataset", "potsdam", "--root", "/d", "--split", "train",
                           "--backbone", "b", "--crop", "ten"])


def knn_parser():
    parser = argparse.ArgumentParser(prog="stego data")
    knn.add_cli(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_mines_an_image_folder_once(tmp_path, capsys):
    root = write_imagefolder(tmp_path / "data", splits=("train",), n=6).root
    argv = ["knn", "--dataset", "imagefolder", "--root", str(root), "--split", "train", "--backbone",
            "dino_vits16", "--weights", "random", "--res", "32", "--workers", "0", "--device", "cpu"]
    args = knn_parser().parse_args(argv + ["--k", "4"])
    assert args.func(args) == 0
    path = root / "nns" / "nns_dino_vits16_imagefolder_train_none_32.pt"
    printed = capsys.readouterr()
    assert str(path) in printed.out and "knn features" in printed.err  # a progress bar, also off a terminal
    expect = dict(backbone="dino_vits16", weights="random", dataset="imagefolder", split="train", crops="none",
                  res=32, n=6, dropout=False)
    table = KnnTable.load(path, expect, min_k=4)
    assert torch.equal(table.indices[:, 0], torch.arange(6))
    assert bool((table.sims[:, :-1] >= table.sims[:, 1:]).all())
    stamp = path.stat().st_mtime_ns
    assert args.func(args) == 0 and path.stat().st_mtime_ns == stamp  # a valid table is not re-mined
    fewer = knn_parser().parse_args(argv + ["--k", "3"])  # a table with more neighbours than asked serves
    assert fewer.func(fewer) == 0 and path.stat().st_mtime_ns == stamp
    other = knn_parser().parse_args(argv + ["--k", "5"])
    with pytest.raises(StegoError, match=rf"keeps 4 neighbours, fewer than the 5 needed.*stego data knn --root {root} "
                                         r".*--k 5 --weights random --force"):
        other.func(other)
    forced = knn_parser().parse_args(argv + ["--k", "5", "--force"])
    assert forced.func(forced) == 0
    assert KnnTable.load(path, expect, min_k=5).k == 5


@pytest.mark.parametrize("change", ["overwrite one image", "another image set"])
def test_a_table_of_changed_images_is_refused_with_the_rebuild_command(tmp_path, change):
    root = write_imagefolder(tmp_path / "data", splits=("train",), n=6).root
    argv = ["knn", "--dataset", "imagefolder", "--root", str(root), "--split", "train", "--backbone",
            "dino_vits16", "--weights", "random", "--res", "32", "--workers", "0", "--device", "cpu", "--k", "4"]
    args = knn_parser().parse_args(argv)
    assert args.func(args) == 0
    images = sorted((root / "images" / "train").iterdir())
    if change == "overwrite one image":
        data = images[2].read_bytes()
        images[2].write_bytes(data)  # same name, same bytes, rewritten: its modification time moves
        os.utime(images[2], ns=(images[2].stat().st_atime_ns, images[2].stat().st_mtime_ns + 10**9))
    else:
        for i, image in enumerate(images):
            label = root / "labels" / "train" / f"{image.stem}.png"
            image.rename(image.with_name(f"other{i}{image.suffix}"))
            label.rename(label.with_name(f"other{i}.png"))
    with pytest.raises(StegoError) as err:
        args.func(args)
    msg = str(err.value)
    assert "made from other or changed images" in msg and "source expected" in msg, msg
    command = msg.split("`")[1]
    assert command.startswith(f"stego data knn --root {root} ") and command.endswith("--force"), command
    forced = knn_parser().parse_args(shlex.split(command)[2:])
    assert forced.func(forced) == 0 and args.func(args) == 0



def test_a_split_smaller_than_knn_k_mines_every_item_and_too_small_a_split_is_named(tmp_path):
    from stego import build
    from stego.config import from_dict

    root = write_imagefolder(tmp_path / "data", splits=("train",), n=6).root
    values = {"data": {"dataset": "imagefolder", "root": str(root), "crop": "none", "res": 32, "workers": 0,
                       "num_neighbors": 3},
              "model": {"backbone": "dino_vits16", "weights": "random"}, "train": {"device": "cpu"}}
    cfg = from_dict(values)
    assert cfg.data.knn_k == 30
    table = build.knn_table(cfg, build.backbone_for(cfg), build.train_dataset(cfg))
    assert table.k == 6
    values["data"]["num_neighbors"] = 6
    cfg = from_dict(values)
    with pytest.raises(StegoError, match=r"has 6 training items, too few to draw KNN partners of ranks 1\.\.6"):
        build.knn_table(cfg, build.backbone_for(cfg), build.train_dataset(cfg))
