"""KNN mining: chunked top-k against a float64 brute force, bounded tiles, embedding, mining a table once."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from stego.data import knn
from stego.data.knn import KnnTable, embed_dataset, mine_knn, topk_cosine
from stego.errors import StegoError


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


def test_topk_reports_its_progress_in_a_log(capsys):
    """The top-k phase is minutes of CPU at COCO's N: its bar must reach a log file, not only a terminal."""
    topk_cosine(torch.randn(40, 8), 3, chunk=10)
    err = capsys.readouterr().err
    assert "knn top-k" in err and "4/4" in err


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
    feats = embed_dataset(backbone, data, batch_size=4, device="cpu", precision="fp32")
    assert feats.dtype == torch.float32 and feats.shape == (11, 8)
    torch.testing.assert_close(feats.double(), manual_embedding(backbone, data), atol=1e-6, rtol=0)


def test_embed_with_a_real_random_vit():
    from stego.backbones import build_backbone
    backbone, data = build_backbone("dino_vits16", weights="random"), TinyImages(n=5)
    data.imgs = F.interpolate(data.imgs, size=32)
    feats = embed_dataset(backbone, data, batch_size=2, device="cpu", precision="fp32")
    torch.testing.assert_close(feats.double(), manual_embedding(backbone, data), atol=1e-5, rtol=0)


def test_embed_refuses_out_of_order_items():
    class Shuffled(TinyImages):
        def __getitem__(self, i):
            return dict(super().__getitem__(i), index=(i + 1) % len(self))

    with pytest.raises(StegoError, match=r"item 0 came back as item 1 .*fix or remove the bad file"):
        embed_dataset(TinyBackbone(), Shuffled(), batch_size=4, device="cpu", precision="fp32")


@pytest.mark.parametrize("length,items,said", [(6, 4, "gave 4 items"), (3, 8, "gave more than 3 items")])
def test_embed_refuses_a_dataset_that_is_not_its_length(length, items, said):
    class Lying(torch.utils.data.IterableDataset):
        def __len__(self):
            return length

        def __iter__(self):
            return iter(TinyImages(n=items)[i] for i in range(items))

    with pytest.raises(StegoError, match=rf"Lying {said} but has length {length}; .*fix its __len__"):
        embed_dataset(TinyBackbone(), Lying(), batch_size=4, device="cpu", precision="fp32")


def test_embed_refuses_an_empty_dataset():
    with pytest.raises(StegoError, match=r"TinyImages has no items to embed"):
        embed_dataset(TinyBackbone(), TinyImages(n=0), batch_size=4, device="cpu", precision="fp32")


META = dict(backbone="tiny", weights="random", dataset="tinyset", split="train", crops="none", res=16)


def test_mine_knn_writes_checked_table_and_is_idempotent(tmp_path, monkeypatch):
    backbone, data = TinyBackbone(), TinyImages()
    path = tmp_path / "nns" / "t.pt"
    table = mine_knn(backbone, data, path, META, k=5, batch_size=3, chunk=4, key_chunk=3, device="cpu",
                     precision="fp32")
    want = manual_embedding(backbone, data).numpy()
    np.testing.assert_array_equal(table.indices.numpy(), brute_force(want, 5)[0])
    assert table.meta == dict(META, k=5, n=11, source="11:in-memory", dropout=False, format=knn.FORMAT_VERSION,
                              precision="fp32")
    assert KnnTable.load(path, dict(META, n=11)).meta == table.meta

    def boom(*args, **kwargs):
        raise AssertionError("re-mined a table that already exists")

    monkeypatch.setattr(knn, "embed_dataset", boom)
    again = mine_knn(backbone, data, path, META, k=5, device="cpu", precision="fp32")
    assert torch.equal(again.indices, table.indices)
    with pytest.raises(StegoError, match=r"weights expected 'other' found 'random'.*--force"):
        mine_knn(backbone, data, path, dict(META, weights="other"), k=5, device="cpu", precision="fp32")
    with pytest.raises(AssertionError, match="re-mined"):
        mine_knn(backbone, data, path, META, k=5, device="cpu", precision="fp32", force=True)
    with pytest.raises(StegoError, match="k=12 must be between 1 and the number of images"):
        mine_knn(backbone, data, tmp_path / "other.pt", META, k=12, precision="fp32")  # refused before any embedding
