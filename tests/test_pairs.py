"""KNN training pairs: partners come from ranks 1..num_neighbors, uniformly, reproducibly per (seed, epoch)."""
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from stego.data.knn import KnnTable
from stego.data.pairs import KnnPairs
from stego.errors import StegoError

N, K = 40, 10


def random_table(n=N, k=K, seed=0):
    """Row i: itself at rank 0, then k-1 distinct other images in random order; plus rank lookup [i, j]."""
    rng = np.random.default_rng(seed)
    rows = [[i] + list(rng.permutation([j for j in range(n) if j != i])[: k - 1]) for i in range(n)]
    idx = torch.tensor(rows)
    rank = {(i, int(j)): r for i in range(n) for r, j in enumerate(rows[i])}
    return KnnTable(idx, torch.rand(n, k), dict(n=n, k=k)), rank


class Numbered(Dataset):
    """Item i: an image filled with i, a label filled with i % 3, and index i."""

    def __len__(self):
        return N

    def __getitem__(self, i):
        return dict(img=torch.full((3, 4, 4), float(i)), label=torch.full((4, 4), i % 3), index=i)


def partners(pairs, epoch):
    pairs.set_epoch(epoch)
    return [pairs[i]["index_pos"] for i in range(len(pairs))]


def test_items_carry_anchor_and_partner():
    table, rank = random_table()
    pairs = KnnPairs(Numbered(), table, num_neighbors=7, seed=5)
    for epoch in range(3):
        pairs.set_epoch(epoch)
        for i in range(N):
            item = pairs[i]
            j = item["index_pos"]
            assert set(item) == {"img", "img_pos", "label", "label_pos", "index", "index_pos"}
            assert item["index"] == i and 1 <= rank[i, j] <= 7
            assert torch.equal(item["img"], torch.full((3, 4, 4), float(i)))
            assert torch.equal(item["img_pos"], torch.full((3, 4, 4), float(j)))
            assert torch.equal(item["label_pos"], torch.full((4, 4), j % 3))
            assert pairs.rank(i) == rank[i, j]


@pytest.mark.parametrize("num_neighbors", [1, 3, 7, K - 1])
def test_only_ranks_1_to_num_neighbors_and_all_of_them_uniformly(num_neighbors):
    table, rank = random_table()
    pairs = KnnPairs(Numbered(), table, num_neighbors=num_neighbors, seed=1)
    counts = Counter()
    for epoch in range(150):
        pairs.set_epoch(epoch)
        counts.update(pairs.rank(i) for i in range(N))
    assert set(counts) == set(range(1, num_neighbors + 1))
    draws = 150 * N
    chi2 = sum((c - draws / num_neighbors) ** 2 / (draws / num_neighbors) for c in counts.values())
    assert chi2 < 27.9  # chi-square 99.9% quantile at 8 degrees of freedom (the largest case here)
    one_image = Counter()
    for epoch in range(300):
        pairs.set_epoch(epoch)
        one_image[pairs.rank(7)] += 1
    assert set(one_image) == set(range(1, num_neighbors + 1))  # every rank over many epochs of one image


def test_partners_are_reproducible_per_seed_and_epoch():
    table, _ = random_table()
    a = KnnPairs(Numbered(), table, seed=3)
    b = KnnPairs(Numbered(), table, seed=3)
    assert partners(a, 4) == partners(b, 4)
    assert partners(a, 4) != partners(a, 5)  # a new epoch redraws
    assert partners(a, 4) != partners(KnnPairs(Numbered(), table, seed=4), 4)
    first = partners(a, 2)
    partners(a, 9)
    assert partners(a, 2) == first  # going back to an epoch (a resumed run) gives the same partners
    # the draw for an item does not depend on the order or the other items drawn before it
    a.set_epoch(2)
    assert [a[i]["index_pos"] for i in reversed(range(N))] == first[::-1]


def test_dataloader_workers_see_the_epoch():
    table, _ = random_table()
    pairs = KnnPairs(Numbered(), table, seed=0)
    pairs.set_epoch(6)
    loader = DataLoader(pairs, batch_size=8, shuffle=False, num_workers=1)
    got = torch.cat([batch["index_pos"] for batch in loader]).tolist()
    assert got == partners(KnnPairs(Numbered(), table, seed=0), 6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_neighbors=K), "ranks 1..10"), (dict(num_neighbors=0), "num_neighbors=0"),
    (dict(seed=-1), "seed"),
])
def test_rejects_bad_settings(kwargs, match):
    table, _ = random_table()
    with pytest.raises(StegoError, match=match):
        KnnPairs(Numbered(), table, **kwargs)


def test_rejects_table_of_another_size():
    table, _ = random_table(n=N + 1)
    with pytest.raises(StegoError, match="41 rows but the dataset has 40"):
        KnnPairs(Numbered(), table)


def test_bad_epoch_and_index():
    table, _ = random_table()
    pairs = KnnPairs(Numbered(), table)
    with pytest.raises(StegoError, match="epoch"):
        pairs.set_epoch(-1)
    with pytest.raises(IndexError):
        pairs[N]
