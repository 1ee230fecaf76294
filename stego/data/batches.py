"""The order training reads its items in, reproducible after a resume: batches of (index, epoch) from any
iteration on, each epoch shuffled by a generator seeded from (seed, epoch), split across data-parallel ranks."""
import torch
from torch.utils.data import Dataset, Sampler

from stego.errors import StegoError
from stego.runtime import iteration_seed


class ResumableBatches(Sampler):
    """Batches of (index, epoch) from iteration `start` on; epoch e shuffles with a generator seeded by (seed, e)."""

    def __init__(self, n: int, batch: int, seed: int, start: int, stop: int, rank: int = 0, world: int = 1):
        self.per_epoch = n // (batch * world)
        if self.per_epoch == 0:
            raise StegoError(f"the training split has {n} items, fewer than one batch of {batch} × {world} "
                             f"processes: lower train.batch_size")
        self.n, self.batch, self.seed = n, batch, seed
        self.start, self.stop, self.rank, self.world = start, stop, rank, world

    def __len__(self):
        return max(self.stop - self.start, 0)

    def __iter__(self):
        order, order_epoch = None, None
        for it in range(self.start, self.stop):
            epoch, step = divmod(it, self.per_epoch)
            if epoch != order_epoch:
                generator = torch.Generator().manual_seed(iteration_seed(self.seed, -1 - epoch))
                order = torch.randperm(self.n, generator=generator)
                order_epoch = epoch
            first = (step * self.world + self.rank) * self.batch
            yield [(int(i), epoch) for i in order[first:first + self.batch]]


class ByEpoch(Dataset):
    """Items addressed by (index, epoch), so loader workers draw the KNN partners of the right epoch."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, key):
        index, epoch = key
        if hasattr(self.data, "set_epoch"):
            self.data.set_epoch(epoch)
        return self.data[index]
