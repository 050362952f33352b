"""Training batches as a pure function of (seed, iteration, slot).

Each iteration draws ``batch_size`` samples, its global batch; slot ``j`` of iteration ``t``
is sample ``t * batch_size + j`` of an endless sequence of epochs, each a fresh
permutation of the dataset (drawn from ``(seed, epoch)``), and is augmented with a random
generator drawn from ``(seed, t, j)``. Nothing depends on what ran before, so:

- a resumed run sees exactly the batches the interrupted one would have seen;
- the global batch is the same whatever the number of processes (``torchrun``) or
  gradient-accumulation steps: a rank loads only its own slots;
- worker processes may build iterations in any order.

``IterationBatches[t]`` is one rank's share of iteration ``t``, shaped
``(micro_batches, micro_batch_size, ...)``; ``loader`` wraps it in a torch DataLoader whose
worker processes prepare the next iterations while the model trains on the current one.
"""
from __future__ import annotations

import numpy as np
import torch

from segbench.data.datasets import SegDataset, opencv_single_threaded
from segbench.data.transforms import train_augment

_EPOCH, _SAMPLE = 0, 1  # keep the two kinds of seeds apart


class IterationBatches(torch.utils.data.Dataset):
    def __init__(self, dataset: SegDataset, batch_size: int, crop: tuple[int, int], mean, std, seed: int,
                 first_slot: int = 0, micro_batches: int = 1, micro_batch_size: int | None = None,
                 ratio_range=(0.5, 2.0), cat_max_ratio: float = 0.75, photometric: bool = True):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.slots = range(first_slot, first_slot + micro_batches * (micro_batch_size or batch_size))
        self.micro_batches = micro_batches
        self.augment = dict(crop=crop, scale=dataset.test_scale, mean=mean, std=std, ratio_range=tuple(ratio_range),
                            cat_max_ratio=cat_max_ratio, photometric=photometric)
        self._epoch: tuple[int, np.ndarray] | None = None

    def index_of(self, iteration: int, slot: int) -> int:
        """Which image fills ``slot`` of ``iteration``."""
        position = iteration * self.batch_size + slot
        epoch, offset = divmod(position, len(self.dataset))
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, np.random.RandomState([self.seed, _EPOCH, epoch]).permutation(len(self.dataset)))
        return int(self._epoch[1][offset])

    def sample(self, iteration: int, slot: int) -> tuple[np.ndarray, np.ndarray]:
        item = self.dataset[self.index_of(iteration, slot)]
        rng = np.random.RandomState([self.seed, _SAMPLE, iteration, slot])
        return train_augment(item.image, item.label, rng=rng, **self.augment)

    def __getitem__(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = zip(*(self.sample(iteration, slot) for slot in self.slots))
        crop = self.augment["crop"]
        x = torch.from_numpy(np.stack(images)).view(self.micro_batches, -1, 3, *crop)
        y = torch.from_numpy(np.stack(labels)).long().view(self.micro_batches, -1, *crop)
        return x, y


def loader(batches: IterationBatches, start: int, stop: int, workers: int, pin_memory: bool = False
           ) -> torch.utils.data.DataLoader:
    """Iterations ``start .. stop - 1`` in order, prepared by ``workers`` processes (0: inline)."""
    if workers:
        opencv_single_threaded()
    return torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(start, stop), num_workers=workers,
                                       prefetch_factor=2 if workers else None, pin_memory=pin_memory)
