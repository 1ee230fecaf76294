"""Training pairs: each image with a KNN partner drawn uniformly from its neighbours of rank 1..num_neighbors.

The draw for item i is a pure function of (seed, epoch, i), so a resumed run that restores the epoch
(`set_epoch`) sees the same partners. DataLoader workers get a copy of this dataset when their iterator
starts: call `set_epoch` before iterating each epoch, and do not use `persistent_workers=True`, whose
workers would keep the old epoch.
"""
import numpy as np
from torch.utils.data import Dataset

from stego.errors import StegoError


class KnnPairs(Dataset):
    """Items dict(img, img_pos, label, label_pos, index, index_pos): the `dataset` item and its partner's."""

    def __init__(self, dataset, table, num_neighbors=7, seed=0):
        if len(dataset) != table.n:
            raise StegoError(f"KNN table has {table.n} rows but the dataset has {len(dataset)} items; the table "
                             "belongs to another split or crop type: re-mine it for this one (`stego data knn --help`)")
        if not 1 <= num_neighbors <= table.k - 1:
            raise StegoError(f"num_neighbors={num_neighbors} needs ranks 1..{num_neighbors} but the KNN table "
                             f"keeps ranks 0..{table.k - 1}; lower num_neighbors or re-mine with --k "
                             f"{num_neighbors + 1}")
        if seed < 0:
            raise StegoError(f"pair seed must be a non-negative integer, got {seed}")
        self.dataset, self.table = dataset, table
        self.num_neighbors, self.seed, self.epoch = num_neighbors, seed, 0

    def set_epoch(self, epoch):
        """Select the partners of `epoch` (a non-negative integer; any counter the trainer can restore)."""
        if epoch < 0:
            raise StegoError(f"epoch must be a non-negative integer, got {epoch}")
        self.epoch = int(epoch)

    def rank(self, index):
        """The neighbour rank (1..num_neighbors) that item `index` is paired with in the current epoch."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return int(rng.integers(1, self.num_neighbors + 1))

    def partner(self, index):
        """The dataset index of item `index`'s partner in the current epoch."""
        return int(self.table.indices[index, self.rank(index)])

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"KnnPairs index {index} out of range for {len(self)} items")
        pos = self.partner(index)
        item, other = self.dataset[index], self.dataset[pos]
        return dict(img=item["img"], img_pos=other["img"], label=item["label"], label_pos=other["label"],
                    index=index, index_pos=pos)
