"""Hard-example batch sampler of the mask refiner.

Most of each batch comes from the images the coarse segmenter handles worst, so training spends its steps where
refinement matters; control images (no lesion) teach it not to invent lesions, and random ones keep it general.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

BATCH_PATTERN = {"hard": 5, "control": 1, "random": 2}


class HardExampleBatchSampler(torch.utils.data.Sampler):
    """Batches with a fixed composition: by default 5 hard, 1 control and 2 random images out of 8.

    "hard" and "control" draw from images of that class (with replacement when the class is smaller than its
    share); "random" draws from all images. Each pass over the sampler (an epoch) is a fresh draw, seeded by ``seed``
    and the pass number, so a run is reproducible.

    Args:
        hardness: class of each dataset item, ``"hard"``, ``"control"`` or anything else (ordinary).
        batch_pattern: images per class in a batch.
        num_batches: batches per epoch over all processes (default: enough to see each image once on average).
        seed: base seed.
        num_replicas, rank: for distributed training (default: read from ``torch.distributed`` when it is
            initialised). Every process draws the same epoch of batches and keeps every ``num_replicas``-th one
            from ``rank`` on, so processes never train on the same batch and all run the same number of steps
            (the epoch is rounded up to a multiple of ``num_replicas``).
    """

    def __init__(
        self,
        hardness: Sequence[str],
        batch_pattern: dict | None = None,
        num_batches: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        self.pattern = dict(batch_pattern or BATCH_PATTERN)
        unknown = set(self.pattern) - {"hard", "control", "random"}
        if unknown:
            raise ValueError(f"batch_pattern keys must be hard/control/random, got {sorted(unknown)}")
        self.pools = {
            "hard": [i for i, h in enumerate(hardness) if h == "hard"],
            "control": [i for i, h in enumerate(hardness) if h == "control"],
            "random": list(range(len(hardness))),
        }
        for name, n in self.pattern.items():
            if n > 0 and not self.pools[name]:
                raise ValueError(f"batch_pattern asks for {n} '{name}' images per batch but the dataset has none")
        self.batch_size = sum(self.pattern.values())
        self.num_batches = num_batches or max(1, int(np.ceil(len(hardness) / self.batch_size)))
        self.seed, self.epoch = int(seed), 0
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.num_replicas = int(
            num_replicas if num_replicas is not None else (dist and torch.distributed.get_world_size()) or 1
        )
        self.rank = int(rank if rank is not None else (dist and torch.distributed.get_rank()) or 0)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank must be in [0, {self.num_replicas}), got {self.rank}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-self.num_batches // self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(self.seed + 1000003 * self.epoch)
        self.epoch += 1
        for i in range(len(self) * self.num_replicas):
            batch = []
            for name, n in self.pattern.items():
                pool = self.pools[name]
                batch += rng.choice(pool, size=n, replace=n > len(pool)).tolist()
            if i % self.num_replicas == self.rank:
                yield batch


def scale_pattern(batch_size: int, pattern: dict | None = None) -> dict:
    """The batch pattern (default 5 hard / 1 control / 2 random of 8) scaled to ``batch_size``, summing to it."""
    pattern = dict(pattern or BATCH_PATTERN)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    total = sum(pattern.values())
    scaled = {k: int(np.floor(v * batch_size / total)) for k, v in pattern.items()}
    order = sorted(pattern, key=lambda k: -(pattern[k] * batch_size / total - scaled[k]))
    for k in order[: batch_size - sum(scaled.values())]:
        scaled[k] += 1
    return scaled
