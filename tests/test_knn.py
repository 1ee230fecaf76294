"""KNN mining: chunked top-k against a float64 brute force, bounded tiles, the table file and its checks."""
import argparse
import os
import shlex
import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from fixtures import write_imagefolder

from stego.errors import MissingFileError, StegoError
from stego.data import knn
from stego.data.knn import KnnTable, embed_dataset, knn_meta, mine_knn, table_path, topk_cosine, weights_id


def tie_free_feats(n, d, k, seed=0):
    """Random unit vectors whose top-(k+1) similarities per row are separated by a clear margin."""
    rng = np.random.default_rng(seed)
    while True:
        x = rng.standard_normal((n, d))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        top = -np.sort(-(x @ x.T), axis=1)[:, : k + 1]
        if np.diff(top, axis=1).max() < -1e-4:
            return x


def brute_force(x, k):
    """float64 all-pairs cosine top-k (self has similarity 1, the unique maximum for distinct unit rows)."""
    sims = x @ x.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


@pytest.mark.parametrize("n,k,chunk,key_chunk", [
    (37, 6, 5, 7),        # neither chunk divides N
    (37, 6, 37, None),    # one block: plain all-keys top-k
    (50, 10, 8, 3),       # key tiles narrower than k
    (64, 5, 1000, 16384), # chunks larger than N
    (23, 23, 4, 6),       # k = N: full ranking
])
def test_topk_matches_float64_brute_force(n, k, chunk, key_chunk):
    x = tie_free_feats(n, 12, k)
    want_idx, want_sims = brute_force(x, k)
    idx, sims = topk_cosine(torch.from_numpy(x).float(), k, chunk=chunk, key_chunk=key_chunk)
    assert idx.dtype == torch.int64 and sims.dtype == torch.float32
    assert idx.shape == sims.shape == (n, k)
    np.testing.assert_array_equal(idx.numpy(), want_idx)
    np.testing.assert_allclose(sims.numpy(), want_sims, atol=1e-5)


def test_topk_normalises_rows_itself():
    x = tie_free_feats(30, 8, 4, seed=1)
    scale = torch.linspace(0.1, 50, 30)[:, None]
    idx, sims = topk_cosine(torch.from_numpy(x).float() * scale, 4, chunk=7, key_chunk=9)
    want_idx, want_sims = brute_force(x, 4)
    np.testing.assert_array_equal(idx.numpy(), want_idx)
    np.testing.assert_allclose(sims.numpy(), want_sims, atol=1e-5)


@pytest.mark.parametrize("chunk,key_chunk", [(1, 1), (3, 4), (16, None)])
def test_self_is_rank_zero_even_among_duplicates(chunk, key_chunk):
    base = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    feats = base[torch.tensor([0, 1, 0, 2, 0, 3, 1, 0, 2, 3, 3, 0, 1, 2])]  # many exact duplicates
    idx, sims = topk_cosine(feats, 5, chunk=chunk, key_chunk=key_chunk)
    assert torch.equal(idx[:, 0], torch.arange(14))
    torch.testing.assert_close(sims[:, 0], torch.ones(14))
    same = torch.cdist(feats, feats) == 0
    # an image with m copies has them all (similarity 1) right after itself
    for i in range(14):
        copies = int(same[i].sum()) - 1
        assert same[i, idx[i, 1:1 + min(copies, 4)]].all()
    identical = topk_cosine(torch.ones(9, 3), 9, chunk=chunk, key_chunk=key_chunk)[0]
    assert torch.equal(identical[:, 0], torch.arange(9))
    assert all(sorted(row.tolist()) == list(range(9)) for row in identical)


class TensorSizes(TorchFunctionMode):
    """Records the shape of every tensor any torch function or tensor method returns."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def test_chunked_path_never_builds_n_by_n():
    n, d, k, chunk, key_chunk = 300, 8, 5, 16, 40
    feats = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    with TensorSizes() as seen:
        idx, _ = topk_cosine(feats, k, chunk=chunk, key_chunk=key_chunk)
    assert idx.shape == (n, k)
    largest = max(int(np.prod(s)) for s in seen.shapes)
    assert largest <= max(n * d, n * k, chunk * key_chunk)  # the input copy, the result, or one tile
    assert (chunk, key_chunk) in seen.shapes  # the tiles really are chunk x key_chunk
    assert not any(len(s) == 2 and s[0] > chunk and s[1] > key_chunk for s in seen.shapes)
    with TensorSizes() as seen:
        topk_cosine(feats, k, chunk=n, key_chunk=None)
    assert (n, n) in seen.shapes  # the recorder does see an all-pairs matrix when one is built


@pytest.mark.parametrize("bad", [
    dict(feats=torch.randn(5, 3), k=0), dict(feats=torch.randn(5, 3), k=6), dict(feats=torch.randn(0, 3), k=1),
    dict(feats=torch.randn(5), k=1), dict(feats=torch.randn(5, 3), k=2, chunk=0),
    dict(feats=torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), k=1),
])
def test_topk_rejects_bad_input(bad):
    with pytest.raises(StegoError):
        topk_cosine(**bad)


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
    with pytest.raises(MissingFileError, match=r"not found; mine it with stego data knn \(its options: `stego data knn --help`"):
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
        assert build.knn_path(cfg).exists()
    assert build.knn_path(cfg).name == "nns_dino_vits16_imagefolder_train_none_32_seed1.pt"
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


class TinyBackbone(nn.Module):
    """A random stride-4 conv with the Backbone interface (.name, .dim, .patch, images -> [B,C,H/4,W/4])."""

    name, dim, patch = "tiny", 8, 4

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, self.dim, 4, stride=4)
        torch.nn.init.normal_(self.conv.weight, generator=torch.Generator().manual_seed(0))
        self.requires_grad_(False)

    def forward(self, images):
        return self.conv(images)


class TinyImages(torch.utils.data.Dataset):
    """Items like build_dataset's: dict(img [3,16,16], label [16,16], index)."""

    def __init__(self, n=11, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.imgs = torch.randn(n, 3, 16, 16, generator=g)
        self.labels = torch.randint(-1, 3, (n, 16, 16), generator=g)

    def __len__(self):
        return len(self.imgs)

    def __getitem__(self, i):
        return dict(img=self.imgs[i], label=self.labels[i], index=i)


def manual_embedding(backbone, data):
    """Per-image float64 GAP + L2 normalisation, one image at a time."""
    rows = [backbone(data[i]["img"][None]).double().mean((2, 3))[0] for i in range(len(data))]
    return F.normalize(torch.stack(rows), dim=1)


def test_embed_matches_manual_gap_and_normalise():
    backbone, data = TinyBackbone(), TinyImages()
    feats = embed_dataset(backbone, data, batch_size=4, device="cpu")
    assert feats.dtype == torch.float32 and feats.shape == (11, 8)
    torch.testing.assert_close(feats.double(), manual_embedding(backbone, data), atol=1e-6, rtol=0)


def test_embed_with_a_real_random_vit():
    from stego.backbones import build_backbone
    backbone, data = build_backbone("dino_vits16", weights="random"), TinyImages(n=5)
    data.imgs = F.interpolate(data.imgs, size=32)
    feats = embed_dataset(backbone, data, batch_size=2, device="cpu")
    torch.testing.assert_close(feats.double(), manual_embedding(backbone, data), atol=1e-5, rtol=0)


def test_embed_refuses_out_of_order_items():
    class Shuffled(TinyImages):
        def __getitem__(self, i):
            return dict(super().__getitem__(i), index=(i + 1) % len(self))

    with pytest.raises(StegoError, match=r"item 0 came back as item 1 .*fix or remove the bad file"):
        embed_dataset(TinyBackbone(), Shuffled(), batch_size=4, device="cpu")


META = dict(backbone="tiny", weights="random", dataset="tinyset", split="train", crops="none", res=16)


def test_mine_knn_writes_checked_table_and_is_idempotent(tmp_path, monkeypatch):
    backbone, data = TinyBackbone(), TinyImages()
    path = tmp_path / "nns" / "t.pt"
    table = mine_knn(backbone, data, path, META, k=5, batch_size=3, chunk=4, key_chunk=3, device="cpu")
    want = manual_embedding(backbone, data).numpy()
    np.testing.assert_array_equal(table.indices.numpy(), brute_force(want, 5)[0])
    assert table.meta == dict(META, k=5, n=11, source="11:in-memory", dropout=False, format=knn.FORMAT_VERSION,
                              precision="fp32")
    assert KnnTable.load(path, dict(META, n=11)).meta == table.meta

    def boom(*args, **kwargs):
        raise AssertionError("re-mined a table that already exists")

    monkeypatch.setattr(knn, "embed_dataset", boom)
    again = mine_knn(backbone, data, path, META, k=5, device="cpu")
    assert torch.equal(again.indices, table.indices)
    with pytest.raises(StegoError, match=r"weights expected 'other' found 'random'.*--force"):
        mine_knn(backbone, data, path, dict(META, weights="other"), k=5, device="cpu")
    with pytest.raises(AssertionError, match="re-mined"):
        mine_knn(backbone, data, path, META, k=5, device="cpu", force=True)
    with pytest.raises(StegoError, match="k=12 must be between 1 and the number of images"):
        mine_knn(backbone, data, tmp_path / "other.pt", META, k=12)  # refused before any embedding


def test_cli_registers_knn_command():
    parser = knn_parser()
    args = parser.parse_args(["knn", "--dataset", "potsdam", "--root", "/data", "--split", "train",
                              "--backbone", "dino_vits8", "--crop", "five", "--k", "10", "--force"])
    assert args.func is knn.run_knn
    assert (args.k, args.res, args.crop, args.weights, args.force, args.amp) == (10, 224, "five", None, True, True)
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
