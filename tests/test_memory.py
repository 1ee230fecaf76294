"""data.in_memory: items read once and kept, the same tensors as reading every time, and a training run that
gives the same weights to the bit."""
import pickle

import torch

from stego import build
from stego.checkpoint import load_checkpoint
from stego.config import with_overrides
from stego.data.memory import InMemory
from stego.data.synthetic import SceneSpec, make_scenes
from stego.train import train
from tests.test_train import tiny


class Counting(torch.utils.data.Dataset):
    n_classes = 3

    def __init__(self):
        self.reads = 0

    def __len__(self):
        return 4

    def __getitem__(self, i):
        self.reads += 1
        return {"img": torch.full((2,), float(i)), "index": i}


def test_items_are_read_once_and_handed_out_as_copies():
    data = InMemory(Counting())
    first = data[1]
    first["img"] += 5  # a consumer writing into its item must not change the kept one
    again = data[1]
    assert data.reads == 1 and torch.equal(again["img"], torch.full((2,), 1.0)) and again["index"] == 1
    assert (len(data), data.n_classes) == (4, 3)
    copy = pickle.loads(pickle.dumps(data))  # what a DataLoader worker gets
    assert torch.equal(copy[2]["img"], torch.full((2,), 2.0))


def test_in_memory_datasets_and_training_are_the_same(tmp_path):
    root = make_scenes(tmp_path / "scenes", SceneSpec(n_train=8, n_val=2, size=48), seed=2)
    cfg = tiny(root, iterations=4)
    kept = with_overrides(cfg, ["data.in_memory=true"])
    for make in (build.train_dataset, build.val_dataset):
        plain, memo = make(cfg), make(kept)
        assert isinstance(memo, InMemory) and not isinstance(plain, InMemory)
        for _ in range(2):
            for i in range(len(plain)):
                a, b = plain[i], memo[i]
                assert torch.equal(a["img"], b["img"]) and torch.equal(a["label"], b["label"])
    assert kept.identity() == cfg.identity()  # a speed setting: the same run, reused and resumed alike
    a = load_checkpoint(train(cfg, tmp_path / "plain"))["model"]
    b = load_checkpoint(train(kept, tmp_path / "memo"))["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
