"""Hard-example batch sampler of the mask refiner (seed 004)."""

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
        num_batches: batches per epoch (default: enough to see each image once on average).
        seed: base seed.
    """

    def __init__(
        self, hardness: Sequence[str], batch_pattern: dict | None = None, num_batches: int | None = None, seed: int = 0
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

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(self.seed + 1000003 * self.epoch)
        self.epoch += 1
        for _ in range(self.num_batches):
            batch = []
            for name, n in self.pattern.items():
                pool = self.pools[name]
                batch += rng.choice(pool, size=n, replace=n > len(pool)).tolist()
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
