"""Items kept in RAM after their first read, for datasets that fit (data.in_memory): the toy world, a small image
folder. Reading, decoding and resizing happen once per item and DataLoader worker instead of once per draw; the
transforms are deterministic (resize and centre crop, docs/protocol.md §6), so the items are the same tensors
either way."""
from torch.utils.data import Dataset


class InMemory(Dataset):
    """`dataset` with each item memoised on first access; every other attribute is the wrapped dataset's."""

    def __init__(self, dataset):
        self.dataset, self._items = dataset, {}

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        i = int(i)
        if i not in self._items:
            self._items[i] = self.dataset[i]
        return {k: v.clone() if hasattr(v, "clone") else v for k, v in self._items[i].items()}

    def __getattr__(self, name):
        if name in ("dataset", "_items"):  # not set yet (unpickling in a worker): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)
